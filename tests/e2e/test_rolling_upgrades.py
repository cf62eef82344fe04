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

import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import RollingUpgradeStatusInfo, VirtualMachineScaleSetVM

from tests.e2e.conftest import (
    Made,
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
    put_health_probe,
    scale_set_body,
)

pytestmark = pytest.mark.e2e
GROUP = "rg-rolling"
UNHEALTHY_UPGRADED = "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
Json = dict[str, Any]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # The Application Health extension probes 100x faster than on Azure, and the guest reports its status
    # every 0.25 s instead of every second (guest/init.py), so batches are judged sooner.
    yield from serve_module("scaleset-rolling-", GROUP, guest_speed(apphealth_time_scale=100))


@pytest.fixture
def made(server: ServerProcess, compute: ComputeManagementClient) -> Iterator[Made]:
    with made_in(server, compute, GROUP) as record:
        yield record


# ------------------------------------------------------------------------------------------- helpers
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


def os_disk(vm: VirtualMachineScaleSetVM) -> str:
    name: str = vm.storage_profile.os_disk.name
    assert vm.instance_view.disks[0].name == name  # the instance view names the same disk
    return name


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
    publish_image(server, "webapp-1.0.0", sku=sku, version="1.0.0")
    made.load_balancers.append(lb)
    probe_id = put_health_probe(server, GROUP, lb)
    create(made, name, rolling_set(10, sku, probe=probe_id, maxBatchInstancePercent=20))
    before = wait_all_healthy(compute, GROUP, name, 10)
    assert {vm.instance_view.os_version for vm in before.values()} == {"1.0.0"}
    addresses = instance_addresses(server, GROUP, name)
    write_files(addresses, "/files/data/0/keep.txt")
    write_files(addresses, "/files/os/gone.txt")
    publish_image(server, "webapp-1.1.0", sku=sku, version="1.1.0")

    poller = compute.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(GROUP, name)
    seen: list[dict[str, int]] = []
    while not poller.done():
        seen.append(progress(latest(compute, name)))
        time.sleep(0.2)
    poller.result()

    after = scale_set_vms(compute, GROUP, name)
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
    publish_image(server, "webapp-1.0.0", sku=sku, version="1.0.0")
    body = rolling_set(
        10,
        sku,
        extensions=[application_health(grace)],
        maxBatchInstancePercent=20,
        rollbackFailedInstancesOnPolicyBreach=True,
    )
    create(made, name, body)
    before = wait_all_healthy(compute, GROUP, name, 10)
    addresses = instance_addresses(server, GROUP, name)
    # A file on every OS disk: a reimage would lose it, the previous OS disk brings it back.
    write_files(addresses, "/files/os/marker.txt")
    publish_image(server, "webapp-broken-2.0.0", sku=sku, version="2.0.0")

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
    after = wait_all_healthy(compute, GROUP, name, 10)  # the rolled-back two are healthy again
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
    publish_image(server, "webapp-1.0.0", sku=sku, version="1.0.0")
    create(made, name, rolling_set(3, sku, extensions=[application_health(30)]))
    wait_all_healthy(compute, GROUP, name, 3)

    def refused(call: Any) -> HttpResponseError:
        with pytest.raises(HttpResponseError) as error:
            call()
        assert error.value.status_code == 409, error.value
        assert error.value.error is not None and error.value.error.code == "OperationNotAllowed"
        return error.value

    refused(lambda: upgrades.begin_cancel(GROUP, name).result())  # no upgrade ever ran
    publish_image(server, "webapp-1.1.0", sku=sku, version="1.1.0")
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
    publish_image(server, "webapp-1.0.0", sku=sku, version="1.0.0")
    # A batch takes a while: the extension wants 24 healthy answers in a row (2.4 s here) before it
    # leaves Initializing. The pause is only a safety net should the cancel come after the first batch.
    health = application_health(60, number_of_probes=24)
    health["properties"]["settings"]["intervalInSeconds"] = 10
    create(made, name, rolling_set(4, sku, extensions=[health], pauseTimeBetweenBatches="PT5S"))
    before = wait_all_healthy(compute, GROUP, name, 4)
    publish_image(server, "webapp-1.1.0", sku=sku, version="1.1.0")

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
    after = scale_set_vms(compute, GROUP, name)
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
    publish_image(server, "webapp-1.0.0", sku=sku, version="1.0.0")
    create(
        made, name, rolling_set(2, sku, extensions=[application_health(30)], pauseTimeBetweenBatches="PT1M")
    )
    wait_all_healthy(compute, GROUP, name, 2)
    publish_image(server, "webapp-1.1.0", sku=sku, version="1.1.0")

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
    assert sorted(
        i for i, vm in scale_set_vms(compute, GROUP, name).items() if vm.instance_view.os_version == "1.1.0"
    ) == ["0"]
