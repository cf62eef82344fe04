"""Automatic extension upgrades on real local instances, seen through the real azure-mgmt-compute SDK
(M-18, M-19, M-20, M-22, M-24; azure-api.md §4.4; docs/automatic-extension-upgrades.md).

One `scaleset serve` for the module, logging at info (the platform's decisions and the rolling steps carry
millisecond timestamps: the publish → first batch delay is measured from them), sweeping every second, and
retrying a failed extension version after 15 seconds instead of three days. The handler is the built-in
CustomScript package published as `Contoso.Tools.Greeter`; its "bad" release is the same package whose
enable command fails. The story:

1. a 3-instance set (judged by a load-balancer probe) whose model PUT names Greeter "1.0" with
   `enable_automatic_upgrade=True`; every instance runs 1.0.0;
2. publishing 1.1.0 upgrades every instance with no call of ours (the first batch starts well within a
   second of the publish; the figure is printed);
3. publishing the bad 1.2.0: the first instance fails, is rolled back to 1.1.0, the run stops (one failed
   of one upgraded breaches the 20 %), the set's model goes back to 1.1.0, and the version is remembered;
   after the retry interval the platform tries it once more, it fails again, and it is blocked: later sweeps
   never start it again;
4. the operator lists and clears the blocked version with the CLI; `vmss extension set
   --enable-auto-upgrade false` switches the extension off.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    VirtualMachineScaleSetExtension,
    VirtualMachineScaleSetExtensionProperties,
)

from scaleset.catalog.artifacts import pack_directory
from scaleset.guest.builtin import builtin_packages
from tests.e2e.conftest import serve_module
from tests.support import (
    ServerProcess,
    eventually,
    guest_speed,
    put_health_probe,
    run_cli,
    scale_set_body,
    server_log_errors,
    set_path,
)

pytestmark = pytest.mark.e2e
GROUP = "rg-auto-ext"
SET = "greeted"
PUBLISHER, TYPE = "Contoso.Tools", "Greeter"
API = {"api-version": "2026-04-01"}
RETRY_SECONDS = 15
STARTED = f"automatic extension upgrade of set {SET} started"
SWEEP = "automatic extension upgrade sweep:"
ENVIRONMENT = {
    **guest_speed(apphealth_time_scale=100),
    "SCALESET_PLATFORM_SWEEP_SECONDS": "1",
    "SCALESET_EXTENSION_RETRY_SECONDS": str(RETRY_SECONDS),
}
Json = dict[str, Any]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    yield from serve_module(
        "scaleset-auto-ext-",
        GROUP,
        ENVIRONMENT,
        extra_args=("--log-level", "info"),
        webapp_versions=("1.0.0",),
    )


# ------------------------------------------------------------------------------------------- helpers
def greeter_package(root: Path, version: str, *, broken: bool = False) -> Path:
    """The built-in CustomScript handler laid out as a Greeter package; `broken`: its enable always fails
    (exit code 3, as the handler answers an unknown command)."""
    script = next(p for p in builtin_packages() if p.type == "CustomScript")
    target = script.assemble(root / f"greeter-{version}")
    manifest_path = target / "HandlerManifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest[0]["name"] = TYPE
    if broken:
        manifest[0]["handlerManifest"]["enableCommand"] = "bin/custom-script-shim enable-broken"
    manifest_path.write_text(json.dumps(manifest))
    return target


def publish(server: ServerProcess, root: Path, version: str, *, broken: bool = False) -> float:
    """Publish a Greeter version through the admin API; returns the wall-clock time the call returned."""
    package = pack_directory(greeter_package(root, version, broken=broken))
    with server.client() as client:
        response = client.post(
            "/scaleset/admin/extensions",
            content=package,
            params={"publisher": PUBLISHER, "type": TYPE, "version": version},
            headers={"Content-Type": "application/gzip"},
        )
    assert response.status_code == 201, response.text
    return time.time()


def greeter(automatic: bool = True) -> VirtualMachineScaleSetExtension:
    return VirtualMachineScaleSetExtension(
        name="greeter",
        properties=VirtualMachineScaleSetExtensionProperties(
            publisher=PUBLISHER,
            type=TYPE,
            type_handler_version="1.0",
            enable_automatic_upgrade=automatic,
            settings={"commandToExecute": "echo hello"},
        ),
    )


def running(compute: ComputeManagementClient) -> dict[str, str | None]:
    """Each instance's Greeter version, as its instance view reports it (None while it reports none)."""
    found: dict[str, str | None] = {}
    for vm in compute.virtual_machine_scale_set_vms.list(GROUP, SET, expand="instanceView"):
        views = [e for e in vm.instance_view.extensions or [] if e.name == "greeter"]
        succeeded = views and views[0].statuses and views[0].statuses[0].code.endswith("succeeded")
        found[str(vm.instance_id)] = views[0].type_handler_version if succeeded else None
    return found


def all_on(compute: ComputeManagementClient, version: str) -> bool:
    versions = running(compute)
    return len(versions) == 3 and set(versions.values()) == {version}


def platform_run_ended_after(compute: ComputeManagementClient, moment: datetime) -> Any:
    try:
        status = compute.virtual_machine_scale_set_rolling_upgrades.get_latest(GROUP, SET)
    except ResourceNotFoundError:
        return None
    if status.running_status.start_time <= moment:
        return None
    return status if status.running_status.code not in ("RollingForward", "RollingBack") else None


def failures(server: ServerProcess) -> list[Json]:
    with server.client() as client:
        response = client.get(set_path(server, GROUP, SET, "blockedExtensionVersions"), params=API)
    assert response.status_code == 200, response.text
    value: list[Json] = response.json()["value"]
    return value


def log_mark(server: ServerProcess) -> int:
    return server.log_path.stat().st_size if server.log_path else 0


def log_text(server: ServerProcess, since: int) -> str:
    assert server.log_path is not None
    with open(server.log_path, "rb") as log:
        log.seek(since)
        return log.read().decode(errors="replace")


def logged_at(text: str, pattern: str) -> float | None:
    """Wall-clock time of the first log line matching `pattern` (logging's `asctime`, local time, ms)."""
    for line in text.splitlines():
        if re.search(pattern, line):
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def cli(server: ServerProcess, *args: str) -> Any:
    result = run_cli(server, *args, "-o", "json")
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout) if result.stdout.strip() else None


# ---------------------------------------------------------------------------------------------- story
def test_platform_upgrades_an_extension_and_never_loops_on_a_bad_version(
    server: ServerProcess, compute: ComputeManagementClient, tmp_path: Path
) -> None:
    log_start = log_mark(server)
    sets = compute.virtual_machine_scale_sets
    publish(server, tmp_path, "1.0.0")
    probe = put_health_probe(server, GROUP, "lb-ext")
    try:
        # -- 1. the model PUT opts the extension in (M-24) -------------------------------------------
        body = scale_set_body(3, data_disk=False, upgradePolicy={"mode": "Automatic"})
        body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": probe}}
        body["properties"]["virtualMachineProfile"]["extensionProfile"] = {"extensions": [greeter()]}
        made = sets.begin_create_or_update(GROUP, SET, body).result()
        assert made.virtual_machine_profile.extension_profile.extensions[0].enable_automatic_upgrade is True
        eventually(lambda: all_on(compute, "1.0.0"), 90, 0.5, "every instance on Greeter 1.0.0")

        # -- 2. a new minor version reaches every instance by itself (M-18, M-22) ------------------------
        mark = log_mark(server)
        before = datetime.now().astimezone()
        returned = publish(server, tmp_path, "1.1.0")
        status = eventually(lambda: platform_run_ended_after(compute, before), 120, 0.5, "the 1.1.0 run")
        assert status.running_status.code == "Completed", status.error
        assert status.progress.successful_instance_count == 3
        assert status.policy.rollback_failed_instances_on_policy_breach is True
        eventually(lambda: all_on(compute, "1.1.0"), 30, 0.5, "every instance on Greeter 1.1.0")
        text = log_text(server, mark)
        written = logged_at(text, STARTED)
        first_batch = logged_at(text, rf"\(set {SET}\): batch 1:")
        assert written is not None and first_batch is not None, text[-3000:]
        print(
            f"\nextension publish returned → run written {written - returned:.3f} s, "
            f"first batch started {first_batch - returned:.3f} s"
        )

        # -- 3. a bad version: rolled back, retried once, then blocked (M-19, M-20) -------------------
        before = datetime.now().astimezone()
        publish(server, tmp_path, "1.2.0", broken=True)
        status = eventually(lambda: platform_run_ended_after(compute, before), 120, 0.5, "the 1.2.0 run")
        assert status.running_status.code == "Faulted"
        assert status.error.code == "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
        assert status.progress.failed_instance_count == 1  # stopped after its first batch
        eventually(lambda: all_on(compute, "1.1.0"), 60, 0.5, "rolled back to Greeter 1.1.0")
        (first,) = failures(server)
        assert (first["version"], first["blocked"], first["clearedTime"]) == ("1.2.0", False, None)
        assert first["retryTime"] is not None

        eventually(lambda: len(failures(server)) == 2, RETRY_SECONDS + 90, 0.5, "the one retry")
        second = failures(server)[1]
        # A retry stopped at the gate ("gated") means the instance rolled back last time still counts as
        # unhealthy: its restore was not judged on what its guest reported for the previous model.
        assert second["kind"] == "failed", second
        assert (second["version"], second["blocked"], second["retryTime"]) == ("1.2.0", True, None)
        eventually(lambda: all_on(compute, "1.1.0"), 60, 0.5, "rolled back to Greeter 1.1.0 again")
        mark = log_mark(server)
        eventually(lambda: log_text(server, mark).count(SWEEP) >= 3, 30, 0.2, "sweeps")
        assert STARTED not in log_text(server, mark)  # blocked: no sweep starts it again
        assert all_on(compute, "1.1.0")

        # -- 4. the operator's view, and the CLI (M-24) ----------------------------------------------
        listed = cli(server, "extension-upgrade", "list-blocked", "-g", GROUP, "--vmss-name", SET)
        assert [(f["version"], f["blocked"]) for f in listed] == [("1.2.0", False), ("1.2.0", True)]
        cli(
            server, "vmss", "extension", "set", "-g", GROUP, "--vmss-name", SET, "-n", TYPE,
            "--publisher", PUBLISHER, "--version", "1.0", "--extension-instance-name", "greeter",
            "--settings", '{"commandToExecute": "echo hello"}', "--enable-auto-upgrade", "false",
        )  # fmt: skip
        extension = compute.virtual_machine_scale_set_extensions.get(GROUP, SET, "greeter")
        assert extension.enable_automatic_upgrade is False
        cleared = cli(server, "extension-upgrade", "clear-blocked", "-g", GROUP, "--vmss-name", SET)
        assert [f["version"] for f in cleared] == ["1.2.0", "1.2.0"]
        assert all(f["clearedTime"] is not None for f in failures(server))
        # With automatic upgrade off, the cleared version is not started by the sweeps that follow.
        eventually(lambda: log_text(server, mark).count(SWEEP) >= 6, 30, 0.2, "sweeps")
        assert STARTED not in log_text(server, mark)
        eventually(lambda: all_on(compute, "1.1.0"), 30, 0.5, "still on Greeter 1.1.0")
    finally:
        sets.begin_delete(GROUP, SET).result()
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert not server_log_errors(server, log_start), server.log_path
