"""Bad input and authentication on the wire: ARM envelopes with the right status, code and target, and
nothing changed afterwards (issue 2 §1, §2, §6)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.resource.resources import ResourceManagementClient

from tests.e2e.conftest import StaticToken
from tests.support import REPO, ServerProcess, dispose, new_data_dir, scale_set_body

pytestmark = pytest.mark.e2e
API = {"api-version": "2026-04-01"}
GROUP = "rg-errors"


def set_path(server: ServerProcess, name: str, group: str = GROUP) -> str:
    return (
        f"/subscriptions/{server.subscription}/resourceGroups/{group}/providers/Microsoft.Compute/"
        f"virtualMachineScaleSets/{name}"
    )


def body(**changes: Any) -> dict[str, Any]:
    document = scale_set_body(1, data_disk=False)
    for path, value in changes.items():
        target = document
        keys = path.split("__")
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return document


@pytest.fixture(scope="module")
def client(published: ServerProcess) -> Iterator[httpx.Client]:
    with published.client() as http:
        assert http.put(
            f"/subscriptions/{published.subscription}/resourceGroups/{GROUP}",
            params=API,
            json={"location": "eastus"},
        ).status_code in (200, 201)
        yield http


def assert_error(response: httpx.Response, status: int, code: str, target: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if target is not None:
        assert error.get("target") == target, error


@pytest.mark.parametrize(
    ("changes", "code", "target"),
    [
        ({"sku__capacity": -1}, "InvalidParameter", "sku.capacity"),
        ({"sku__capacity": "three"}, "InvalidParameter", "sku.capacity"),
        ({"sku__capacity": True}, "InvalidParameter", "sku.capacity"),
        ({"location": "atlantis"}, "LocationNotAvailableForResourceType", "location"),
        ({"zones": ["1"], "location": "westus"}, "ZonesNotSupported", "zones"),
        ({"zones": ["4"]}, "InvalidParameter", "zones[0]"),
        (
            {"properties__upgradePolicy__mode": "Sometimes"},
            "InvalidParameter",
            "properties.upgradePolicy.mode",
        ),
        (
            {"properties__upgradePolicy__rollingUpgradePolicy": {"maxBatchInstancePercent": 200}},
            "InvalidParameter",
            "properties.upgradePolicy.rollingUpgradePolicy.maxBatchInstancePercent",
        ),
        (
            {"properties__upgradePolicy__rollingUpgradePolicy": {"maxUnhealthyInstancePercent": 4}},
            "InvalidParameter",
            "properties.upgradePolicy.rollingUpgradePolicy.maxUnhealthyInstancePercent",
        ),
        (
            {"properties__upgradePolicy__rollingUpgradePolicy": {"maxUnhealthyUpgradedInstancePercent": -1}},
            "InvalidParameter",
            "properties.upgradePolicy.rollingUpgradePolicy.maxUnhealthyUpgradedInstancePercent",
        ),
        (
            {"properties__upgradePolicy__rollingUpgradePolicy": {"pauseTimeBetweenBatches": "10 seconds"}},
            "InvalidParameter",
            "properties.upgradePolicy.rollingUpgradePolicy.pauseTimeBetweenBatches",
        ),
        (
            {"properties__automaticRepairsPolicy": {"enabled": True, "gracePeriod": "PT5M"}},
            "InvalidParameter",
            "properties.automaticRepairsPolicy.gracePeriod",
        ),
        ({"properties__upgradePolicy__mode": "Rolling"}, "InvalidParameter", "properties.upgradePolicy.mode"),
        (
            {"properties__upgradePolicy__automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}},
            "InvalidParameter",
            "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade",
        ),
        (
            {"properties__platformFaultDomainCount": 9},
            "InvalidParameter",
            "properties.platformFaultDomainCount",
        ),
        (
            {"properties__virtualMachineProfile__storageProfile__imageReference__version": "1.x"},
            "InvalidParameter",
            "properties.virtualMachineProfile.storageProfile.imageReference.version",
        ),
    ],
)
def test_bad_scale_set_bodies_are_refused_and_create_nothing(
    published: ServerProcess, client: httpx.Client, changes: dict[str, Any], code: str, target: str
) -> None:
    response = client.put(set_path(published, "bad"), params=API, json=body(**changes))

    assert_error(response, 400, code, target)
    assert_error(client.get(set_path(published, "bad"), params=API), 404, "ResourceNotFound")


def test_malformed_json_is_refused(published: ServerProcess, client: httpx.Client) -> None:
    response = client.put(
        set_path(published, "bad"),
        params=API,
        content=b'{"location": "eastus",',
        headers={"Content-Type": "application/json"},
    )

    assert_error(response, 400, "InvalidRequestContent")
    assert_error(client.get(set_path(published, "bad"), params=API), 404, "ResourceNotFound")


@pytest.mark.parametrize("version", ["9.9.9", "latest"])
def test_unknown_image_or_version_is_404(
    published: ServerProcess, client: httpx.Client, version: str
) -> None:
    offer = "webapp" if version != "latest" else "no-such-offer"
    changes = {
        "properties__virtualMachineProfile__storageProfile__imageReference": {
            "publisher": "scaleset",
            "offer": offer,
            "sku": "stable",
            "version": version,
        }
    }

    response = client.put(set_path(published, "bad"), params=API, json=body(**changes))

    assert_error(
        response,
        404,
        "PlatformImageNotFound",
        "properties.virtualMachineProfile.storageProfile.imageReference",
    )
    assert_error(client.get(set_path(published, "bad"), params=API), 404, "ResourceNotFound")


def test_bad_update_of_an_existing_set_changes_nothing(
    published: ServerProcess, client: httpx.Client
) -> None:
    path = set_path(published, "steady")
    created = client.put(path, params=API, json=body(sku__capacity=0))
    assert created.status_code == 201, created.text
    before = client.get(path, params=API).json()

    patch = client.patch(
        path,
        params=API,
        json={"properties": {"upgradePolicy": {"rollingUpgradePolicy": {"maxBatchInstancePercent": 101}}}},
    )
    put = client.put(path, params=API, json=body(sku__capacity=-1))
    moved = client.put(path, params=API, json=body(location="westeurope"))

    assert_error(
        patch,
        400,
        "InvalidParameter",
        "properties.upgradePolicy.rollingUpgradePolicy.maxBatchInstancePercent",
    )
    assert_error(put, 400, "InvalidParameter", "sku.capacity")
    assert_error(moved, 400, "PropertyChangeNotAllowed", "location")
    assert client.get(path, params=API).json() == before


def test_missing_group_and_unknown_paths(published: ServerProcess, client: httpx.Client) -> None:
    assert_error(
        client.put(set_path(published, "x", group="nowhere"), params=API, json=body()),
        404,
        "ResourceGroupNotFound",
    )
    assert_error(client.get(f"/subscriptions/{published.subscription}/whatever", params=API), 404, "NotFound")
    assert_error(client.post(set_path(published, "steady") + "/explode", params=API), 404, "NotFound")


def test_paths_ignore_case_but_names_keep_theirs(published: ServerProcess, client: httpx.Client) -> None:
    upper = (
        set_path(published, "steady")
        .replace("resourceGroups", "RESOURCEGROUPS")
        .replace("virtualMachineScaleSets", "VirtualMachineScaleSets")
    )
    response = client.get(upper.replace("/steady", "/STEADY"), params=API)

    assert response.status_code == 200
    assert response.json()["name"] == "steady"


def hostile_tarball(name: str, kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        manifest = json.dumps({"manifestVersion": 1, "osType": "Linux", "entrypoint": ["true"]}).encode()
        info = tarfile.TarInfo("scaleset-image.json")
        info.size = len(manifest)
        archive.addfile(info, io.BytesIO(manifest))
        member = tarfile.TarInfo(name)
        if kind == "symlink":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "device":
            member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
        else:
            member.size = 4
        archive.addfile(member, io.BytesIO(b"evil") if kind == "file" else None)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("member", "kind"),
    [("../escape.txt", "file"), ("/tmp/absolute.txt", "file"), ("passwd", "symlink"), ("null", "device")],
)
def test_hostile_image_artifacts_are_refused_and_leave_nothing(
    published: ServerProcess, client: httpx.Client, member: str, kind: str
) -> None:
    images_before = sorted(
        p.relative_to(published.data_dir) for p in (published.data_dir / "images").rglob("*")
    )

    response = client.post(
        "/scaleset/admin/images",
        content=hostile_tarball(member, kind),
        params={"location": "eastus", "publisher": "evil", "offer": "o", "sku": "s", "version": "1.0.0"},
        headers={"Content-Type": "application/gzip"},
    )

    assert_error(response, 400, "InvalidArtifact")
    assert member.strip("/").split("/")[-1] in response.json()["error"]["target"]
    images_after = sorted(
        p.relative_to(published.data_dir) for p in (published.data_dir / "images").rglob("*")
    )
    assert images_after == images_before
    versions = client.get(
        f"/subscriptions/{published.subscription}/providers/Microsoft.Compute/locations/eastus/"
        "publishers/evil/artifacttypes/vmimage/offers/o/skus/s/versions",
        params=API,
    )
    assert versions.json() == []
    assert list((published.data_dir / "uploads").iterdir()) == []


def test_image_catalog_read_side(published: ServerProcess, client: httpx.Client) -> None:
    base = f"/subscriptions/{published.subscription}/providers/Microsoft.Compute/locations/eastus/publishers"

    publishers = client.get(base, params=API).json()
    offers = client.get(f"{base}/scaleset/artifacttypes/vmimage/offers", params=API).json()
    versions = client.get(
        f"{base}/scaleset/artifacttypes/vmimage/offers/webapp/skus/stable/versions", params=API
    ).json()
    one = client.get(
        f"{base}/scaleset/artifacttypes/vmimage/offers/webapp/skus/stable/versions/1.1.0", params=API
    ).json()

    assert "scaleset" in [p["name"] for p in publishers]
    assert [o["name"] for o in offers] == ["webapp"]
    assert [v["name"] for v in versions] == ["1.0.0", "1.1.0"]
    assert one["properties"]["automaticOSUpgradeProperties"] == {"automaticOSUpgradeSupported": True}
    assert_error(
        client.get(
            f"{base}/scaleset/artifacttypes/vmimage/offers/webapp/skus/stable/versions/7.0.0", params=API
        ),
        404,
        "PlatformImageNotFound",
    )


def test_duplicate_image_version_is_a_conflict(published: ServerProcess) -> None:
    from tests.support import EXAMPLE_IMAGES

    response = published.publish(EXAMPLE_IMAGES / "webapp-1.0.0", version="1.0.0")

    assert_error(response, 409, "Conflict")


# ------------------------------------------------------------------------------------ authentication
def test_missing_or_wrong_token_is_401(published: ServerProcess) -> None:
    path = f"/subscriptions/{published.subscription}/resourcegroups"
    assert_error(httpx.get(published.endpoint + path, params=API), 401, "AuthenticationFailed")
    assert_error(
        httpx.get(published.endpoint + path, params=API, headers={"Authorization": "Bearer nope"}),
        401,
        "AuthenticationFailed",
    )


def test_roles_reader_contributor_admin(published: ServerProcess, client: httpx.Client) -> None:
    def token(role: str) -> str:
        made = client.post("/scaleset/admin/tokens", json={"role": role, "name": f"test {role}"})
        assert made.status_code == 201, made.text
        return str(made.json()["token"])

    reader, contributor = token("reader"), token("contributor")
    group = f"/subscriptions/{published.subscription}/resourceGroups/rg-roles"
    with published.client(reader) as as_reader, published.client(contributor) as as_contributor:
        assert (
            as_reader.get(f"/subscriptions/{published.subscription}/resourcegroups", params=API).status_code
            == 200
        )
        assert_error(
            as_reader.put(group, params=API, json={"location": "eastus"}), 403, "AuthorizationFailed"
        )
        assert_error(as_reader.get(group, params=API), 404, "ResourceGroupNotFound")
        assert as_contributor.put(group, params=API, json={"location": "eastus"}).status_code == 201
        assert_error(
            as_contributor.post("/scaleset/admin/tokens", json={"role": "admin"}), 403, "AuthorizationFailed"
        )
        assert as_contributor.delete(group, params=API).status_code in (200, 202)
    assert_error(
        client.post("/scaleset/admin/tokens", json={"role": "root"}), 400, "InvalidParameter", "role"
    )


def test_admin_token_file_is_private(published: ServerProcess) -> None:
    mode = stat.S_IMODE(os.stat(published.data_dir / "admin.token").st_mode)
    assert mode == 0o600


def test_reader_token_through_the_sdk_gets_403(published: ServerProcess, client: httpx.Client) -> None:
    from azure.core.exceptions import HttpResponseError

    from tests.e2e.conftest import compute_client

    reader = client.post("/scaleset/admin/tokens", json={"role": "reader"}).json()["token"]
    compute = compute_client(published, reader)
    assert [s.name for s in compute.virtual_machine_scale_sets.list(GROUP)] == ["steady"]
    with pytest.raises(HttpResponseError) as denied:
        compute.virtual_machine_scale_sets.begin_delete(GROUP, "steady").result()
    assert denied.value.status_code == 403
    assert denied.value.error.code == "AuthorizationFailed"


# ---------------------------------------------------------------------------------------------- TLS
def test_non_loopback_without_tls_is_refused(tmp_path: Any) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scaleset.cli.main",
            "serve",
            "--host",
            "0.0.0.0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "--tls" in result.stdout + result.stderr


def test_sdk_over_self_signed_tls_with_the_default_bearer_policy() -> None:
    server = ServerProcess(new_data_dir("scaleset-tls-"), tls=True).start()
    try:
        token = server.admin_token
        # Over https the SDK's own BearerTokenCredentialPolicy works; it only needs to trust the cert.
        resources = ResourceManagementClient(
            StaticToken(token),
            server.subscription,
            base_url=server.endpoint,
            connection_verify=str(server.ca_cert),
        )
        compute = ComputeManagementClient(
            StaticToken(token),
            server.subscription,
            base_url=server.endpoint,
            connection_verify=str(server.ca_cert),
        )
        resources.resource_groups.create_or_update("rg-tls", {"location": "westeurope"})
        assert [g.name for g in resources.resource_groups.list()] == ["rg-tls"]
        assert list(compute.virtual_machine_images.list_publishers("westeurope")) == []
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.endpoint}/scaleset/health")  # not trusted without the certificate
    finally:
        assert dispose(server) == []
