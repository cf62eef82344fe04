"""Issue 3 end to end on real local instances, driven with the real SDK: custom data (once per OS disk),
extensions through the guest agent with protected settings, the Application Health extension turned into
each instance's vmHealth, and a failing extension failing provisioning (M-9, M-11, M-13, M-24)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute import ComputeManagementClient

from tests.e2e.conftest import resource_client, serve_module
from tests.support import ServerProcess, custom_script_writing, scale_set_body

pytestmark = pytest.mark.e2e
GROUP = "rg-guest"
CUSTOM_DATA = """#!/bin/sh
python3 - <<'PY'
import json, os, pathlib
files = pathlib.Path(json.loads(os.environ["SCALESET_DATA_DISKS"])["0"]) / "files"
files.mkdir(exist_ok=True)
with open(files / "custom-data-runs", "a") as log:
    log.write("run\\n")
PY
"""
HEALTH = {
    "publisher": "Microsoft.ManagedServices",
    "type": "ApplicationHealthLinux",
    "typeHandlerVersion": "2.0",
    "settings": {"protocol": "http", "port": 8080, "requestPath": "/health", "intervalInSeconds": 5},
}
SCRIPT = custom_script_writing("secret-ok")


def body(capacity: int, extensions: list[dict[str, Any]], custom_data: str | None = None) -> dict[str, Any]:
    return scale_set_body(capacity, extensions=extensions, custom_data=custom_data, computer_name_prefix="g")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # Application Health probes every 5 s on Azure; here a hundred times faster.
    yield from serve_module(
        "scaleset-guest-",
        GROUP,
        {"SCALESET_APPHEALTH_TIME_SCALE": "100"},
        webapp_versions=("1.0.0", "1.1.0"),
    )


def address_of(server: ServerProcess, name: str, instance_id: str) -> str:
    with server.client() as client:
        nics = client.get(
            f"/subscriptions/{server.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
            f"virtualMachineScaleSets/{name}/virtualMachines/{instance_id}/networkInterfaces",
            params={"api-version": "2026-04-01"},
        ).json()["value"]
    return str(nics[0]["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"])


def app(address: str, path: str, method: str = "GET", content: bytes | None = None) -> httpx.Response:
    deadline = time.monotonic() + 15
    while True:
        try:
            return httpx.request(method, f"http://{address}:8080{path}", content=content, timeout=5)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def eventually(check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_create_runs_custom_data_and_extensions(
    server: ServerProcess, compute: ComputeManagementClient
) -> None:
    extensions = [
        {"name": "health", "properties": HEALTH},
        {"name": "script", "properties": {**SCRIPT, "provisionAfterExtensions": ["health"]}},
    ]

    created = compute.virtual_machine_scale_sets.begin_create_or_update(
        GROUP, "good", body(2, extensions, CUSTOM_DATA)
    ).result()

    assert created.provisioning_state == "Succeeded"
    for instance_id in ("0", "1"):
        view = compute.virtual_machine_scale_set_vms.get_instance_view(GROUP, "good", instance_id)
        assert view.statuses[0].code == "ProvisioningState/succeeded"
        states = {e.name: e.statuses[0].code for e in view.extensions}
        assert states == {"health": "ProvisioningState/succeeded", "script": "ProvisioningState/succeeded"}
        address = address_of(server, "good", instance_id)
        # The command came in protected settings: the handler decrypted it with the instance's certificate.
        assert app(address, "/files/os/cse.txt").text == "secret-ok\n"
        assert app(address, "/files/data/0/custom-data-runs").text == "run\n"


def test_application_health_becomes_vm_health(
    server: ServerProcess, compute: ComputeManagementClient
) -> None:
    vms = compute.virtual_machine_scale_set_vms

    def health(instance_id: str) -> str:
        view = vms.get_instance_view(GROUP, "good", instance_id)
        return view.vm_health.status.code if view.vm_health else ""

    address = address_of(server, "good", "1")
    eventually(lambda: health("1") == "HealthState/healthy")
    # Rich states (extension-protocol.md §3): a 2xx saying Unhealthy is unhealthy; a non-2xx, a body
    # without the state, or no answer within the probe timeout is unknown.
    for mode, state in (
        ("unhealthy", "unhealthy"),
        ("healthy", "healthy"),
        ("down", "unknown"),
        ("healthy", "healthy"),
        ("wrong-body", "unknown"),
        ("healthy", "healthy"),
        ("slow", "unknown"),
        ("healthy", "healthy"),
    ):
        assert app(address, "/health/mode", "PUT", mode.encode()).status_code == 200
        eventually(lambda state=state: health("1") == f"HealthState/{state}")  # type: ignore[misc]
    assert health("0") == "HealthState/healthy"
    summary = compute.virtual_machine_scale_sets.get_instance_view(GROUP, "good").extensions
    assert {e.name: {s.code: s.count for s in e.statuses_summary} for e in summary} == {
        "health": {"ProvisioningState/succeeded": 2},
        "script": {"ProvisioningState/succeeded": 2},
    }


def test_per_instance_extension_views(compute: ComputeManagementClient) -> None:
    extensions = compute.virtual_machine_scale_set_vm_extensions
    listed = extensions.list(GROUP, "good", "0")
    one = extensions.get(GROUP, "good", "0", "script", expand="instanceView")

    assert sorted(e.name for e in listed.value) == ["health", "script"]
    assert {e.provisioning_state for e in listed.value} == {"Succeeded"}
    assert one.instance_view.statuses[0].code == "ProvisioningState/succeeded"
    assert one.protected_settings is None


def test_custom_data_runs_again_after_reimage_not_after_restart(
    server: ServerProcess, compute: ComputeManagementClient
) -> None:
    address = address_of(server, "good", "0")
    compute.virtual_machine_scale_set_vms.begin_restart(GROUP, "good", "0").result()
    assert app(address, "/files/data/0/custom-data-runs").text == "run\n"

    compute.virtual_machine_scale_sets.begin_reimage(GROUP, "good", {"instanceIds": ["0"]}).result()

    assert app(address, "/files/data/0/custom-data-runs").text == "run\nrun\n"
    # A fresh OS disk: the extensions ran again too (M-9).
    assert app(address, "/files/os/cse.txt").text == "secret-ok\n"
    view = compute.virtual_machine_scale_set_vms.get_instance_view(GROUP, "good", "0")
    assert view.statuses[0].code == "ProvisioningState/succeeded"


def test_a_failing_extension_fails_provisioning(compute: ComputeManagementClient) -> None:
    failing = {**SCRIPT, "protectedSettings": {"commandToExecute": "echo broken >&2; exit 3"}}

    with pytest.raises(HttpResponseError) as failed:
        compute.virtual_machine_scale_sets.begin_create_or_update(
            GROUP, "bad", body(1, [{"name": "script", "properties": failing}])
        ).result()

    assert "script" in str(failed.value)
    view = compute.virtual_machine_scale_set_vms.get_instance_view(GROUP, "bad", "0")
    assert view.statuses[0].code == "ProvisioningState/failed"
    assert "Extension 'script' failed" in view.statuses[0].message
    (script,) = view.extensions
    assert script.statuses[0].code.startswith("ProvisioningState/failed")


def test_a_failing_custom_data_script_fails_provisioning(compute: ComputeManagementClient) -> None:
    with pytest.raises(HttpResponseError):
        compute.virtual_machine_scale_sets.begin_create_or_update(
            GROUP, "badcd", body(1, [], "#!/bin/sh\necho no-such-thing >&2\nexit 4\n")
        ).result()

    view = compute.virtual_machine_scale_set_vms.get_instance_view(GROUP, "badcd", "0")
    assert view.statuses[0].code == "ProvisioningState/failed"
    assert "Custom data failed" in view.statuses[0].message
    assert "no-such-thing" in view.statuses[0].message
    # A VM whose cloud-init failed still boots: the instance runs.
    assert view.statuses[1].code == "PowerState/running"


def test_add_an_extension_to_a_running_set_and_apply_it(compute: ComputeManagementClient) -> None:
    compute.virtual_machine_scale_sets.begin_create_or_update(GROUP, "later", body(2, [])).result()
    compute.virtual_machine_scale_set_extensions.begin_create_or_update(
        GROUP, "later", "health", {"properties": HEALTH}
    ).result()
    assert not any(
        vm.latest_model_applied for vm in compute.virtual_machine_scale_set_vms.list(GROUP, "later")
    )

    compute.virtual_machine_scale_sets.begin_update_instances(GROUP, "later", {"instanceIds": ["*"]}).result()

    for vm in compute.virtual_machine_scale_set_vms.list(GROUP, "later", expand="instanceView"):
        assert vm.latest_model_applied
        assert [e.statuses[0].code for e in vm.instance_view.extensions] == ["ProvisioningState/succeeded"]
    eventually(
        lambda: all(
            (view := compute.virtual_machine_scale_set_vms.get_instance_view(GROUP, "later", i)).vm_health
            and view.vm_health.status.code == "HealthState/healthy"
            for i in ("0", "1")
        )
    )


def test_cleanup(server: ServerProcess) -> None:
    resource_client(server).resource_groups.begin_delete(GROUP).result()
