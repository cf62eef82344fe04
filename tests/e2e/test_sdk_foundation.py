"""Issue 2 §6, end to end: the real azure-mgmt-compute and azure-mgmt-resource SDKs against a real
`scaleset serve` process whose instances are real processes (M-1, M-15, M-16, M-25, M-26)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import psutil
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient

from tests.e2e.conftest import compute_client, resource_client
from tests.support import ServerProcess, processes_under
from tests.support import scale_set_body as support_body

pytestmark = pytest.mark.e2e
GROUP = "rg-foundation"
SET = "web"


def scale_set_body(capacity: int, version: str = "1.0.0") -> dict[str, Any]:
    return support_body(capacity, version=version, zones=["1", "2", "3"], computer_name_prefix="web")


def addresses(server: ServerProcess) -> dict[str, str]:
    """instance id → address, from the scale set's network interfaces."""
    with server.client() as client:
        path = (
            f"/subscriptions/{server.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
            f"virtualMachineScaleSets/{SET}/networkInterfaces"
        )
        nics = client.get(path, params={"api-version": "2026-04-01"}).json()["value"]
    result = {}
    for nic in nics:
        instance_id = nic["properties"]["virtualMachine"]["id"].rsplit("/", 1)[1]
        result[instance_id] = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
    return result


def wait_for_app(address: str, path: str = "/", timeout: float = 15) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(f"http://{address}:8080{path}", timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def instance_ids(compute: ComputeManagementClient) -> list[str]:
    return sorted((vm.instance_id for vm in compute.virtual_machine_scale_set_vms.list(GROUP, SET)), key=int)


@pytest.fixture(scope="module")
def compute(published: ServerProcess) -> ComputeManagementClient:
    return compute_client(published)


def test_create_group_and_five_instance_set(
    published: ServerProcess, compute: ComputeManagementClient
) -> None:
    resources = resource_client(published)
    group = resources.resource_groups.create_or_update(GROUP, {"location": "eastus"})
    assert group.name == GROUP and group.location == "eastus"

    created = compute.virtual_machine_scale_sets.begin_create_or_update(
        GROUP, SET, scale_set_body(5)
    ).result()

    assert created.provisioning_state == "Succeeded"
    assert created.sku.capacity == 5
    image = created.virtual_machine_profile.storage_profile.image_reference
    assert (image.version, image.exact_version) == ("1.0.0", "1.0.0")


def test_list_instances_with_instance_views_across_pages(compute: ComputeManagementClient) -> None:
    # The server pages at 4 here, so five instances come in two pages joined through nextLink.
    vms = list(compute.virtual_machine_scale_set_vms.list(GROUP, SET, expand="instanceView"))

    assert sorted(vm.instance_id for vm in vms) == ["0", "1", "2", "3", "4"]
    for vm in vms:
        codes = [status.code for status in vm.instance_view.statuses]
        assert codes == ["ProvisioningState/succeeded", "PowerState/running"]
        assert vm.latest_model_applied is True
        assert 0 <= vm.instance_view.platform_update_domain < 5
        assert 0 <= vm.instance_view.platform_fault_domain < 5
    # Spread over the three zones, as Azure balances a zonal set.
    assert sorted(vm.zones[0] for vm in vms) == ["1", "1", "2", "2", "3"]
    one = compute.virtual_machine_scale_set_vms.get_instance_view(GROUP, SET, "3")
    assert [s.code for s in one.statuses][1] == "PowerState/running"


def test_each_instance_answers_on_its_own_address(published: ServerProcess) -> None:
    found = addresses(published)

    assert len(set(found.values())) == 5
    for instance_id, address in found.items():
        answer = wait_for_app(address).json()
        assert answer["instance"] == instance_id
        assert answer["address"] == address


def test_scale_out_to_eight_then_in_to_three(compute: ComputeManagementClient) -> None:
    sets = compute.virtual_machine_scale_sets
    sets.begin_update(GROUP, SET, {"sku": {"capacity": 8}}).result()
    assert instance_ids(compute) == [str(i) for i in range(8)]

    sets.begin_update(GROUP, SET, {"sku": {"capacity": 3}}).result()

    # Scale-in removes the highest instance IDs.
    assert instance_ids(compute) == ["0", "1", "2"]
    assert sets.get(GROUP, SET).sku.capacity == 3


def test_reimage_keeps_data_disk_and_renews_os_disk(
    published: ServerProcess, compute: ComputeManagementClient
) -> None:
    address = addresses(published)["1"]
    wait_for_app(address)
    assert httpx.put(f"http://{address}:8080/files/data/0/keep.txt", content=b"data").status_code in (
        200,
        201,
        204,
    )
    assert httpx.put(f"http://{address}:8080/files/os/gone.txt", content=b"os").status_code in (200, 201, 204)

    compute.virtual_machine_scale_sets.begin_reimage(GROUP, SET, {"instanceIds": ["1"]}).result()

    assert wait_for_app(address, "/files/data/0/keep.txt").content == b"data"
    assert wait_for_app(address, "/files/os/gone.txt").status_code == 404
    disk = compute.virtual_machine_scale_set_vms.get(GROUP, SET, "1").storage_profile.os_disk
    assert disk.name.endswith("_OsDisk_2")


def test_power_actions_show_in_the_instance_view(compute: ComputeManagementClient) -> None:
    vms = compute.virtual_machine_scale_set_vms
    compute.virtual_machine_scale_sets.begin_power_off(GROUP, SET, {"instanceIds": ["2"]}).result()
    assert vms.get_instance_view(GROUP, SET, "2").statuses[1].code == "PowerState/stopped"

    vms.begin_start(GROUP, SET, "2").result()
    assert vms.get_instance_view(GROUP, SET, "2").statuses[1].code == "PowerState/running"


def test_protected_instance_survives_scale_in(compute: ComputeManagementClient) -> None:
    vms = compute.virtual_machine_scale_set_vms
    vm = vms.get(GROUP, SET, "2")
    vms.begin_update(
        GROUP,
        SET,
        "2",
        {"location": vm.location, "properties": {"protectionPolicy": {"protectFromScaleIn": True}}},
    ).result()

    compute.virtual_machine_scale_sets.begin_update(GROUP, SET, {"sku": {"capacity": 2}}).result()

    assert instance_ids(compute) == ["0", "2"]
    compute.virtual_machine_scale_sets.begin_update(GROUP, SET, {"sku": {"capacity": 3}}).result()
    # Instance IDs are never reused: the new one is 8, after 0…7.
    assert instance_ids(compute) == ["0", "2", "8"]


def test_model_change_marks_instances_not_latest(compute: ComputeManagementClient) -> None:
    sets = compute.virtual_machine_scale_sets
    sets.begin_update(
        GROUP,
        SET,
        {
            "properties": {
                "virtualMachineProfile": {"storageProfile": {"imageReference": {"version": "1.1.0"}}}
            }
        },
    ).result()

    stale = list(
        compute.virtual_machine_scale_set_vms.list(
            GROUP, SET, filter="properties/latestModelApplied eq false"
        )
    )

    # Manual mode: nothing happens to existing instances until they are upgraded (M-3, M-4).
    assert sorted(vm.instance_id for vm in stale) == ["0", "2", "8"]
    sets.begin_update(GROUP, SET, {"sku": {"capacity": 4}}).result()
    fresh = compute.virtual_machine_scale_set_vms.get(GROUP, SET, "9")
    assert fresh.latest_model_applied is True
    assert fresh.storage_profile.image_reference.exact_version == "1.1.0"


def test_lists_by_group_subscription_and_location(compute: ComputeManagementClient) -> None:
    sets = compute.virtual_machine_scale_sets
    assert [s.name for s in sets.list(GROUP)] == [SET]
    assert SET in [s.name for s in sets.list_all()]
    assert SET in [s.name for s in sets.list_by_location("eastus")]
    assert [s.name for s in sets.list_by_location("westeurope")] == []


def test_set_instance_view_summarises_states(compute: ComputeManagementClient) -> None:
    view = compute.virtual_machine_scale_sets.get_instance_view(GROUP, SET)
    counts = {s.code: s.count for s in view.virtual_machine.statuses_summary}
    assert counts == {"PowerState/running": 4, "ProvisioningState/succeeded": 4}


def test_deallocate_and_delete_instances(compute: ComputeManagementClient) -> None:
    sets, vms = compute.virtual_machine_scale_sets, compute.virtual_machine_scale_set_vms
    sets.begin_deallocate(GROUP, SET, {"instanceIds": ["9"]}).result()
    assert vms.get_instance_view(GROUP, SET, "9").statuses[1].code == "PowerState/deallocated"

    sets.begin_delete_instances(GROUP, SET, {"instanceIds": ["9"]}).result()
    vms.begin_delete(GROUP, SET, "8").result()

    assert instance_ids(compute) == ["0", "2"]
    # Deleted instances lower the capacity, as on Azure, so the next PUT does not bring them back.
    assert sets.get(GROUP, SET).sku.capacity == 2
    with pytest.raises(ResourceNotFoundError):
        vms.get(GROUP, SET, "9")


def test_manual_upgrade_applies_the_latest_model(
    published: ServerProcess, compute: ComputeManagementClient
) -> None:
    """M-3: GET the model, change the version, PUT/PATCH it, then manualupgrade with '*'."""
    address = addresses(published)["0"]
    wait_for_app(address)
    assert httpx.put(f"http://{address}:8080/files/data/0/kept.txt", content=b"kept").status_code < 300

    compute.virtual_machine_scale_sets.begin_update_instances(GROUP, SET, {"instanceIds": ["*"]}).result()

    vms = list(compute.virtual_machine_scale_set_vms.list(GROUP, SET))
    assert all(vm.latest_model_applied for vm in vms)
    assert {vm.storage_profile.image_reference.exact_version for vm in vms} == {"1.1.0"}
    assert wait_for_app(address).json()["version"] == "1.1.0"
    assert wait_for_app(address, "/files/data/0/kept.txt").content == b"kept"


def test_restart_of_the_server_readopts_the_same_instances(
    published: ServerProcess, compute: ComputeManagementClient
) -> None:
    before = {vm.instance_id: vm.vm_id for vm in compute.virtual_machine_scale_set_vms.list(GROUP, SET)}
    found = addresses(published)
    app_pids = {wait_for_app(a).json()["instance"]: _listener_pid(a) for a in found.values()}

    published.stop()
    published.start()

    after = {vm.instance_id: vm.vm_id for vm in compute.virtual_machine_scale_set_vms.list(GROUP, SET)}
    assert after == before
    for vm in compute.virtual_machine_scale_set_vms.list(GROUP, SET, expand="instanceView"):
        assert vm.instance_view.statuses[1].code == "PowerState/running"
    # The very same processes still serve: re-adopted, not restarted.
    assert {wait_for_app(a).json()["instance"]: _listener_pid(a) for a in found.values()} == app_pids


def _listener_pid(address: str) -> int | None:
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.ip == address:
            return connection.pid
    return None


def test_deleting_the_group_leaves_no_process_or_directory(
    published: ServerProcess, compute: ComputeManagementClient
) -> None:
    resources = resource_client(published)

    resources.resource_groups.begin_delete(GROUP).result()

    with pytest.raises(ResourceNotFoundError):
        compute.virtual_machine_scale_sets.get(GROUP, SET)
    instances_root = published.data_dir / "instances"
    assert not instances_root.exists() or list(instances_root.iterdir()) == []
    assert processes_under(instances_root) == []


def test_sdk_sees_arm_errors(compute: ComputeManagementClient) -> None:
    with pytest.raises(ResourceNotFoundError) as missing:
        compute.virtual_machine_scale_sets.get("no-such-group", "x")
    assert missing.value.error.code == "ResourceGroupNotFound"

    with pytest.raises(HttpResponseError) as bad:
        compute.virtual_machine_scale_sets.begin_create_or_update("no-such-group", "x", scale_set_body(1))
    assert bad.value.status_code == 404
