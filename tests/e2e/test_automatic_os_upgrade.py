"""Automatic OS image upgrades on real local instances, seen through the real azure-mgmt-compute SDK
(M-7, M-8, M-10, M-11, M-12; azure-api.md §2.2 AutomaticOSUpgradePolicy, §4.2; docs/automatic-os-upgrades.md).

One `scaleset serve` for the module, logging at info (the rolling steps and the platform's decisions carry
millisecond timestamps, which is how the publish → first batch delay is measured), sweeping for due
upgrades every second instead of every minute. The story, in order:

1. three sets on `scaleset:webapp:auto:latest`: two opt in (one judged by a load-balancer probe, one by the
   Application Health extension), one does not;
2. publishing 1.1.0 upgrades both opted-in sets, with no call from us, and leaves the third alone;
3. the probe set switches the policy off; publishing the never-healthy 2.0.0 then upgrades only the
   Application Health set, whose first batch never becomes healthy: the run stops, rolls back, and 2.0.0 is
   blocked on the set: neither later sweeps nor a plain PATCH bring it back;
4. publishing 2.0.1 upgrades the set again; the operator clears the 2.0.0 block with the CLI.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import typer
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import RollingUpgradeStatusInfo
from typer.testing import CliRunner

from scaleset.cli import commands_platform
from scaleset.cli.commands_common import State
from scaleset.cli.output import OutputFormat
from tests.e2e.conftest import serve_module
from tests.support import (
    ServerProcess,
    application_health,
    eventually,
    guest_speed,
    publish_image,
    put_health_probe,
    scale_set_body,
    server_log_errors,
    set_path,
)

pytestmark = pytest.mark.e2e
GROUP = "rg-auto-os"
SKU = "auto"
API = {"api-version": "2026-04-01"}
UNHEALTHY_UPGRADED = "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
GRACE = 10  # seconds the control plane waits for an Application Health batch
GUEST_SPEED = {**guest_speed(apphealth_time_scale=100), "SCALESET_PLATFORM_SWEEP_SECONDS": "1"}
Json = dict[str, Any]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    yield from serve_module("scaleset-auto-os-", GROUP, GUEST_SPEED, extra_args=("--log-level", "info"))


# ------------------------------------------------------------------------------------------- helpers
def publish(server: ServerProcess, image: str, version: str) -> float:
    """Publish an example image under our SKU; returns the wall-clock time the publish call returned."""
    publish_image(server, image, sku=SKU, version=version)
    return time.time()


def auto_set(capacity: int, *, probe: str | None = None, health: bool = False, enabled: bool = True) -> Json:
    body = scale_set_body(
        capacity,
        version="latest",
        data_disk=False,
        extensions=[application_health(GRACE)] if health else None,
        upgradePolicy={
            "mode": "Automatic",
            "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": enabled},
        },
    )
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["sku"] = SKU
    if probe is not None:
        body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": probe}}
    return body


def os_versions(compute: ComputeManagementClient, name: str) -> dict[str, str]:
    listed = compute.virtual_machine_scale_set_vms.list(GROUP, name, expand="instanceView")
    return {str(vm.instance_id): vm.instance_view.os_version for vm in listed}


def healthy_on(compute: ComputeManagementClient, name: str, version: str) -> bool:
    listed = list(compute.virtual_machine_scale_set_vms.list(GROUP, name, expand="instanceView"))
    return bool(listed) and all(
        vm.instance_view.os_version == version
        and vm.instance_view.vm_health is not None
        and vm.instance_view.vm_health.status.code == "HealthState/healthy"
        for vm in listed
    )


def latest(compute: ComputeManagementClient, name: str) -> RollingUpgradeStatusInfo | None:
    try:
        return compute.virtual_machine_scale_set_rolling_upgrades.get_latest(GROUP, name)
    except ResourceNotFoundError:
        return None


def ended(
    compute: ComputeManagementClient, name: str, started_after: datetime
) -> RollingUpgradeStatusInfo | None:
    """The set's newest run, once it started after `started_after` and ended."""
    status = latest(compute, name)
    if status is None or status.running_status.start_time <= started_after:
        return None
    return status if status.running_status.code not in ("RollingForward", "RollingBack") else None


def log_text(server: ServerProcess, since: int) -> str:
    assert server.log_path is not None
    with open(server.log_path, "rb") as log:
        log.seek(since)
        return log.read().decode(errors="replace")


def logged_at(text: str, pattern: str) -> float | None:
    """Wall-clock time of the first log line matching `pattern` (logging's `asctime`, local time, ms)."""
    for line in text.splitlines():
        if re.search(pattern, line):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    return None


def sweeps_after(server: ServerProcess, since: int) -> int:
    return log_text(server, since).count("platform sweep:")


def blocked(server: ServerProcess, name: str) -> list[Json]:
    with server.client() as client:
        response = client.get(set_path(server, GROUP, name, "blockedImageVersions"), params=API)
    assert response.status_code == 200, response.text
    value: list[Json] = response.json()["value"]
    return value


def cli(server: ServerProcess, *args: str) -> Any:
    """Our CLI commands, run in-process against the server as `scaleset vmss ...` would run them."""
    app = typer.Typer()

    @app.callback()
    def root(ctx: typer.Context) -> None:
        ctx.obj = State(server.endpoint, server.admin_token, server.subscription, None, OutputFormat.json)

    app.command("clear-blocked-image-versions")(commands_platform.clear_blocked_image_versions)
    app.command("list-blocked-image-versions")(commands_platform.list_blocked_image_versions)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


# ---------------------------------------------------------------------------------------------- story
def test_platform_upgrades_opted_in_sets_and_never_loops_on_a_bad_version(
    server: ServerProcess, compute: ComputeManagementClient
) -> None:
    log_start = server.log_path.stat().st_size if server.log_path else 0
    sets = compute.virtual_machine_scale_sets
    publish(server, "webapp-1.0.0", "1.0.0")
    probe = put_health_probe(server, GROUP, "lb-auto")
    try:
        # -- 1. three sets; two opt in --------------------------------------------------------------
        for name, body in (
            ("probe", auto_set(3, probe=probe)),
            ("apphealth", auto_set(3, health=True)),
            ("optout", auto_set(1, probe=probe, enabled=False)),
        ):
            assert sets.begin_create_or_update(GROUP, name, body).result().provisioning_state == "Succeeded"
        for name in ("probe", "apphealth", "optout"):
            eventually(lambda n=name: healthy_on(compute, n, "1.0.0"), 90, 0.5, f"{name} healthy on 1.0.0")

        # -- 2. publishing 1.1.0 upgrades the opted-in sets with no call of ours (M-8) ---------------
        mark = server.log_path.stat().st_size if server.log_path else 0
        returned = publish(server, "webapp-1.1.0", "1.1.0")
        epoch = datetime.fromtimestamp(0).astimezone()
        for name in ("probe", "apphealth"):
            status = eventually(lambda n=name: ended(compute, n, epoch), 180, 0.5, f"{name} upgraded")
            assert status.running_status.code == "Completed", status.error
            assert status.progress.successful_instance_count == 3
            assert status.policy.max_batch_instance_percent == 20  # Azure's default for auto OS upgrades
            assert status.policy.rollback_failed_instances_on_policy_breach is True
            assert set(os_versions(compute, name).values()) == {"1.1.0"}
        assert latest(compute, "optout") is None  # never had a run
        assert set(os_versions(compute, "optout").values()) == {"1.0.0"}
        after_publish = log_text(server, mark)
        first_batch = {
            name: logged_at(after_publish, rf"\(set {name}\): batch 1:") for name in ("probe", "apphealth")
        }
        run_started = logged_at(after_publish, r"automatic OS upgrade of set \w+ to 1\.1\.0 started")
        assert run_started is not None and all(first_batch.values()), after_publish[-3000:]
        delays = {name: round(at - returned, 3) for name, at in first_batch.items() if at is not None}
        written = round(run_started - returned, 3)
        print(f"\npublish returned → run written {written} s, first batch started (s): {delays}")
        assert max(delays.values()) < 1.0, delays

        # -- 3. policy off on one set; a never-healthy version on the other -------------------------
        sets.begin_update(
            GROUP,
            "probe",
            {
                "properties": {
                    "upgradePolicy": {"automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": False}}
                }
            },
        ).result()
        probe_run = latest(compute, "probe")
        assert probe_run is not None
        bad_published = datetime.now().astimezone()
        publish(server, "webapp-broken-2.0.0", "2.0.0")
        status = eventually(lambda: ended(compute, "apphealth", bad_published), 120, 0.5, "the bad run ended")
        assert status.running_status.code == "Faulted"
        assert status.error.code == UNHEALTHY_UPGRADED
        assert status.progress.failed_instance_count == 1  # batches of one: stopped at the first
        eventually(lambda: healthy_on(compute, "apphealth", "1.1.0"), 60, 0.5, "rolled back and healthy")
        blocks = blocked(server, "apphealth")
        assert [(b["imageVersion"], b["clearedTime"]) for b in blocks] == [("2.0.0", None)]
        # The set's model went back to 1.1.0 with its instances: they run the latest model.
        for vm in compute.virtual_machine_scale_set_vms.list(GROUP, "apphealth"):
            assert (vm.storage_profile.image_reference.exact_version, vm.latest_model_applied) == (
                "1.1.0",
                True,
            )
        unchanged = latest(compute, "probe")
        assert (
            unchanged is not None
            and unchanged.running_status.start_time == probe_run.running_status.start_time
        )
        assert set(os_versions(compute, "probe").values()) == {"1.1.0"}

        # ...and it does not come back: two sweeps later and after a plain PATCH, nothing has started.
        mark = server.log_path.stat().st_size if server.log_path else 0
        sets.begin_update(GROUP, "apphealth", {"tags": {"touched": "yes"}}).result()
        eventually(lambda: sweeps_after(server, mark) >= 2, 30, 0.2, "two platform sweeps")
        again = latest(compute, "apphealth")
        assert again is not None and again.running_status.start_time == status.running_status.start_time
        assert set(os_versions(compute, "apphealth").values()) == {"1.1.0"}

        # -- 4. a newer version is offered again; the operator clears the old block -----------------
        fixed_published = datetime.now().astimezone()
        publish(server, "webapp-1.1.0", "2.0.1")  # the healthy app, published as 2.0.1
        status = eventually(lambda: ended(compute, "apphealth", fixed_published), 120, 0.5, "2.0.1 upgrade")
        assert status.running_status.code == "Completed", status.error
        assert set(os_versions(compute, "apphealth").values()) == {"1.1.0"}  # the app reports its manifest
        with server.client() as client:
            vm = client.get(set_path(server, GROUP, "apphealth", "virtualMachines", "0"), params=API).json()
        assert vm["properties"]["storageProfile"]["imageReference"]["exactVersion"] == "2.0.1"

        listed = cli(server, "list-blocked-image-versions", "-g", GROUP, "-n", "apphealth")
        assert '"imageVersion": "2.0.0"' in listed
        cleared = cli(
            server, "clear-blocked-image-versions", "-g", GROUP, "-n", "apphealth", "--version", "2.0.0"
        )
        assert '"imageVersion": "2.0.0"' in cleared
        assert blocked(server, "apphealth")[0]["clearedTime"] is not None
    finally:
        for name in ("probe", "apphealth", "optout"):
            with contextlib.suppress(ResourceNotFoundError):
                sets.begin_delete(GROUP, name).result()
    assert not server_log_errors(server, log_start), server.log_path


def test_the_rules_for_switching_it_on_are_enforced_on_the_wire(server: ServerProcess) -> None:
    """M-7, M-11, M-12: 400 InvalidParameter naming the rule, and nothing created."""
    if not _published(server, "1.0.0"):
        publish(server, "webapp-1.0.0", "1.0.0")
    pinned = auto_set(1, health=True)
    pinned["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["version"] = "1.0.0"
    no_health = auto_set(1)
    with server.client() as client:
        for body, words in ((pinned, "'latest'"), (no_health, "health source")):
            response = client.put(set_path(server, GROUP, "refused"), params=API, json=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "InvalidParameter"
            assert (
                error["target"]
                == "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade"
            )
            assert words in error["message"]
        assert client.get(set_path(server, GROUP, "refused"), params=API).status_code == 404


def _published(server: ServerProcess, version: str) -> bool:
    with server.client() as client:
        response = client.get(
            f"/subscriptions/{server.subscription}/providers/Microsoft.Compute/locations/eastus/publishers/"
            f"scaleset/artifacttypes/vmimage/offers/webapp/skus/{SKU}/versions/{version}",
            params=API,
        )
    return response.status_code == 200
