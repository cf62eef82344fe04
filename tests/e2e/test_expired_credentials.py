"""Expired credentials in the model (M-13; issue 5 §6; docs/expired-credentials.md), end to end on real
local instances with the real azure-mgmt-compute SDK.

The story of M-13 as Azure's automatic OS upgrade page tells it: a set's CustomScript extension downloads
its script from a blob store with a SAS token (`fileUris`, in protected settings as Azure advises). The
token is valid when the set is made; weeks later it has expired, a new image version is published, and the
automatic OS upgrade reimages its first batch, which reruns the extension (M-9): the download is refused
(403 AuthenticationFailed), the extension fails, the instance's provisioning fails, and the upgrade stops
Faulted with that batch failed and the rest untouched. The documented recovery — renew the token, update
the model's extension, apply the model to every instance including the failed one — brings the whole set
to the newest model, the extension succeeded and healthy.

Two stories, on one `scaleset serve`, each set on its own image SKU:

- without automatic rollback (M-13 as written): the first batch stays failed; the recovery updates the
  extension with the SDK and applies the model with `scaleset vmss update-instances --instance-ids "*"`;
- with it (Azure's default for automatic OS upgrades): the failed batch gets its OS disk back and the new
  image is blocked on the set; the renewed model then rolls out on its own in Rolling mode, and clearing
  the block (`scaleset vmss clear-blocked-image-versions`) brings the new image, its reimages downloading
  with the new token.

The blob store is `tests/e2e/blob_server.py`: a real HTTP server in this process that checks SAS-like
tokens against its own clock, which the test moves forward instead of sleeping while a token expires.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.core.polling import LROPoller
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import RollingUpgradeStatusInfo, VirtualMachineScaleSetVM

from tests.e2e.blob_server import AUTHENTICATION_FAILED, BlobServer
from tests.e2e.conftest import serve_module
from tests.support import (
    REPO,
    ServerProcess,
    app_request,
    application_health,
    eventually,
    guest_speed,
    instance_addresses,
    publish_image,
    scale_set_body,
    server_log_errors,
)

pytestmark = pytest.mark.e2e
GROUP = "rg-expired"
API = {"api-version": "2026-04-01"}
UNHEALTHY_UPGRADED = "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
UNHEALTHY_BEFORE = "MaxUnhealthyInstancePercentExceededBeforeRollingUpgrade"
GRACE = 10  # seconds the control plane waits for a batch to be healthy (Application Health gracePeriod)
BLOB = "container/setup.sh"
# What the CustomScript extension downloads and runs: it leaves a mark on the OS disk, which the sample
# webapp serves at /files/os/setup.txt (a reimage takes the mark away with the old OS disk).
SETUP_SCRIPT = (
    b"#!/bin/sh\nset -e\n"
    b'mkdir -p "$SCALESET_OS_DISK/files"\n'
    b'echo provisioned > "$SCALESET_OS_DISK/files/setup.txt"\n'
)
Json = dict[str, Any]
T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    yield from serve_module("scaleset-expired-", GROUP, guest_speed())


@pytest.fixture
def blobs() -> Iterator[BlobServer]:
    with BlobServer({BLOB: SETUP_SCRIPT}) as store:
        yield store


# ------------------------------------------------------------------------------------------- helpers
def custom_script(file_uri: str) -> Json:
    """CustomScript with its SAS URI in protected settings (never shown back, redacted in statuses)."""
    return {
        "publisher": "Microsoft.Azure.Extensions",
        "type": "CustomScript",
        "typeHandlerVersion": "2.1",
        "settings": {"commandToExecute": "sh setup.sh"},
        "protectedSettings": {"fileUris": [file_uri]},
    }


def expiring_set(name: str, file_uri: str, rollback: bool, capacity: int = 4) -> Json:
    """`capacity` instances on `scaleset:webapp:<name>:latest`, Rolling, automatic OS upgrades with the
    set's own policy: batches of 25 % (one instance each: every instance has its own update domain,
    domain 0 first), with or without automatic rollback."""
    body = scale_set_body(
        capacity,
        version="latest",
        data_disk=False,
        extensions=[
            application_health(GRACE),
            {"name": "setup", "properties": custom_script(file_uri)},
        ],
        upgradePolicy={
            "mode": "Rolling",
            "rollingUpgradePolicy": {"maxBatchInstancePercent": 25},
            "automaticOSUpgradePolicy": {
                "enableAutomaticOSUpgrade": True,
                "useRollingUpgradePolicy": True,
                "disableAutomaticRollback": not rollback,
            },
        },
    )
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["sku"] = name
    return body


def finish(poller: LROPoller[T], seconds: float = 120) -> T:
    """The operation's result; fails (rather than hangs, as `result()` would) when it does not end in time."""
    result = poller.result(timeout=seconds)
    assert poller.done(), f"the operation did not end within {seconds} s"
    return result


def create(compute: ComputeManagementClient, name: str, body: Json) -> dict[str, VirtualMachineScaleSetVM]:
    """Create the set and wait for its instances to be healthy, their extension succeeded."""
    count = body["sku"]["capacity"]
    created = finish(compute.virtual_machine_scale_sets.begin_create_or_update(GROUP, name, cast(Any, body)))
    assert created.provisioning_state == "Succeeded"
    found: dict[str, VirtualMachineScaleSetVM] = eventually(
        lambda: all_healthy(compute, name, count), 60, what=f"the {count} instances of {name} healthy"
    )
    assert sorted(found, key=int) == [str(i) for i in range(count)]
    for instance_id, vm in found.items():
        assert extension_status(vm, "setup")[0] == "ProvisioningState/succeeded", instance_id
    return found


def renew(compute: ComputeManagementClient, name: str, file_uri: str) -> None:
    """Recovery, step 1: the renewed token into the model's extension (a PUT of the set's extension)."""
    updated = finish(
        compute.virtual_machine_scale_set_extensions.begin_create_or_update(
            GROUP, name, "setup", cast(Any, {"properties": custom_script(file_uri)})
        )
    )
    assert updated.provisioning_state == "Succeeded"
    assert updated.protected_settings is None  # never shown back


def vms(compute: ComputeManagementClient, name: str) -> dict[str, VirtualMachineScaleSetVM]:
    listed = compute.virtual_machine_scale_set_vms.list(GROUP, name, expand="instanceView")
    return {str(vm.instance_id): vm for vm in listed}


def provisioning(vm: VirtualMachineScaleSetVM) -> str:
    code: str = vm.instance_view.statuses[0].code
    return code


def provisioned_at(vm: VirtualMachineScaleSetVM) -> datetime:
    moment: datetime = vm.instance_view.statuses[0].time
    return moment


def extension_status(vm: VirtualMachineScaleSetVM, name: str) -> tuple[str, str]:
    (found,) = [e for e in vm.instance_view.extensions if e.name == name]
    return found.statuses[0].code, found.statuses[0].message or ""


def healthy(vm: VirtualMachineScaleSetVM) -> bool:
    health = vm.instance_view.vm_health
    return health is not None and health.status.code == "HealthState/healthy"


def all_healthy(
    compute: ComputeManagementClient, name: str, count: int = 4
) -> dict[str, VirtualMachineScaleSetVM] | None:
    found = vms(compute, name)
    return found if len(found) == count and all(healthy(vm) for vm in found.values()) else None


def os_disk(vm: VirtualMachineScaleSetVM) -> str:
    name: str = vm.storage_profile.os_disk.name
    return name


def latest(compute: ComputeManagementClient, name: str) -> RollingUpgradeStatusInfo | None:
    try:
        return compute.virtual_machine_scale_set_rolling_upgrades.get_latest(GROUP, name)
    except ResourceNotFoundError:
        return None


def run_ended(
    compute: ComputeManagementClient, name: str, after: RollingUpgradeStatusInfo | None, what: str
) -> RollingUpgradeStatusInfo:
    """Wait for the set's newest rolling upgrade, started after the run `after` (None: any), to end."""

    def check() -> RollingUpgradeStatusInfo | None:
        status = latest(compute, name)
        if status is None or (
            after is not None and status.running_status.start_time <= after.running_status.start_time
        ):
            return None
        return status if status.running_status.code not in ("RollingForward", "RollingBack") else None

    ended: RollingUpgradeStatusInfo = eventually(check, 90, 0.25, what)
    return ended


def os_upgrade_history(compute: ComputeManagementClient, name: str) -> list[tuple[str, str, str, int]]:
    """(startedBy, status, target version, failed instances) of each OS upgrade attempt, newest first."""
    rows = []
    for entry in compute.virtual_machine_scale_sets.get_os_upgrade_history(GROUP, name):
        p: Any = entry.properties
        rows.append(
            (
                p.started_by,
                p.running_status.code,
                p.target_image_reference.version,
                p.progress.failed_instance_count,
            )
        )
    return rows


def progress(status: RollingUpgradeStatusInfo) -> tuple[int, int, int, int]:
    p = status.progress
    return (
        p.successful_instance_count,
        p.failed_instance_count,
        p.in_progress_instance_count,
        p.pending_instance_count,
    )


def setup_mark(address: str) -> int:
    """200 when the extension's script ran on this OS disk, 404 when it did not."""
    return app_request(address, "/files/os/setup.txt").status_code


def set_path(server: ServerProcess, name: str, *parts: str) -> str:
    return (
        f"/subscriptions/{server.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
        f"virtualMachineScaleSets/{name}" + "".join(f"/{part}" for part in parts)
    )


def wire_views(server: ServerProcess, name: str) -> str:
    """The set's model and every instance view as the wire carries them (to look for a leaked token)."""
    with server.client() as client:
        views = client.get(
            set_path(server, name, "virtualMachines"), params={**API, "$expand": "instanceView"}
        )
        model = client.get(set_path(server, name), params=API)
    assert views.status_code == 200 and model.status_code == 200, (views.text, model.text)
    return views.text + model.text


def blocked_versions(server: ServerProcess, name: str) -> list[tuple[str, str | None]]:
    """(version, clearedTime) of every block the set has had (recorded when a rollback run ends)."""
    with server.client() as client:
        response = client.get(set_path(server, name, "blockedImageVersions"), params=API)
    assert response.status_code == 200, response.text
    return [(b["imageVersion"], b["clearedTime"]) for b in response.json()["value"]]


def leaks(server: ServerProcess, name: str, uri: str) -> bool:
    text = wire_views(server, name)
    signature = signature_of(uri)
    return signature in text or urllib.parse.quote_plus(signature) in text


def signature_of(uri: str) -> str:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(uri).query))["sig"]


def scaleset(server: ServerProcess, *args: str) -> str:
    """Run the `scaleset` CLI against the server; it must exit 0. Returns its output."""
    done = subprocess.run(
        [sys.executable, "-m", "scaleset.cli.main", *args],
        env=server.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def delete_set(compute: ComputeManagementClient, name: str) -> None:
    with contextlib.suppress(ResourceNotFoundError):
        finish(compute.virtual_machine_scale_sets.begin_delete(GROUP, name))


# ------------------------------------------------------------------------------- the token store itself
def test_blob_server_grants_a_valid_token_and_refuses_an_expired_or_forged_one() -> None:
    """The fake store behaves as Azure Storage does for a service SAS, for what a download sees."""
    with BlobServer({BLOB: SETUP_SCRIPT, "container/other.sh": b"other"}) as store, httpx.Client() as http:
        uri = store.sas_uri(BLOB, timedelta(hours=1))
        assert (ok := http.get(uri)).status_code == 200 and ok.content == SETUP_SCRIPT

        unsigned = http.get(f"{store.endpoint}/{BLOB}")
        assert (unsigned.status_code, unsigned.headers["x-ms-error-code"]) == (404, "ResourceNotFound")
        other = store.sas_uri("container/other.sh", timedelta(hours=1))
        quoted, other_quoted = (urllib.parse.quote_plus(signature_of(u)) for u in (uri, other))
        for forged in (
            uri.replace(BLOB, "container/other.sh"),  # this blob's token on another blob
            other.replace("other.sh", "setup.sh"),  # another blob's token on this one
            uri.replace("sp=r", "sp=rw"),  # permissions widened
            uri.replace(quoted, other_quoted),  # another signature
            uri.replace("se=", "se=2099"),  # expiry moved
        ):
            refused = http.get(forged)
            assert refused.status_code == 403, forged
            assert refused.headers["x-ms-error-code"] == AUTHENTICATION_FAILED
            assert "Signature did not match" in refused.text
        missing = store.sas_uri("container/missing.sh", timedelta(hours=1))
        assert http.get(missing).headers["x-ms-error-code"] == "BlobNotFound"

        store.advance(timedelta(minutes=59))
        assert http.get(uri).status_code == 200
        store.advance(timedelta(minutes=1))
        expired = http.get(uri)
        assert expired.status_code == 403
        assert expired.reason_phrase.startswith("Server failed to authenticate the request.")
        assert expired.headers["x-ms-error-code"] == AUTHENTICATION_FAILED
        assert "Signature not valid in the specified time frame" in expired.text
        # A token made now (on the store's clock) is good again.
        assert http.get(store.sas_uri(BLOB, timedelta(hours=1))).status_code == 200
        assert [s.status for s in store.served].count(200) == 3


# ---------------------------------------------------------------------------------- M-13 end to end
def test_an_expired_token_fails_the_first_batch_and_the_documented_recovery_heals_every_instance(
    server: ServerProcess, compute: ComputeManagementClient, blobs: BlobServer
) -> None:
    """M-13 as written: no automatic rollback, so the first batch stays failed; the recovery renews the
    token in the model and applies the model to every instance, the failed one included."""
    name = "norollback"
    log_start = server.log_path.stat().st_size if server.log_path else 0
    publish_image(server, "webapp-1.0.0", version="1.0.0", sku=name)
    old_uri = blobs.sas_uri(BLOB, timedelta(hours=1))
    try:
        before = create(compute, name, expiring_set(name, old_uri, rollback=False))
        addresses = instance_addresses(server, GROUP, name)
        assert all(setup_mark(addresses[i]) == 200 for i in before)
        assert [(s.status, s.signature) for s in blobs.served] == [(200, signature_of(old_uri))] * 4

        # ---- Weeks go by: the token expires. Then a new image version comes out. ----
        blobs.advance(timedelta(hours=2))
        publish_image(
            server, "webapp-1.1.0", version="1.1.0", sku=name
        )  # the platform starts the OS upgrade on its own (M-8)

        upgrade = run_ended(compute, name, None, "the automatic OS upgrade ended")
        assert upgrade.running_status.code == "Faulted"
        assert upgrade.error is not None and upgrade.error.code == UNHEALTHY_UPGRADED, upgrade.error
        assert progress(upgrade)[:3] == (0, 1, 0)  # successful, failed, in progress
        assert upgrade.policy.max_batch_instance_percent == 25
        assert upgrade.policy.rollback_failed_instances_on_policy_breach is False
        assert os_upgrade_history(compute, name) == [("Platform", "Faulted", "1.1.0", 1)]
        # The first batch (update domain 0: instance 0) tried the expired token and was refused.
        refused = [s for s in blobs.served if s.status != 200]
        assert [(s.status, s.error_code, s.signature) for s in refused] == [
            (403, AUTHENTICATION_FAILED, signature_of(old_uri))
        ]
        faulted = vms(compute, name)
        first = faulted["0"]
        assert first.instance_view.os_version == "1.1.0"  # reimaged onto the new image...
        assert os_disk(first) == f"{name}_0_OsDisk_2"
        assert provisioning(first) == "ProvisioningState/failed"  # ...and left failed
        code, message = extension_status(first, "setup")
        assert code.startswith("ProvisioningState/failed"), code
        assert "Failed to download" in message and "403" in message, message
        assert "[REDACTED]" in message, message  # the token is not in the message
        assert setup_mark(addresses["0"]) == 404  # the script never ran on the new OS disk
        for instance_id in ("1", "2", "3"):  # the rest untouched
            vm = faulted[instance_id]
            assert vm.instance_view.os_version == "1.0.0", instance_id
            assert os_disk(vm) == f"{name}_{instance_id}_OsDisk_1", instance_id
            assert provisioned_at(vm) == provisioned_at(before[instance_id]), instance_id
            assert vm.latest_model_applied is False, instance_id
            assert provisioning(vm) == "ProvisioningState/succeeded", instance_id
            assert healthy(vm), instance_id
        assert not leaks(server, name, old_uri)

        # ---- Recovery, step 1: renew the token and update the model's extension with it. ----
        new_uri = blobs.sas_uri(BLOB, timedelta(hours=1))
        renew(compute, name, new_uri)
        # In Rolling mode the model change starts a rolling upgrade of its own; with one instance of four
        # failed (25 % > maxUnhealthyInstancePercent 20) it stops before its first batch.
        rolling = run_ended(compute, name, upgrade, "the model change's rolling upgrade ended")
        assert rolling.running_status.code == "Faulted"
        assert rolling.error is not None and rolling.error.code == UNHEALTHY_BEFORE, rolling.error
        assert progress(rolling)[:3] == (0, 0, 0)
        stale = vms(compute, name)
        assert {i: vm.latest_model_applied for i, vm in stale.items()} == dict.fromkeys(before, False)

        # ---- Recovery, step 2: apply the model to every instance, the failed one included. ----
        # With the CLI, as docs/expired-credentials.md shows (the SDK's begin_update_instances is the same
        # POST …/manualupgrade); it waits for the end and exits 0 only when every instance succeeded.
        scaleset(server, "vmss", "update-instances", "-g", GROUP, "-n", name, "--instance-ids", "*")

        after: dict[str, VirtualMachineScaleSetVM] = eventually(
            lambda: all_healthy(compute, name), 60, what="every instance healthy after the recovery"
        )
        for instance_id, vm in after.items():
            assert vm.latest_model_applied is True, instance_id
            assert vm.instance_view.os_version == "1.1.0", instance_id
            assert provisioning(vm) == "ProvisioningState/succeeded", instance_id
            assert extension_status(vm, "setup")[0] == "ProvisioningState/succeeded", instance_id
            assert setup_mark(addresses[instance_id]) == 200, instance_id
            # Instance 0 was already on the new image: only its extension ran again, on the same OS disk.
            assert os_disk(vm) == f"{name}_{instance_id}_OsDisk_2", instance_id
        renewed = [s for s in blobs.served if s.signature == signature_of(new_uri)]
        assert [s.status for s in renewed] == [200] * 4
        assert [s.status for s in blobs.served].count(403) == 1  # nothing tried the old token again
        assert not leaks(server, name, new_uri)
        assert not server_log_errors(server, log_start), server.log_path
    finally:
        delete_set(compute, name)


def test_with_automatic_rollback_the_renewed_model_rolls_out_and_the_blocked_image_follows(
    server: ServerProcess, compute: ComputeManagementClient, blobs: BlobServer
) -> None:
    """The same expiry under Azure's default for automatic OS upgrades (rollback on): the failed batch
    gets its previous OS disk back and the new image is blocked on the set (docs/automatic-os-upgrades.md).
    Renewing the token in the model then rolls out by itself, batch by batch (nothing is unhealthy any
    more); clearing the block brings the new image, whose reimages run the extension with the new token.
    Two instances are enough here (the first batch is one of them): every later step is batch by batch."""
    name = "rollback"
    log_start = server.log_path.stat().st_size if server.log_path else 0
    publish_image(server, "webapp-1.0.0", version="1.0.0", sku=name)
    old_uri = blobs.sas_uri(BLOB, timedelta(hours=1))
    try:
        create(compute, name, expiring_set(name, old_uri, rollback=True, capacity=2))
        addresses = instance_addresses(server, GROUP, name)
        blobs.advance(timedelta(hours=2))
        publish_image(server, "webapp-1.1.0", version="1.1.0", sku=name)

        upgrade = run_ended(compute, name, None, "the automatic OS upgrade ended")
        assert upgrade.running_status.code == "Faulted"
        assert upgrade.error is not None and upgrade.error.code == UNHEALTHY_UPGRADED, upgrade.error
        assert upgrade.policy.rollback_failed_instances_on_policy_breach is True
        assert progress(upgrade)[:3] == (0, 1, 0)
        assert blobs.served[-1].error_code == AUTHENTICATION_FAILED
        # The version is blocked on the set, whose model goes back to 1.0.0 (docs/automatic-os-upgrades.md).
        assert eventually(lambda: blocked_versions(server, name), 30, what="1.1.0 blocked") == [
            ("1.1.0", None)
        ]
        # Instance 0 has its previous OS disk back (the script's mark on it), healthy again.
        restored: dict[str, VirtualMachineScaleSetVM] = eventually(
            lambda: all_healthy(compute, name, 2), 60, what="the rolled-back instance healthy again"
        )
        for instance_id, vm in restored.items():
            assert vm.instance_view.os_version == "1.0.0", instance_id
            assert os_disk(vm) == f"{name}_{instance_id}_OsDisk_1", instance_id
            assert provisioning(vm) == "ProvisioningState/succeeded", instance_id
            assert setup_mark(addresses[instance_id]) == 200, instance_id
            assert vm.latest_model_applied is True, instance_id  # the set's model went back to 1.0.0
        # Only instance 0 was touched: the two downloads of the set's creation, then its refused one.
        assert [s.status for s in blobs.served] == [200] * 2 + [403]

        # ---- Recovery: renew the token in the model; in Rolling mode it rolls out on its own. ----
        new_uri = blobs.sas_uri(BLOB, timedelta(hours=1))
        renew(compute, name, new_uri)
        rolling = run_ended(compute, name, upgrade, "the model change's rolling upgrade ended")
        assert rolling.running_status.code == "Completed", rolling.error
        assert progress(rolling) == (2, 0, 0, 0)
        renewed = vms(compute, name)
        for instance_id, vm in renewed.items():
            assert vm.latest_model_applied is True, instance_id
            assert vm.instance_view.os_version == "1.0.0", instance_id  # `latest` passes over 1.1.0
            assert extension_status(vm, "setup")[0] == "ProvisioningState/succeeded", instance_id
        assert [s.status for s in blobs.served if s.signature == signature_of(new_uri)] == [200] * 2

        # ---- Then let the platform offer the new image again: it upgrades with the renewed token. ----
        cleared = scaleset(
            server, "vmss", "clear-blocked-image-versions", "-g", GROUP, "-n", name, "--version", "1.1.0"
        )
        assert "1.1.0" in cleared
        assert blocked_versions(server, name)[0][1] is not None  # cleared
        upgraded = run_ended(compute, name, rolling, "the second automatic OS upgrade ended")
        assert upgraded.running_status.code == "Completed", upgraded.error
        assert progress(upgraded) == (2, 0, 0, 0)
        after: dict[str, VirtualMachineScaleSetVM] = eventually(
            lambda: all_healthy(compute, name, 2), 60, what="every instance healthy on 1.1.0"
        )
        for instance_id, vm in after.items():
            assert vm.latest_model_applied is True, instance_id
            assert vm.instance_view.os_version == "1.1.0", instance_id
            assert os_disk(vm) == f"{name}_{instance_id}_OsDisk_2", instance_id
            assert extension_status(vm, "setup")[0] == "ProvisioningState/succeeded", instance_id
            assert setup_mark(addresses[instance_id]) == 200, instance_id
        assert [s.status for s in blobs.served if s.signature == signature_of(new_uri)] == [200] * 4
        assert [s.status for s in blobs.served].count(403) == 1
        assert [h[:3] for h in os_upgrade_history(compute, name)] == [
            ("Platform", "Completed", "1.1.0"),
            ("Platform", "Faulted", "1.1.0"),
        ]
        assert not server_log_errors(server, log_start), server.log_path
    finally:
        delete_set(compute, name)
