"""Standalone VMs in an availability set, end to end on real local instances, driven by the real SDK:
create, instance view with update/fault domains, restart, reimage keeping data disks, an extension
through the guest agent, bad input refused without a trace, and delete leaving no process."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient

from tests.e2e.conftest import resource_client, serve_module
from tests.support import (
    REPO,
    ServerProcess,
    app_request,
    custom_script_writing,
    eventually,
    processes_under,
    set_path,
)
from tests.support import vm_body as support_vm_body

pytestmark = pytest.mark.e2e
GROUP = "rg-vms"
AVAILABILITY_SET = "web-as"
VMS = ("web0", "web1", "web2")
SCRIPT = custom_script_writing("vm-ok")


def availability_set_id(server: ServerProcess, name: str = AVAILABILITY_SET) -> str:
    return (
        f"/subscriptions/{server.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
        f"availabilitySets/{name}"
    )


def vm_body(name: str, availability_set: str | None = None, **properties: Any) -> dict[str, Any]:
    return support_vm_body(name, availability_set, data_disk=True, **properties)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    yield from serve_module("scaleset-vms-", GROUP, webapp_versions=("1.0.0",))


def address_of(server: ServerProcess, vm: str) -> str:
    with server.client() as client:
        nic = client.get(
            f"/subscriptions/{server.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Network/"
            f"networkInterfaces/{vm}-nic",
            params={"api-version": "2024-05-01"},
        )
    assert nic.status_code == 200, nic.text
    return str(nic.json()["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"])


def test_availability_set_create_get_list(compute: ComputeManagementClient) -> None:
    sets = compute.availability_sets

    created = sets.create_or_update(
        GROUP,
        AVAILABILITY_SET,
        {"location": "eastus", "sku": {"name": "Aligned"}, "properties": {"platformUpdateDomainCount": 3}},
    )

    assert created.platform_update_domain_count == 3
    assert created.platform_fault_domain_count == 2  # Azure's default
    assert sets.get(GROUP, AVAILABILITY_SET).sku.name == "Aligned"
    assert [s.name for s in sets.list(GROUP)] == [AVAILABILITY_SET]
    assert [s.name for s in sets.list_by_subscription()] == [AVAILABILITY_SET]


def test_availability_set_refuses_bad_counts(compute: ComputeManagementClient) -> None:
    sets = compute.availability_sets
    with pytest.raises(HttpResponseError) as too_many:
        sets.create_or_update(
            GROUP, "bad", {"location": "eastus", "properties": {"platformFaultDomainCount": 4}}
        )
    assert too_many.value.status_code == 400
    assert too_many.value.error.target == "properties.platformFaultDomainCount"
    with pytest.raises(ResourceNotFoundError):
        sets.get(GROUP, "bad")

    with pytest.raises(HttpResponseError) as change:
        sets.create_or_update(
            GROUP, AVAILABILITY_SET, {"location": "eastus", "properties": {"platformUpdateDomainCount": 5}}
        )
    assert change.value.status_code == 409
    assert sets.get(GROUP, AVAILABILITY_SET).platform_update_domain_count == 3


def test_vms_in_the_set_get_round_robin_domains(
    server: ServerProcess, compute: ComputeManagementClient
) -> None:
    pollers = [
        compute.virtual_machines.begin_create_or_update(
            GROUP, name, vm_body(name, availability_set_id(server))
        )
        for name in VMS
    ]
    created = [poller.result() for poller in pollers]

    assert [vm.provisioning_state for vm in created] == ["Succeeded"] * 3
    domains = []
    for name in VMS:
        vm = compute.virtual_machines.get(GROUP, name, expand="instanceView")
        assert vm.availability_set.id.lower() == availability_set_id(server).lower()
        assert vm.instance_view.computer_name == name
        assert [s.code for s in vm.instance_view.statuses] == [
            "ProvisioningState/succeeded",
            "PowerState/running",
        ]
        domains.append((vm.instance_view.platform_update_domain, vm.instance_view.platform_fault_domain))
    # Three update domains, two fault domains: round-robin over both.
    assert sorted(domains) == [(0, 0), (1, 1), (2, 0)]
    members = compute.availability_sets.get(GROUP, AVAILABILITY_SET).virtual_machines
    assert sorted(m.id.rsplit("/", 1)[1] for m in members) == list(VMS)
    assert sorted(vm.name for vm in compute.virtual_machines.list(GROUP)) == list(VMS)
    for name in VMS:
        assert app_request(address_of(server, name), "/").status_code == 200


def test_restart_and_power_off(compute: ComputeManagementClient) -> None:
    vms = compute.virtual_machines
    vms.begin_restart(GROUP, "web1").result()
    assert vms.instance_view(GROUP, "web1").statuses[1].code == "PowerState/running"

    vms.begin_power_off(GROUP, "web1").result()
    assert vms.instance_view(GROUP, "web1").statuses[1].code == "PowerState/stopped"

    vms.begin_start(GROUP, "web1").result()
    assert vms.instance_view(GROUP, "web1").statuses[1].code == "PowerState/running"


def test_the_hidden_set_behind_a_vm_is_not_a_scale_set(server: ServerProcess) -> None:
    """A VM's backing set (`_vm.<uid>`) cannot be listed, read, upgraded or deleted through the scale-set
    API: a client that learns its name (from /metrics, say) gets 404."""
    with sqlite3.connect(f"file:{server.data_dir / 'scaleset.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT name FROM scale_sets WHERE name LIKE '!_vm.%' ESCAPE '!'")
        hidden = [name for (name,) in rows]
    assert hidden, "no VM's backing set in the database"
    params = {"api-version": "2024-07-01"}
    with server.client() as client:
        listed = client.get(set_path(server, GROUP, "x").rsplit("/", 1)[0], params=params)
        assert listed.status_code == 200
        assert not [s for s in listed.json()["value"] if s["name"] in hidden]
        for method, parts in (
            ("GET", ()),
            ("DELETE", ()),
            ("POST", ("osRollingUpgrade",)),
            ("GET", ("virtualMachines",)),
        ):
            answer = client.request(method, set_path(server, GROUP, hidden[0], *parts), params=params)
            assert answer.status_code == 404, (method, parts, answer.text)
            assert answer.json()["error"]["code"] == "ResourceNotFound"


def test_reimage_keeps_the_data_disk(server: ServerProcess, compute: ComputeManagementClient) -> None:
    address = address_of(server, "web0")
    assert app_request(address, "/files/data/0/keep.txt", "PUT", b"data").status_code in (200, 201, 204)
    assert app_request(address, "/files/os/gone.txt", "PUT", b"os").status_code in (200, 201, 204)

    compute.virtual_machines.begin_reimage(GROUP, "web0").result()

    assert app_request(address, "/files/data/0/keep.txt").content == b"data"
    assert app_request(address, "/files/os/gone.txt").status_code == 404
    assert compute.virtual_machines.get(GROUP, "web0").storage_profile.os_disk.name == "web0_OsDisk_2"


def test_extension_set_runs_through_the_guest_agent(
    server: ServerProcess, compute: ComputeManagementClient
) -> None:
    extensions = compute.virtual_machine_extensions

    result = extensions.begin_create_or_update(
        GROUP, "web2", "script", {"location": "eastus", "properties": SCRIPT}
    ).result()

    assert result.provisioning_state == "Succeeded"
    assert result.protected_settings is None  # never shown again
    assert app_request(address_of(server, "web2"), "/files/os/cse.txt").text == "vm-ok\n"
    view = compute.virtual_machines.instance_view(GROUP, "web2")
    assert {e.name: e.statuses[0].code for e in view.extensions} == {"script": "ProvisioningState/succeeded"}
    assert [e.name for e in extensions.list(GROUP, "web2").value] == ["script"]
    assert compute.virtual_machines.get(GROUP, "web2").resources[0].name == "script"


def test_patch_changes_tags_without_touching_the_instance(compute: ComputeManagementClient) -> None:
    before = compute.virtual_machines.get(GROUP, "web1", expand="instanceView")

    updated = compute.virtual_machines.begin_update(GROUP, "web1", {"tags": {"tier": "web"}}).result()

    assert updated.tags == {"tier": "web"}
    after = compute.virtual_machines.get(GROUP, "web1", expand="instanceView")
    assert after.storage_profile.os_disk.name == before.storage_profile.os_disk.name
    assert after.availability_set.id == before.availability_set.id


def test_bad_input_changes_nothing(server: ServerProcess, compute: ComputeManagementClient) -> None:
    vms = compute.virtual_machines
    with pytest.raises(HttpResponseError) as missing:
        vms.begin_create_or_update(GROUP, "lost", vm_body("lost", availability_set_id(server, "nope")))
    assert missing.value.status_code == 404
    with pytest.raises(HttpResponseError) as zoned:
        vms.begin_create_or_update(
            GROUP, "zoned", {**vm_body("zoned", availability_set_id(server)), "zones": ["1"]}
        )
    assert zoned.value.status_code == 400
    with pytest.raises(HttpResponseError) as disk:
        body = vm_body("disk")
        body["properties"]["storageProfile"]["dataDisks"] = [{"lun": 99, "createOption": "Empty"}]
        vms.begin_create_or_update(GROUP, "disk", body)
    assert disk.value.status_code == 400
    assert disk.value.error.target == "properties.storageProfile.dataDisks[0].lun"
    compute.availability_sets.create_or_update(GROUP, "other", {"location": "eastus"})
    with pytest.raises(HttpResponseError) as moved:
        vms.begin_create_or_update(GROUP, "web0", vm_body("web0", availability_set_id(server, "other")))
    assert moved.value.status_code == 409
    assert moved.value.error.code == "PropertyChangeNotAllowed"
    compute.availability_sets.delete(GROUP, "other")
    with pytest.raises(HttpResponseError) as in_use:
        compute.availability_sets.delete(GROUP, AVAILABILITY_SET)
    assert in_use.value.status_code == 409

    with pytest.raises(HttpResponseError) as unknown_version:
        compute.virtual_machine_extensions.begin_create_or_update(
            GROUP,
            "web1",
            "script",
            {"location": "eastus", "properties": {**SCRIPT, "typeHandlerVersion": "9.9"}},
        )
    assert (unknown_version.value.status_code, unknown_version.value.error.target) == (
        400,
        "properties.typeHandlerVersion",
    )
    assert compute.virtual_machine_extensions.list(GROUP, "web1").value == []

    assert sorted(vm.name for vm in vms.list(GROUP)) == list(VMS)
    for name in ("lost", "zoned", "disk"):
        with pytest.raises(ResourceNotFoundError):
            vms.get(GROUP, name)


def test_delete_leaves_no_process(server: ServerProcess, compute: ComputeManagementClient) -> None:
    pollers = [compute.virtual_machines.begin_delete(GROUP, name) for name in VMS]
    for poller in pollers:
        poller.result()

    for name in VMS:
        with pytest.raises(ResourceNotFoundError):
            compute.virtual_machines.get(GROUP, name)
    instances = server.data_dir / "instances"
    eventually(
        lambda: not instances.exists() or not list(instances.iterdir()), what="instance folders removed"
    )
    assert processes_under(instances) == []
    compute.availability_sets.delete(GROUP, AVAILABILITY_SET)
    assert list(compute.availability_sets.list(GROUP)) == []


def test_deleting_the_group_takes_its_vms_and_availability_sets(
    server: ServerProcess, compute: ComputeManagementClient
) -> None:
    group = "rg-vms-gone"
    resources = resource_client(server)
    resources.resource_groups.create_or_update(group, {"location": "eastus"})
    compute.availability_sets.create_or_update(group, "as", {"location": "eastus"})
    set_id = availability_set_id(server, "as").replace(GROUP, group)
    compute.virtual_machines.begin_create_or_update(group, "solo", vm_body("solo", set_id)).result()

    resources.resource_groups.begin_delete(group).result()

    with pytest.raises(ResourceNotFoundError):
        compute.virtual_machines.get(group, "solo")
    assert [vm.name for vm in compute.virtual_machines.list_all()] == []
    assert [s.name for s in compute.availability_sets.list_by_subscription()] == []
    assert processes_under(server.data_dir / "instances") == []


def test_docs_example_runs_as_written(server: ServerProcess) -> None:
    (example,) = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "virtual-machines.md").read_text(), re.S)

    result = subprocess.run(
        [sys.executable, "-c", example], env=server.env, capture_output=True, text=True, timeout=300, cwd=REPO
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "web0 Succeeded 0 0 PowerState/running",
        "web1 Succeeded 1 1 PowerState/running",
        "web2 Succeeded 2 0 PowerState/running",
        "extension Succeeded",
    ]


def scaleset_cli(server: ServerProcess, *args: str) -> Any:
    """`scaleset <args> -o json` in a subprocess; the VM commands register when their module is imported
    (cli/main.py imports it; importing it here too keeps this test independent of that line)."""
    code = "import sys, scaleset.cli.commands_vm; from scaleset.cli.main import main; main(sys.argv[1:])"
    result = subprocess.run(
        [sys.executable, "-c", code, *args, "-o", "json"],
        env={**server.env, "SCALESET_SUBSCRIPTION": server.subscription},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return json.loads(result.stdout) if result.stdout.strip() else None


def test_cli_commands(server: ServerProcess) -> None:
    group = "rg-vm-cli"
    scaleset_cli(server, "group", "create", "-n", group, "-l", "eastus")
    created_set = scaleset_cli(
        server,
        "vm",
        "availability-set",
        "create",
        "-g",
        group,
        "-n",
        "cli-set",
        "--platform-update-domain-count",
        "2",
    )
    assert created_set["properties"]["platformUpdateDomainCount"] == 2
    for name in ("cli0", "cli1"):
        vm = scaleset_cli(
            server,
            "vm",
            "create",
            "-g",
            group,
            "-n",
            name,
            "--image",
            "scaleset:webapp:stable:latest",
            "--availability-set",
            "cli-set",
            "--data-disk-sizes-gb",
            "1",
        )
        assert vm["properties"]["provisioningState"] == "Succeeded"

    shown = scaleset_cli(server, "vm", "show", "-g", group, "-n", "cli1", "--instance-view")
    assert shown["properties"]["instanceView"]["platformUpdateDomain"] == 1
    extension = scaleset_cli(
        server,
        "vm",
        "extension",
        "set",
        "-g",
        group,
        "--vm-name",
        "cli0",
        "-n",
        "CustomScript",
        "--publisher",
        "Microsoft.Azure.Extensions",
        "--version",
        "2.1",
        "--settings",
        '{"commandToExecute": "echo hi"}',
    )
    assert extension["properties"]["provisioningState"] == "Succeeded"
    assert scaleset_cli(
        server, "vm", "extension", "show", "-g", group, "--vm-name", "cli0", "-n", "CustomScript"
    )
    for verb in ("stop", "start", "restart", "reimage"):
        scaleset_cli(server, "vm", verb, "-g", group, "-n", "cli1")
    assert sorted(vm["name"] for vm in scaleset_cli(server, "vm", "list", "-g", group)) == ["cli0", "cli1"]
    scaleset_cli(server, "vm", "extension", "delete", "-g", group, "--vm-name", "cli0", "-n", "CustomScript")
    for name in ("cli0", "cli1"):
        scaleset_cli(server, "vm", "delete", "-g", group, "-n", name, "--yes")
    scaleset_cli(server, "vm", "availability-set", "delete", "-g", group, "-n", "cli-set")
    assert scaleset_cli(server, "vm", "availability-set", "list", "-g", group) == []


def test_a_vm_accepted_before_a_crash_is_made_after_the_restart(
    server: ServerProcess, compute: ComputeManagementClient
) -> None:
    path = (
        f"/subscriptions/{server.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
        "virtualMachines/crashy"
    )
    with server.client() as client:
        accepted = client.put(path, params={"api-version": "2026-04-01"}, json=vm_body("crashy"))
    assert accepted.status_code == 201, accepted.text

    server.kill()  # the intent was committed with the 201; the engine may not have acted yet
    server.start()

    eventually(
        lambda: compute.virtual_machines.get(GROUP, "crashy").provisioning_state == "Succeeded",
        timeout=60,
        what="the VM made after the restart",
    )
    assert app_request(address_of(server, "crashy"), "/").status_code == 200
    compute.virtual_machines.begin_delete(GROUP, "crashy").result()
    with pytest.raises(ResourceNotFoundError):
        compute.virtual_machines.get(GROUP, "crashy")
