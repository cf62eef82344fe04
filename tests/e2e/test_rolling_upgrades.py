"""Rolling OS upgrades on real local instances, driven with the real azure-mgmt-compute SDK (M-4, M-10,
M-11; azure-api.md §1.2, §2.2, §2.6, §4.1–4.3).

One `scaleset serve` for the module. Every test publishes its images under its own SKU, so a version one
test publishes (the never-healthy 2.0.0, say) is never `latest` for another test's set, and removes what
it made. The Application Health extension probes a hundred times faster than on Azure here
(SCALESET_APPHEALTH_TIME_SCALE); the control plane's own health wait is not scaled: it is the
extension's `gracePeriod` in real seconds (engine/rolling.py `health_wait`), or five minutes with a
load-balancer probe, so only the healthy 10-instance upgrade uses a load-balancer probe.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import RollingUpgradeStatusInfo, VirtualMachineScaleSetVM

from tests.e2e.conftest import compute_client, resource_client
from tests.support import (
    EXAMPLE_IMAGES,
    ServerProcess,
    app_request,
    dispose,
    eventually,
    instance_addresses,
    new_data_dir,
    scale_set_body,
    server_log_errors,
)

pytestmark = pytest.mark.e2e
GROUP = "rg-rolling"
NETWORK_API = {"api-version": "2024-05-01"}
UNHEALTHY_UPGRADED = "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
Json = dict[str, Any]
# The Application Health extension probes 100x faster than on Azure, and the guest reports its status
# every 0.25 s instead of every second (guest/init.py), so batches are judged sooner.
GUEST_SPEED = {"SCALESET_APPHEALTH_TIME_SCALE": "100", "SCALESET_GUEST_STATUS_SECONDS": "0.25"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(new_data_dir("scaleset-rolling-"), environment=GUEST_SPEED).start()
    try:
        resource_client(process).resource_groups.create_or_update(GROUP, {"location": "eastus"})
        yield process
    finally:
        leftovers = dispose(process)
        assert not leftovers, f"instances left running after the module: {leftovers}"


@pytest.fixture(scope="module")
def compute(server: ServerProcess) -> ComputeManagementClient:
    return compute_client(server)


@dataclass
class Made:
    """What a test created, removed at its end whatever happened (sets first: they hold the probes)."""

    server: ServerProcess
    compute: ComputeManagementClient
    sets: list[str] = field(default_factory=list)
    load_balancers: list[str] = field(default_factory=list)

    def remove(self) -> None:
        for name in self.sets:
            with contextlib.suppress(ResourceNotFoundError):
                self.compute.virtual_machine_scale_sets.begin_delete(GROUP, name).result()
        with self.server.client() as client:
            for name in self.load_balancers:
                client.delete(lb_path(self.server, name), params=NETWORK_API)


@pytest.fixture
def made(server: ServerProcess, compute: ComputeManagementClient) -> Iterator[Made]:
    record = Made(server, compute)
    log_start = server.log_path.stat().st_size if server.log_path else 0
    try:
        yield record
    finally:
        record.remove()
    assert not server_log_errors(server, log_start), server.log_path


# ------------------------------------------------------------------------------------------- helpers
def lb_path(server: ServerProcess, name: str) -> str:
    return (
        f"/subscriptions/{server.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Network/"
        f"loadBalancers/{name}"
    )


def publish(server: ServerProcess, image: str, sku: str, version: str) -> None:
    response = server.publish(EXAMPLE_IMAGES / image, sku=sku, version=version)
    assert response.status_code == 201, response.text


def application_health(grace_period: int, number_of_probes: int = 1) -> Json:
    """The Application Health extension (rich states) on the webapp's /health (azure-api.md §4.5)."""
    return {
        "name": "health",
        "properties": {
            "publisher": "Microsoft.ManagedServices",
            "type": "ApplicationHealthLinux",
            "typeHandlerVersion": "2.0",
            "settings": {
                "protocol": "http",
                "port": 8080,
                "requestPath": "/health",
                "intervalInSeconds": 5,
                "numberOfProbes": number_of_probes,
                "gracePeriod": grace_period,
            },
        },
    }


def rolling_set(
    capacity: int, sku: str, *, extensions: list[Json] | None = None, probe: str | None = None, **policy: Any
) -> Json:
    """A Rolling set on `scaleset:webapp:<sku>:latest` with a data disk and one health source."""
    body = scale_set_body(
        capacity,
        version="latest",
        extensions=extensions,
        upgradePolicy={"mode": "Rolling", "rollingUpgradePolicy": policy},
    )
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["sku"] = sku
    if probe is not None:
        body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": probe}}
    return body


def create(made: Made, name: str, body: Json) -> None:
    made.sets.append(name)
    created = made.compute.virtual_machine_scale_sets.begin_create_or_update(GROUP, name, body).result()
    assert created.provisioning_state == "Succeeded"


def vms(compute: ComputeManagementClient, name: str) -> dict[str, VirtualMachineScaleSetVM]:
    listed = compute.virtual_machine_scale_set_vms.list(GROUP, name, expand="instanceView")
    return {str(vm.instance_id): vm for vm in listed}


def health_of(vm: VirtualMachineScaleSetVM) -> str | None:
    health = vm.instance_view.vm_health
    return health.status.code if health is not None and health.status is not None else None


def wait_all_healthy(
    compute: ComputeManagementClient, name: str, count: int, timeout: float = 60
) -> dict[str, VirtualMachineScaleSetVM]:
    def check() -> dict[str, VirtualMachineScaleSetVM] | None:
        found = vms(compute, name)
        healthy = len(found) == count and all(health_of(vm) == "HealthState/healthy" for vm in found.values())
        return found if healthy else None

    result: dict[str, VirtualMachineScaleSetVM] = eventually(
        check, timeout, what=f"all {count} instances of {name} healthy"
    )
    return result


def os_disk(vm: VirtualMachineScaleSetVM) -> str:
    name: str = vm.storage_profile.os_disk.name
    assert vm.instance_view.disks[0].name == name  # the instance view names the same disk
    return name


def provisioned_at(vm: VirtualMachineScaleSetVM) -> datetime:
    status = vm.instance_view.statuses[0]
    assert status.code == "ProvisioningState/succeeded", status
    moment: datetime = status.time
    return moment


def latest(compute: ComputeManagementClient, name: str) -> RollingUpgradeStatusInfo:
    return compute.virtual_machine_scale_set_rolling_upgrades.get_latest(GROUP, name)


def progress(status: RollingUpgradeStatusInfo) -> dict[str, int]:
    p = status.progress
    return {
        "successful": p.successful_instance_count,
        "failed": p.failed_instance_count,
        "inProgress": p.in_progress_instance_count,
        "pending": p.pending_instance_count,
    }


def write_files(addresses: dict[str, str], path: str) -> None:
    for instance_id, address in addresses.items():
        written = app_request(address, path, "PUT", f"kept by {instance_id}".encode())
        assert written.status_code == 201, written.text


# ------------------------------------------------------------------------ a healthy 10-instance upgrade
def test_os_upgrade_of_ten_instances_in_batches_of_two(
    server: ServerProcess, compute: ComputeManagementClient, made: Made
) -> None:
    """M-10, M-11: 10 instances behind a load-balancer probe at maxBatchInstancePercent 20 go to the new
    image two at a time, one update domain after the other, each batch healthy before the next; data disks
    survive, OS disks are new."""
    sku, name, lb = "ten", "ten", "lb-ten"
    publish(server, "webapp-1.0.0", sku, "1.0.0")
    probe = {
        "name": "health",
        "properties": {
            "protocol": "Http",
            "port": 8080,
            "requestPath": "/health",
            "intervalInSeconds": 5,
            "numberOfProbes": 1,
        },
    }
    made.load_balancers.append(lb)
    with server.client() as client:
        response = client.put(
            lb_path(server, lb),
            params=NETWORK_API,
            json={"location": "eastus", "properties": {"probes": [probe]}},
        )
    assert response.status_code == 201, response.text
    probe_id = response.json()["properties"]["probes"][0]["id"]
    create(made, name, rolling_set(10, sku, probe=probe_id, maxBatchInstancePercent=20))
    before = wait_all_healthy(compute, name, 10)
    assert {vm.instance_view.os_version for vm in before.values()} == {"1.0.0"}
    addresses = instance_addresses(server, GROUP, name)
    write_files(addresses, "/files/data/0/keep.txt")
    write_files(addresses, "/files/os/gone.txt")
    publish(server, "webapp-1.1.0", sku, "1.1.0")

    poller = compute.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(GROUP, name)
    seen: list[dict[str, int]] = []
    while not poller.done():
        seen.append(progress(latest(compute, name)))
        time.sleep(0.2)
    poller.result()

    after = vms(compute, name)
    assert sorted(after, key=int) == [str(i) for i in range(10)]
    for instance_id, vm in after.items():
        assert vm.instance_view.os_version == "1.1.0", instance_id
        reference = vm.storage_profile.image_reference
        assert (reference.version, reference.exact_version) == ("latest", "1.1.0")
        assert vm.latest_model_applied is True
        assert os_disk(vm) == f"{name}_{instance_id}_OsDisk_2"  # reimaged exactly once
        address = addresses[instance_id]
        assert app_request(address, "/").json()["version"] == "1.1.0"
        assert app_request(address, "/files/data/0/keep.txt").content == f"kept by {instance_id}".encode()
        assert app_request(address, "/files/os/gone.txt").status_code == 404
    status = latest(compute, name)
    assert status.running_status.code == "Completed"
    assert status.running_status.last_action == "Start"
    assert progress(status) == {"successful": 10, "failed": 0, "inProgress": 0, "pending": 0}
    assert status.policy.max_batch_instance_percent == 20
    assert status.error is None
    # Batches of two: never more than two instances in flight, and successes come two at a time...
    assert seen, "the upgrade finished before its status could be read once"
    assert max(s["inProgress"] for s in seen) <= 2, seen
    assert {s["successful"] for s in seen} <= {0, 2, 4, 6, 8, 10}, seen
    # ...one update domain after the other (domain/batches.py: (0, 5), (1, 6), … for ids 0–9): every
    # instance finished its reimage before any instance of a later batch, so ordering the instances by
    # the end of their reimage gives the update domains in pairs.
    finished = sorted(after.values(), key=provisioned_at)
    assert [vm.instance_view.platform_update_domain for vm in finished] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


# ---------------------------------------------------------------------------- a never-healthy image
def test_never_healthy_image_faults_and_rolls_the_first_batch_back(
    server: ServerProcess, compute: ComputeManagementClient, made: Made
) -> None:
    """M-10: the first batch never becomes healthy → the run stops Faulted with Azure's code, the batch's
    two instances get their previous OS disk back (rollbackFailedInstancesOnPolicyBreach) and are healthy
    again, the other eight are never touched."""
    sku, name = "broken", "broken"
    grace = 10  # the control plane waits this long (real seconds) for the batch to become healthy
    publish(server, "webapp-1.0.0", sku, "1.0.0")
    body = rolling_set(
        10,
        sku,
        extensions=[application_health(grace)],
        maxBatchInstancePercent=20,
        rollbackFailedInstancesOnPolicyBreach=True,
    )
    create(made, name, body)
    before = wait_all_healthy(compute, name, 10)
    addresses = instance_addresses(server, GROUP, name)
    # A file on every OS disk: a reimage would lose it, the previous OS disk brings it back.
    write_files(addresses, "/files/os/marker.txt")
    publish(server, "webapp-broken-2.0.0", sku, "2.0.0")

    started = time.monotonic()
    with pytest.raises(HttpResponseError) as failed:
        compute.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(GROUP, name).result()

    assert failed.value.error is not None and failed.value.error.code == UNHEALTHY_UPGRADED, failed.value
    assert time.monotonic() - started >= grace  # the batch had its whole health wait
    status = latest(compute, name)
    assert status.running_status.code == "Faulted"
    assert status.error.code == UNHEALTHY_UPGRADED
    counts = progress(status)
    assert (counts["successful"], counts["failed"], counts["inProgress"]) == (0, 2, 0), counts
    assert status.policy.rollback_failed_instances_on_policy_breach is True

    first_batch = {i for i, vm in before.items() if vm.instance_view.platform_update_domain == 0}
    assert first_batch == {"0", "5"}  # update domain 0 goes first (domain/batches.py)
    after = wait_all_healthy(compute, name, 10)  # the rolled-back two are healthy again
    for instance_id, vm in after.items():
        assert vm.instance_view.os_version == "1.0.0", instance_id
        assert vm.storage_profile.image_reference.exact_version == "1.0.0", instance_id
        assert os_disk(vm) == f"{name}_{instance_id}_OsDisk_1", instance_id
        address = addresses[instance_id]
        assert app_request(address, "/").json()["version"] == "1.0.0"
        assert app_request(address, "/files/os/marker.txt").content == f"kept by {instance_id}".encode()
        touched = provisioned_at(vm) != provisioned_at(before[instance_id])
        assert touched == (instance_id in first_batch), instance_id


# ----------------------------------------------------------------------------------- the API's rules
def test_one_upgrade_at_a_time_and_cancel_needs_one(
    server: ServerProcess, compute: ComputeManagementClient, made: Made
) -> None:
    """azure-api.md §1.2, §3.1: a second start while one runs, and a cancel with nothing running, are
    409 OperationNotAllowed."""
    sku, name = "conflict", "conflict"
    upgrades = compute.virtual_machine_scale_set_rolling_upgrades
    publish(server, "webapp-1.0.0", sku, "1.0.0")
    create(made, name, rolling_set(3, sku, extensions=[application_health(30)]))
    wait_all_healthy(compute, name, 3)

    def refused(call: Any) -> HttpResponseError:
        with pytest.raises(HttpResponseError) as error:
            call()
        assert error.value.status_code == 409, error.value
        assert error.value.error is not None and error.value.error.code == "OperationNotAllowed"
        return error.value

    refused(lambda: upgrades.begin_cancel(GROUP, name).result())  # no upgrade ever ran
    publish(server, "webapp-1.1.0", sku, "1.1.0")
    poller = upgrades.begin_start_os_upgrade(GROUP, name)
    refused(lambda: upgrades.begin_start_os_upgrade(GROUP, name))
    poller.result()
    refused(lambda: upgrades.begin_cancel(GROUP, name).result())  # the upgrade is over

    status = latest(compute, name)
    assert status.running_status.code == "Completed"
    assert progress(status) == {"successful": 3, "failed": 0, "inProgress": 0, "pending": 0}


def test_cancel_stops_after_the_first_batch(
    server: ServerProcess, compute: ComputeManagementClient, made: Made
) -> None:
    """azure-api.md §1.2, §4.1: a cancel while the first batch runs lets that batch finish, then the run
    ends Cancelled; no later batch starts."""
    sku, name = "cancel", "cancel"
    upgrades = compute.virtual_machine_scale_set_rolling_upgrades
    publish(server, "webapp-1.0.0", sku, "1.0.0")
    # A batch takes a while: the extension wants 24 healthy answers in a row (2.4 s here) before it
    # leaves Initializing. The pause is only a safety net should the cancel come after the first batch.
    health = application_health(60, number_of_probes=24)
    health["properties"]["settings"]["intervalInSeconds"] = 10
    create(made, name, rolling_set(4, sku, extensions=[health], pauseTimeBetweenBatches="PT5S"))
    before = wait_all_healthy(compute, name, 4)
    publish(server, "webapp-1.1.0", sku, "1.1.0")

    poller = upgrades.begin_start_os_upgrade(GROUP, name)
    eventually(
        lambda: progress(latest(compute, name))["inProgress"] >= 1, 30, 0.05, "the first batch started"
    )
    upgrades.begin_cancel(GROUP, name).result()

    with pytest.raises(HttpResponseError):  # the upgrade's own operation ends Canceled
        poller.result()
    status = latest(compute, name)
    assert status.running_status.code == "Cancelled"
    assert status.running_status.last_action == "Cancel"
    assert status.error is None
    counts = progress(status)
    assert (counts["successful"], counts["failed"], counts["inProgress"]) == (1, 0, 0), counts
    after = vms(compute, name)
    upgraded = sorted(i for i, vm in after.items() if vm.instance_view.os_version == "1.1.0")
    assert upgraded == ["0"]  # 4 instances: one per batch, update domain 0 first
    for instance_id, vm in after.items():
        generation = 2 if instance_id == "0" else 1
        assert os_disk(vm) == f"{name}_{instance_id}_OsDisk_{generation}"
        if instance_id != "0":
            assert provisioned_at(vm) == provisioned_at(before[instance_id])
    # Nothing runs any more: a cancel now is refused.
    with pytest.raises(HttpResponseError) as again:
        upgrades.begin_cancel(GROUP, name).result()
    assert again.value.status_code == 409


def test_cancel_during_the_pause_between_batches_ends_the_run_at_once(
    server: ServerProcess, compute: ComputeManagementClient, made: Made
) -> None:
    """A cancel that comes while the run pauses between batches (pauseTimeBetweenBatches) has no batch
    to wait for: the run ends Cancelled now, not when the pause is over."""
    sku, name = "pause", "pause"
    upgrades = compute.virtual_machine_scale_set_rolling_upgrades
    publish(server, "webapp-1.0.0", sku, "1.0.0")
    create(
        made, name, rolling_set(2, sku, extensions=[application_health(30)], pauseTimeBetweenBatches="PT1M")
    )
    wait_all_healthy(compute, name, 2)
    publish(server, "webapp-1.1.0", sku, "1.1.0")

    poller = upgrades.begin_start_os_upgrade(GROUP, name)
    eventually(
        lambda: (
            progress(latest(compute, name)) == {"successful": 1, "failed": 0, "inProgress": 0, "pending": 1}
        ),
        60,
        0.1,
        "the first batch done, the run pausing",
    )
    asked = time.monotonic()
    upgrades.begin_cancel(GROUP, name).result()

    assert time.monotonic() - asked < 20  # far less than the minute of pause
    with pytest.raises(HttpResponseError):
        poller.result()
    status = latest(compute, name)
    assert status.running_status.code == "Cancelled"
    assert progress(status) == {"successful": 1, "failed": 0, "inProgress": 0, "pending": 0}
    assert sorted(i for i, vm in vms(compute, name).items() if vm.instance_view.os_version == "1.1.0") == [
        "0"
    ]
