"""A rolling upgrade survives its control plane: `scaleset serve` killed with SIGKILL at any point of an
upgrade and started again on the same data directory resumes the same upgrade (M-26, with M-10).

Each test starts an OS upgrade with the real SDK, kills the server at one point of the run (detected by
polling `rollingUpgrades/latest` and the instance views), starts it again, and resumes waiting on the very
same long-running operation through the SDK's continuation token. Then:

- the same run (same start time) ended as it should, with the right counts;
- no instance was upgraded twice and none was skipped: an instance's OS disk generation shows in its OS
  disk name (`<set>_<id>_OsDisk_<generation>`, api/views.py), so every upgraded instance is at generation
  2 exactly (1 + one reimage) and a rolled-back one is back at 1; and the custom data, which runs once per
  new OS disk, appended exactly one line per OS disk to a file on the data disk.

The Application Health extension is the health source, probing ten times faster than on Azure
(SCALESET_APPHEALTH_TIME_SCALE=10: every 0.5 s); it needs 4 healthy answers in a row after a reimage, so
every batch spends a second or two in its health wait, long enough to be caught there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachineScaleSetVM
from azure.mgmt.core.polling.arm_polling import ARMPolling

from tests.e2e.conftest import (
    Made,
    health_of,
    made_in,
    provisioned_at,
    scale_set_vms,
    serve_module,
    wait_all_healthy,
)
from tests.support import (
    ServerProcess,
    app_request,
    application_health,
    eventually,
    guest_speed,
    instance_addresses,
    publish_image,
    scale_set_body,
)

pytestmark = pytest.mark.e2e
GROUP = "rg-durable"
CAPACITY = 4  # four instances: four batches of one, one update domain each (domain/batches.py)
UNHEALTHY_UPGRADED = "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
# Runs once per new OS disk (create, reimage; a restored disk already ran it): one line per disk.
CUSTOM_DATA = """#!/bin/sh
python3 - <<'PY'
import json, os, pathlib
files = pathlib.Path(json.loads(os.environ["SCALESET_DATA_DISKS"])["0"]) / "files"
files.mkdir(exist_ok=True)
with open(files / "os-disks", "a") as log:
    log.write("disk\\n")
PY
sleep {sleep}
"""
Json = dict[str, Any]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # The Application Health extension probes 10x faster than on Azure, and the guest reports its status
    # every 0.25 s instead of every second (guest/init.py), so batches are judged sooner.
    yield from serve_module("scaleset-durable-", GROUP, guest_speed(apphealth_time_scale=10))


@pytest.fixture
def made(server: ServerProcess, compute: ComputeManagementClient) -> Iterator[Made]:
    with made_in(server, compute, GROUP, restart_killed_server=True) as record:
        yield record


# ------------------------------------------------------------------------------------------- helpers
def create_set(
    made: Made, name: str, *, grace_period: int = 60, custom_data_sleep: float = 0, **policy: Any
) -> dict[str, VirtualMachineScaleSetVM]:
    """A Rolling set of CAPACITY instances on `scaleset:webapp:<name>:latest`, 1.0.0 published; healthy."""
    publish_image(made.server, "webapp-1.0.0", sku=name, version="1.0.0")
    body = scale_set_body(
        CAPACITY,
        version="latest",
        extensions=[application_health(grace_period, number_of_probes=4)],
        custom_data=CUSTOM_DATA.format(sleep=custom_data_sleep),
        upgradePolicy={"mode": "Rolling", "rollingUpgradePolicy": policy},
    )
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["sku"] = name
    made.sets.append(name)
    made.compute.virtual_machine_scale_sets.begin_create_or_update(GROUP, name, body).result()
    return wait_all_healthy(made.compute, GROUP, name, CAPACITY)


def generation(vm: VirtualMachineScaleSetVM) -> int:
    name: str = vm.instance_view.disks[0].name
    assert vm.storage_profile.os_disk.name == name
    return int(name.rsplit("_OsDisk_", 1)[1])


def os_disks_provisioned(server: ServerProcess, name: str) -> dict[str, int]:
    """instance id → how many OS disks ran the custom data (lines in the data-disk file)."""
    result = {}
    for instance_id, address in instance_addresses(server, GROUP, name).items():
        response = app_request(address, "/files/data/0/os-disks")
        assert response.status_code == 200, (instance_id, response.text)
        result[instance_id] = response.text.count("disk\n")
    return result


def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll fast: the points a kill aims at last a second or two."""
    return eventually(check, timeout, 0.05, what)


def progress_of(compute: ComputeManagementClient, name: str) -> tuple[str, dict[str, int]]:
    status = compute.virtual_machine_scale_set_rolling_upgrades.get_latest(GROUP, name)
    p = status.progress
    return status.running_status.code, {
        "successful": p.successful_instance_count,
        "failed": p.failed_instance_count,
        "inProgress": p.in_progress_instance_count,
        "pending": p.pending_instance_count,
    }


class StartOnly(ARMPolling):
    """Sends the start and polls nothing, as a client that goes away right after the call; its
    continuation token is what a later client resumes from (`polling=False` would do, but azure-core
    1.41 cannot make a continuation token from NoPolling)."""

    def run(self) -> None:
        return None


def start_upgrade(made: Made, name: str, image: str, version: str) -> tuple[str, datetime]:
    """Publish the new image, start the OS upgrade without waiting; the operation's continuation token
    and the run's start time."""
    publish_image(made.server, image, sku=name, version=version)
    poller = made.compute.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(
        GROUP, name, polling=StartOnly()
    )
    token: str = poller.continuation_token()
    status = made.compute.virtual_machine_scale_set_rolling_upgrades.get_latest(GROUP, name)
    return token, status.running_status.start_time


def crash_and_restart(server: ServerProcess) -> None:
    server.kill()
    server.start()


def resume(made: Made, name: str, token: str) -> None:
    """Wait for the operation the first server started, through the restarted one."""
    made.compute.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(
        GROUP, name, continuation_token=token
    ).result()


# ------------------------------------------------------------------------------------ kill points
def right_away(compute: ComputeManagementClient, name: str) -> str:
    return "right after the start call returned"


def while_reimaging(compute: ComputeManagementClient, name: str) -> str:
    def reimaging() -> str | None:
        for instance_id, vm in scale_set_vms(compute, GROUP, name).items():
            if vm.instance_view.statuses[0].code == "ProvisioningState/updating":
                return f"instance {instance_id} being reimaged"
        return None

    found: str = poll(reimaging, 30, "an instance of the first batch being reimaged")
    return found


def during_health_wait(compute: ComputeManagementClient, name: str) -> str:
    def waiting() -> str | None:
        code, counts = progress_of(compute, name)
        if code != "RollingForward" or counts["inProgress"] == 0:
            return None
        for instance_id, vm in scale_set_vms(compute, GROUP, name).items():
            fresh = generation(vm) == 2 and vm.instance_view.statuses[0].code == "ProvisioningState/succeeded"
            if fresh and health_of(vm) != "HealthState/healthy":
                return f"instance {instance_id} reimaged, {health_of(vm)}, {counts}"
        return None

    found: str = poll(waiting, 30, "a reimaged instance waiting to become healthy")
    return found


def between_batches(compute: ComputeManagementClient, name: str) -> str:
    def pausing() -> str | None:
        code, counts = progress_of(compute, name)
        done = code == "RollingForward" and counts["successful"] >= 1 and counts["inProgress"] == 0
        return f"{code} {counts}" if done else None

    found: str = poll(pausing, 30, "the pause after the first batch")
    return found


# -------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    ("name", "kill_point", "custom_data_sleep", "pause"),
    [
        # The start call returns once the run is written; the engine may be a few ms into batch 1.
        pytest.param("dstart", right_away, 0, "PT0S", id="before-the-first-batch"),
        # The custom data sleeps a second so that every reimage is seen; the kill comes at the first.
        pytest.param("dreimage", while_reimaging, 1, "PT0S", id="mid-batch"),
        pytest.param("dhealth", during_health_wait, 0, "PT0S", id="during-the-health-wait"),
        pytest.param("dpause", between_batches, 0, "PT2S", id="between-batches"),
    ],
)
def test_a_killed_server_resumes_the_upgrade(
    server: ServerProcess,
    compute: ComputeManagementClient,
    made: Made,
    name: str,
    kill_point: Callable[[ComputeManagementClient, str], str],
    custom_data_sleep: float,
    pause: str,
) -> None:
    create_set(made, name, custom_data_sleep=custom_data_sleep, pauseTimeBetweenBatches=pause)
    token, started = start_upgrade(made, name, "webapp-1.1.0", "1.1.0")

    seen = kill_point(compute, name)
    crash_and_restart(server)
    resume(made, name, token)

    status = compute.virtual_machine_scale_set_rolling_upgrades.get_latest(GROUP, name)
    assert status.running_status.start_time == started, "not the run the first server started"
    assert progress_of(compute, name) == (
        "Completed",
        {"successful": CAPACITY, "failed": 0, "inProgress": 0, "pending": 0},
    ), seen
    after = wait_all_healthy(compute, GROUP, name, CAPACITY)
    assert {i: (generation(vm), vm.instance_view.os_version) for i, vm in after.items()} == {
        str(i): (2, "1.1.0") for i in range(CAPACITY)
    }, seen
    assert all(vm.latest_model_applied for vm in after.values())
    assert os_disks_provisioned(server, name) == {str(i): 2 for i in range(CAPACITY)}, seen


def test_a_server_killed_during_rollback_finishes_it(
    server: ServerProcess, compute: ComputeManagementClient, made: Made
) -> None:
    """The never-healthy image with rollbackFailedInstancesOnPolicyBreach: killed while the first batch
    rolls back (RollingBack), the restarted server finishes the rollback and faults the run."""
    name = "drollback"
    grace = 8  # the first batch's health wait, in real seconds
    before = create_set(made, name, grace_period=grace, rollbackFailedInstancesOnPolicyBreach=True)
    first = instance_addresses(server, GROUP, name)["0"]  # update domain 0: the first batch
    assert app_request(first, "/files/os/marker.txt", "PUT", b"first disk").status_code == 201
    token, started = start_upgrade(made, name, "webapp-broken-2.0.0", "2.0.0")

    poll(lambda: progress_of(compute, name)[0] == "RollingBack", grace + 30, "the run rolling back")
    crash_and_restart(server)
    with pytest.raises(HttpResponseError) as failed:
        resume(made, name, token)

    assert failed.value.error is not None and failed.value.error.code == UNHEALTHY_UPGRADED, failed.value
    status = compute.virtual_machine_scale_set_rolling_upgrades.get_latest(GROUP, name)
    assert status.running_status.start_time == started
    assert status.error.code == UNHEALTHY_UPGRADED
    code, counts = progress_of(compute, name)
    assert (code, counts["successful"], counts["failed"], counts["inProgress"]) == ("Faulted", 0, 1, 0)
    # instance 0 is healthy again on its previous OS disk
    after = wait_all_healthy(compute, GROUP, name, CAPACITY)
    assert {i: (generation(vm), vm.instance_view.os_version) for i, vm in after.items()} == {
        str(i): (1, "1.0.0") for i in range(CAPACITY)
    }
    # Instance 0 (update domain 0, the only batch) had one more OS disk, the broken one; the restore
    # brought its first disk back without running anything again. The others were never touched.
    assert os_disks_provisioned(server, name) == {"0": 2, "1": 1, "2": 1, "3": 1}
    assert app_request(first, "/files/os/marker.txt").content == b"first disk"
    for instance_id in ("1", "2", "3"):
        assert provisioned_at(after[instance_id]) == provisioned_at(before[instance_id])
