"""Azure Compute Gallery images end to end: the real azure-mgmt-compute SDK and the `scaleset sig` CLI against
one `scaleset serve`, real local instances (issue 5 §1; M-2, M-8, M-12, M-14; azure-api.md §2.2, §2.7;
docs/galleries.md).

1. a gallery and an image definition made with the SDK; two versions published with the CLI, listed with
   the SDK; a version PUT as JSON, a republished version and bad bodies refused in ARM's shape;
2. a set from the id without a version runs the newest version, one with `/versions/1.0.0` runs that one;
   a version published `--exclude-from-latest` is not what a new set on latest gets;
3. a set on the id without a version with automatic OS upgrade on: publishing a newer version starts a
   Platform run that completes, and `get_os_upgrade_history` names the gallery id with the version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient

from tests.e2e.conftest import made_in, serve_module
from tests.support import (
    EXAMPLE_IMAGES,
    ServerProcess,
    eventually,
    guest_speed,
    put_health_probe,
    run_cli,
    scale_set_body,
)

pytestmark = pytest.mark.e2e
GROUP = "rg-gallery"
GALLERY = "gal"
DEFINITION = "webapp"
Json = dict[str, Any]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    environment = {**guest_speed(), "SCALESET_PLATFORM_SWEEP_SECONDS": "1"}
    yield from serve_module("scaleset-galleries-", GROUP, environment, extra_args=("--log-level", "info"))


def image_id(server: ServerProcess, version: str | None = None) -> str:
    base = (
        f"/subscriptions/{server.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
        f"galleries/{GALLERY}/images/{DEFINITION}"
    )
    return base if version is None else f"{base}/versions/{version}"


def cli_publish(server: ServerProcess, example: str, version: str, *extra: str) -> Json:
    result = run_cli(
        server,
        "-o",
        "json",
        "sig",
        "image-version",
        "create",
        "-g",
        GROUP,
        "--gallery-name",
        GALLERY,
        "--gallery-image-definition",
        DEFINITION,
        "--gallery-image-version",
        version,
        "--artifact",
        str(EXAMPLE_IMAGES / example),
        *extra,
    )
    assert result.returncode == 0, result.stderr
    published: Json = json.loads(result.stdout)
    return published


def gallery_set(server: ServerProcess, capacity: int, version: str | None = None, **properties: Any) -> Json:
    body = scale_set_body(capacity, data_disk=False, **properties)
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"] = {
        "id": image_id(server, version)
    }
    return body


def exact_versions(compute: ComputeManagementClient, name: str) -> set[str]:
    return {
        str(vm.storage_profile.image_reference.exact_version)
        for vm in compute.virtual_machine_scale_set_vms.list(GROUP, name)
    }


@pytest.fixture(scope="module")
def definition(server: ServerProcess, compute: ComputeManagementClient) -> str:
    """The gallery and its definition, made with the SDK, with 1.0.0 and 1.1.0 published with the CLI."""
    gallery = compute.galleries.begin_create_or_update(
        GROUP, GALLERY, {"location": "eastus", "properties": {"description": "e2e"}}
    ).result()
    assert gallery.properties.provisioning_state == "Succeeded"
    made = compute.gallery_images.begin_create_or_update(
        GROUP,
        GALLERY,
        DEFINITION,
        {
            "location": "eastus",
            "properties": {
                "osType": "Linux",
                "osState": "Generalized",
                "hyperVGeneration": "V2",
                "identifier": {"publisher": "contoso", "offer": "webapp", "sku": "e2e"},
            },
        },
    ).result()
    assert made.id == image_id(server)
    cli_publish(server, "webapp-1.0.0", "1.0.0")
    cli_publish(server, "webapp-1.1.0", "1.1.0", "--target-regions", "eastus", "westus")
    return image_id(server)


def test_galleries_and_versions_through_the_sdk_and_the_cli(
    server: ServerProcess, compute: ComputeManagementClient, definition: str
) -> None:
    assert [g.name for g in compute.galleries.list_by_resource_group(GROUP)] == [GALLERY]
    assert GALLERY in [g.name for g in compute.galleries.list()]
    (listed,) = compute.gallery_images.list_by_gallery(GROUP, GALLERY)
    assert (listed.properties.os_type, listed.properties.hyper_v_generation) == ("Linux", "V2")
    assert listed.properties.identifier.publisher == "contoso"

    versions = list(compute.gallery_image_versions.list_by_gallery_image(GROUP, GALLERY, DEFINITION))
    assert [v.name for v in versions] == ["1.0.0", "1.1.0"]
    newest = compute.gallery_image_versions.get(GROUP, GALLERY, DEFINITION, "1.1.0")
    profile = newest.properties.publishing_profile
    assert [r.name for r in profile.target_regions] == ["eastus", "westus"]
    assert profile.exclude_from_latest is False and profile.published_date is not None
    assert newest.properties.provisioning_state == "Succeeded"
    assert newest.id == f"{definition}/versions/1.1.0"

    # A version is published from an artifact, not from JSON; versions are immutable.
    with pytest.raises(HttpResponseError) as refused:
        compute.gallery_image_versions.begin_create_or_update(
            GROUP, GALLERY, DEFINITION, "9.0.0", {"location": "eastus", "properties": {"storageProfile": {}}}
        ).result()
    assert refused.value.status_code == 400 and refused.value.error.code == "InvalidRequestContent"
    again = run_cli(
        server, "sig", "image-version", "create", "-g", GROUP, "-r", GALLERY, "-i", DEFINITION, "-e", "1.0.0",
        "--artifact", str(EXAMPLE_IMAGES / "webapp-1.0.0"),
    )  # fmt: skip
    assert again.returncode != 0 and "immutable" in again.stderr, again.stderr
    # Bad bodies: ARM errors naming the property.
    with pytest.raises(HttpResponseError) as bad:
        compute.gallery_images.begin_create_or_update(
            GROUP, GALLERY, "nostate", {"location": "eastus", "properties": {"osType": "Linux"}}
        ).result()
    assert bad.value.status_code == 400 and bad.value.error.target == "properties.osState"
    with pytest.raises(ResourceExistsError) as nested:
        compute.galleries.begin_delete(GROUP, GALLERY).result()
    assert nested.value.error.code == "CannotDeleteResource"
    with pytest.raises(ResourceNotFoundError):
        compute.gallery_image_versions.get(GROUP, GALLERY, DEFINITION, "7.0.0")

    shown = run_cli(
        server, "-o", "json", "sig", "image-version", "list", "-g", GROUP, "-r", GALLERY, "-i", DEFINITION
    )
    assert shown.returncode == 0, shown.stderr
    assert [v["name"] for v in json.loads(shown.stdout)] == ["1.0.0", "1.1.0"]


def test_sets_run_the_latest_or_the_named_version(
    server: ServerProcess, compute: ComputeManagementClient, definition: str
) -> None:
    sets = compute.virtual_machine_scale_sets
    with made_in(server, compute, GROUP) as made:
        made.sets += ["latest", "pinned"]
        started = time.monotonic()
        latest = sets.begin_create_or_update(GROUP, "latest", gallery_set(server, 3)).result()
        pinned = sets.begin_create_or_update(GROUP, "pinned", gallery_set(server, 2, "1.0.0")).result()
        print(f"\ntwo gallery sets (5 instances) created in {time.monotonic() - started:.2f} s")
        reference = latest.virtual_machine_profile.storage_profile.image_reference
        assert (reference.id, reference.exact_version) == (definition, "1.1.0")
        assert pinned.virtual_machine_profile.storage_profile.image_reference.exact_version == "1.0.0"
        assert exact_versions(compute, "latest") == {"1.1.0"}
        assert exact_versions(compute, "pinned") == {"1.0.0"}
        for vm in compute.virtual_machine_scale_set_vms.list(GROUP, "latest", expand="instanceView"):
            assert vm.instance_view.os_version == "1.1.0"  # the manifest of what was published as 1.1.0

        # Excluded from latest: a new set on latest still gets 1.1.0; the version itself can be named.
        cli_publish(server, "webapp-1.0.0", "1.2.0", "--exclude-from-latest")
        made.sets.append("after")
        after = sets.begin_create_or_update(GROUP, "after", gallery_set(server, 1)).result()
        assert after.virtual_machine_profile.storage_profile.image_reference.exact_version == "1.1.0"
        # az's `vmss create --image` takes the gallery id too.
        made.sets.append("cli")
        created = run_cli(
            server, "-o", "json", "vmss", "create", "-g", GROUP, "-n", "cli", "--image", definition,
            "--instance-count", "1",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        reference = json.loads(created.stdout)["properties"]["virtualMachineProfile"]["storageProfile"]
        assert reference["imageReference"] == {"id": definition, "exactVersion": "1.1.0"}

        # A version the set runs cannot be deleted; an unknown one is Azure's 404 for the image.
        with pytest.raises(ResourceExistsError) as in_use:
            compute.gallery_image_versions.begin_delete(GROUP, GALLERY, DEFINITION, "1.0.0").result()
        assert in_use.value.error.code == "OperationNotAllowed"
        with pytest.raises(ResourceNotFoundError) as unknown:
            sets.begin_create_or_update(GROUP, "nope", gallery_set(server, 1, "5.0.0")).result()
        assert unknown.value.error.code == "GalleryImageNotFound"


def test_a_gallery_publish_upgrades_an_opted_in_set_with_history(
    server: ServerProcess, compute: ComputeManagementClient, definition: str
) -> None:
    """M-8, M-12, M-14: automatic OS upgrade of a set on a gallery id without a version."""
    sets = compute.virtual_machine_scale_sets
    probe = put_health_probe(server, GROUP, "lb-gallery")
    with made_in(server, compute, GROUP) as made:
        made.load_balancers.append("lb-gallery")
        made.sets.append("auto")
        body = gallery_set(
            server,
            2,
            upgradePolicy={
                "mode": "Automatic",
                "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True},
            },
        )
        body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": probe}}
        sets.begin_create_or_update(GROUP, "auto", body).result()
        current = exact_versions(compute, "auto")
        assert len(current) == 1

        returned = time.time()
        cli_publish(server, "webapp-1.1.0", "1.3.0")
        published = time.time()

        def platform_entry() -> Any:
            for entry in sets.get_os_upgrade_history(GROUP, "auto"):
                properties = entry.properties
                if properties.running_status.code == "Completed" and properties.started_by == "Platform":
                    return properties
            return None

        entry = eventually(platform_entry, 120, 0.5, "a completed Platform upgrade in the history")
        assert entry.target_image_reference.id == f"{definition}/versions/1.3.0"
        assert entry.target_image_reference.exact_version == "1.3.0"
        assert entry.progress.successful_instance_count == 2
        assert exact_versions(compute, "auto") == {"1.3.0"}
        started = entry.running_status.start_time.timestamp()
        print(
            f"\ncli publish took {published - returned:.2f} s; the platform run started "
            f"{started - published:+.2f} s after it returned; completed at "
            f"{datetime.fromtimestamp(entry.running_status.end_time.timestamp()).isoformat()}"
        )
