"""Issue 3 §3-4, control-plane side: the extension catalog (built-in packages published on first start,
`VirtualMachineExtensionImages`, publishing) and extensions in the scale-set model through the real SDK
(M-18, M-23, M-24)."""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient

from tests.e2e.conftest import compute_client, resource_client
from tests.support import ServerProcess

pytestmark = pytest.mark.e2e
API = {"api-version": "2026-04-01"}
GROUP, SET = "rg-ext", "web"
HEALTH = {
    "publisher": "Microsoft.ManagedServices",
    "type": "ApplicationHealthLinux",
    "typeHandlerVersion": "2.0",
    "settings": {"protocol": "http", "port": 8080, "requestPath": "/health"},
}


@pytest.fixture(scope="module")
def compute(published: ServerProcess) -> ComputeManagementClient:
    resource_client(published).resource_groups.create_or_update(GROUP, {"location": "eastus"})
    client = compute_client(published)
    client.virtual_machine_scale_sets.begin_create_or_update(
        GROUP,
        SET,
        {
            "location": "eastus",
            "sku": {"name": "Standard_B1s", "capacity": 0},
            "properties": {
                "upgradePolicy": {"mode": "Manual"},
                "virtualMachineProfile": {
                    "storageProfile": {
                        "imageReference": {
                            "publisher": "scaleset",
                            "offer": "webapp",
                            "sku": "stable",
                            "version": "latest",
                        }
                    }
                },
            },
        },
    ).result()
    return client


def test_builtin_handlers_are_published_on_first_start(compute: ComputeManagementClient) -> None:
    images = compute.virtual_machine_extension_images
    health = [
        v.name for v in images.list_versions("eastus", "Microsoft.ManagedServices", "ApplicationHealthLinux")
    ]
    script = [t.name for t in images.list_types("westeurope", "Microsoft.Azure.Extensions")]

    assert health == ["1.0.0", "2.0.0"]
    assert script == ["CustomScript"]
    one = images.get("eastus", "Microsoft.Azure.Extensions", "CustomScript", "2.1.0")
    assert one.operating_system == "Linux"


def handler_zip(manifest: Any) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("HandlerManifest.json", json.dumps(manifest))
        archive.writestr("bin/run.sh", "#!/bin/sh\nexit 0\n")
    return buffer.getvalue()


GOOD_MANIFEST = [
    {
        "name": "Probe",
        "version": 1.0,
        "handlerManifest": {
            "installCommand": "bin/run.sh install",
            "uninstallCommand": "bin/run.sh uninstall",
            "updateCommand": "bin/run.sh update",
            "enableCommand": "bin/run.sh enable",
            "disableCommand": "bin/run.sh disable",
        },
    }
]


def test_publish_an_extension_package(published: ServerProcess, compute: ComputeManagementClient) -> None:
    with published.client() as client:
        made = client.post(
            "/scaleset/admin/extensions",
            content=handler_zip(GOOD_MANIFEST),
            params={"publisher": "Contoso.Tools", "type": "Probe", "version": "1.0.0"},
            headers={"Content-Type": "application/zip"},
        )
        again = client.post(
            "/scaleset/admin/extensions",
            content=handler_zip(GOOD_MANIFEST),
            params={"publisher": "Contoso.Tools", "type": "Probe", "version": "1.0.0"},
            headers={"Content-Type": "application/zip"},
        )
        broken = client.post(
            "/scaleset/admin/extensions",
            content=handler_zip([{"handlerManifest": {}}]),
            params={"publisher": "Contoso.Tools", "type": "Probe", "version": "1.1.0"},
            headers={"Content-Type": "application/zip"},
        )

    assert made.status_code == 201, made.text
    assert again.status_code == 409
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "InvalidHandlerPackage"
    versions = compute.virtual_machine_extension_images.list_versions("eastus", "Contoso.Tools", "Probe")
    assert [v.name for v in versions] == ["1.0.0"]


def test_add_extensions_to_the_model_and_read_them_back(
    published: ServerProcess, compute: ComputeManagementClient
) -> None:
    extensions = compute.virtual_machine_scale_set_extensions
    secret = "s3cr3t-never-shown"
    extensions.begin_create_or_update(GROUP, SET, "health", {"properties": HEALTH}).result()
    extensions.begin_create_or_update(
        GROUP,
        SET,
        "script",
        {
            "properties": {
                "publisher": "Microsoft.Azure.Extensions",
                "type": "CustomScript",
                "typeHandlerVersion": "2.1",
                "settings": {},
                "protectedSettings": {"commandToExecute": f"echo {secret} > /dev/null"},
                "provisionAfterExtensions": ["health"],
            }
        },
    ).result()

    listed = {e.name: e for e in extensions.list(GROUP, SET)}
    assert set(listed) == {"health", "script"}
    assert listed["script"].provision_after_extensions == ["health"]
    assert listed["script"].protected_settings is None
    with published.client() as client:
        raw = client.get(
            f"/subscriptions/{published.subscription}/resourceGroups/{GROUP}/providers/"
            f"Microsoft.Compute/virtualMachineScaleSets/{SET}",
            params=API,
        ).text
    assert secret not in raw and "protectedSettings" not in raw
    # Sealed at rest: the database holds no plain copy of the secret.
    with sqlite3.connect(published.data_dir / "scaleset.db") as db:
        documents = " ".join(str(row) for row in db.execute("SELECT document FROM scale_sets"))
    assert secret not in documents


def test_model_changes_through_the_extension_api_are_model_versions(compute: ComputeManagementClient) -> None:
    sets = compute.virtual_machine_scale_sets
    sets.begin_update(GROUP, SET, {"sku": {"capacity": 1}}).result()
    assert compute.virtual_machine_scale_set_vms.get(GROUP, SET, "0").latest_model_applied is True

    compute.virtual_machine_scale_set_extensions.begin_update(
        GROUP, SET, "health", {"properties": {"settings": {**HEALTH["settings"], "intervalInSeconds": 10}}}
    ).result()

    assert compute.virtual_machine_scale_set_vms.get(GROUP, SET, "0").latest_model_applied is False
    health = compute.virtual_machine_scale_set_extensions.get(GROUP, SET, "health")
    assert health.settings["intervalInSeconds"] == 10
    assert health.properties.type == "ApplicationHealthLinux"


def test_a_put_without_protected_settings_keeps_them(
    published: ServerProcess, compute: ComputeManagementClient
) -> None:
    """`az vmss extension set` GETs the set (no protectedSettings) and PUTs it back whole."""
    with published.client() as client:
        path = (
            f"/subscriptions/{published.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
            f"virtualMachineScaleSets/{SET}"
        )
        document = client.get(path, params=API).json()
        assert client.put(path, params=API, json=document).status_code == 200
    with sqlite3.connect(published.data_dir / "scaleset.db") as db:
        (stored,) = db.execute("SELECT document FROM scale_sets WHERE name = ?", (SET,)).fetchone()
    script = next(
        e
        for e in json.loads(stored)["properties"]["virtualMachineProfile"]["extensionProfile"]["extensions"]
        if e["name"] == "script"
    )
    assert "protectedSettingsSealed" in script["properties"]


PROBE = {"publisher": "Contoso.Tools", "type": "Probe", "typeHandlerVersion": "1.0", "settings": {}}


@pytest.mark.parametrize(
    ("properties", "target_end"),
    [
        ({**PROBE, "typeHandlerVersion": "2"}, "typeHandlerVersion"),
        ({**PROBE, "typeHandlerVersion": "7.0"}, "typeHandlerVersion"),
        ({**PROBE, "type": "NoSuchThing"}, "typeHandlerVersion"),
        ({**PROBE, "provisionAfterExtensions": ["ghost"]}, "provisionAfterExtensions"),
        ({**PROBE, "settings": "not an object"}, "settings"),
        (HEALTH, "type"),  # a second Application Health extension: one per handler, as on Azure
    ],
)
def test_bad_extensions_are_refused_and_change_nothing(
    published: ServerProcess, compute: ComputeManagementClient, properties: dict[str, Any], target_end: str
) -> None:
    before = compute.virtual_machine_scale_sets.get(GROUP, SET).as_dict()
    with pytest.raises(HttpResponseError) as refused:
        compute.virtual_machine_scale_set_extensions.begin_create_or_update(
            GROUP, SET, "bad", {"properties": properties}
        ).result()
    assert refused.value.status_code == 400
    assert refused.value.error.code == "InvalidParameter"
    assert refused.value.error.target.endswith(target_end)
    assert compute.virtual_machine_scale_sets.get(GROUP, SET).as_dict() == before


def test_a_provision_after_cycle_is_refused(published: ServerProcess) -> None:
    with published.client() as client:
        path = (
            f"/subscriptions/{published.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
            f"virtualMachineScaleSets/{SET}/extensions/health"
        )
        response = client.patch(
            path, params=API, json={"properties": {"provisionAfterExtensions": ["script"]}}
        )
    assert response.status_code == 400
    assert "cycle" in response.json()["error"]["message"]


def test_rolling_mode_is_accepted_once_application_health_is_in_the_model(
    compute: ComputeManagementClient,
) -> None:
    updated = compute.virtual_machine_scale_sets.begin_update(
        GROUP, SET, {"properties": {"upgradePolicy": {"mode": "Rolling"}}}
    ).result()
    assert updated.upgrade_policy.mode == "Rolling"


def test_delete_an_extension(compute: ComputeManagementClient) -> None:
    extensions = compute.virtual_machine_scale_set_extensions
    extensions.begin_delete(GROUP, SET, "script").result()
    assert [e.name for e in extensions.list(GROUP, SET)] == ["health"]
    with pytest.raises(ResourceNotFoundError):
        extensions.get(GROUP, SET, "script")


def test_cleanup(published: ServerProcess) -> None:
    resource_client(published).resource_groups.begin_delete(GROUP).result()
    with published.client() as client:
        assert (
            client.get(
                f"/subscriptions/{published.subscription}/resourceGroups/{GROUP}", params=API
            ).status_code
            == 404
        )
