"""Azure Compute Gallery images (issue 5 §1, M-2, M-12; azure-api.md §2.2 ImageReference, §2.7): the pure
rules (ids, bodies, what 'latest' means) and, on the simulated fleet with a real database and virtual time,
what a user sees: sets made from `imageReference.id` with and without a version, `excludeFromLatest` and
target regions honoured, refusals in ARM's shape with nothing half-written, and automatic OS upgrades of a
gallery set with the gallery id in its history.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from scaleset.domain.errors import ArmError
from scaleset.domain.gallery_spec import (
    definition_id_of,
    excluded_from_latest,
    latest_version,
    parse_gallery_image_id,
    validate_definition,
    validate_gallery,
    validate_image_id,
    validate_publish,
)
from scaleset.domain.scaleset_spec import (
    image_request,
    reference_follows_latest,
    reference_request,
    validate_scale_set,
)
from scaleset.services.galleries import GalleryService
from scaleset.services.history import HistoryLimits, HistoryService
from scaleset.services.secrets import SecretBox
from scaleset.services.vms import VmService
from scaleset.store.tables import GalleryImageVersion, Image, RollingUpgrade, ScaleSet
from tests.fleet import BOOT_SECONDS, GROUP, MANIFEST, PROBE_ID, SUB, Fleet, fleet_on_copy, prepare_data
from tests.support import scale_set_body

Json = dict[str, Any]
GALLERY = "gal"
DEFINITION = "web"
IMAGE_ID = definition_id_of(SUB, GROUP, GALLERY, DEFINITION)
DEFINITION_BODY: Json = {
    "location": "eastus",
    "properties": {
        "osType": "Linux",
        "osState": "Generalized",
        "identifier": {"publisher": "contoso", "offer": "web", "sku": "prod"},
    },
}


# ------------------------------------------------------------------------------------- pure rules
def test_gallery_ids_parse_in_any_case_and_name_one_definition() -> None:
    with_version = parse_gallery_image_id(IMAGE_ID + "/versions/1.2.3")
    shouted = parse_gallery_image_id(IMAGE_ID.upper())
    assert with_version is not None and shouted is not None
    assert with_version.version == "1.2.3" and shouted.version is None
    assert with_version.key == shouted.key
    other = parse_gallery_image_id(definition_id_of(SUB, GROUP, GALLERY, "api"))
    assert other is not None and other.key != with_version.key
    # A managed image, or a gallery without an image, is not a gallery image.
    assert (
        parse_gallery_image_id(f"/subscriptions/{SUB}/resourceGroups/g/providers/Microsoft.Compute/images/i")
        is None
    )
    assert (
        parse_gallery_image_id(
            f"/subscriptions/{SUB}/resourceGroups/g/providers/Microsoft.Compute/galleries/x"
        )
        is None
    )


def test_an_image_id_with_a_malformed_version_is_refused_with_its_target() -> None:
    with pytest.raises(ArmError) as caught:
        validate_image_id(IMAGE_ID + "/versions/1.2", "imageReference.id")
    assert (caught.value.status, caught.value.target) == (400, "imageReference.id")


def test_latest_is_the_highest_version_not_excluded_in_the_region() -> None:
    """azure-api.md §2.7: not if excluded from latest; a target region may exclude on its own."""
    assert latest_version([("1.0.0", False), ("1.10.0", False), ("1.9.0", False)]) == "1.10.0"
    assert latest_version([("1.0.0", False), ("2.0.0", True)]) == "1.0.0"
    assert latest_version([("2.0.0", True)]) is None
    doc = {
        "properties": {
            "publishingProfile": {"targetRegions": [{"name": "westus", "excludeFromLatest": True}]}
        }
    }
    assert excluded_from_latest(doc, "westus") and not excluded_from_latest(doc, "eastus")


def test_a_definition_needs_os_type_state_and_identifier_and_they_never_change() -> None:
    stored = validate_definition(DEFINITION_BODY, DEFINITION, "eastus", None)
    assert stored["properties"]["hyperVGeneration"] == "V1"
    for missing in ("osType", "osState", "identifier"):
        body = json.loads(json.dumps(DEFINITION_BODY))
        del body["properties"][missing]
        with pytest.raises(ArmError) as caught:
            validate_definition(body, DEFINITION, "eastus", None)
        assert caught.value.target == f"properties.{missing}"
    changed = json.loads(json.dumps(DEFINITION_BODY))
    changed["properties"]["osState"] = "Specialized"
    with pytest.raises(ArmError) as caught:
        validate_definition(changed, DEFINITION, "eastus", stored)
    assert caught.value.code == "PropertyChangeNotAllowed"
    with pytest.raises(ArmError) as caught:
        validate_definition(DEFINITION_BODY, DEFINITION, "westus", None)
    assert caught.value.target == "location"


def test_gallery_names_follow_azure_and_regions_are_checked() -> None:
    with pytest.raises(ArmError) as caught:
        validate_gallery({"location": "eastus"}, "my-gallery", None)  # no '-' in a gallery name
    assert caught.value.target == "galleryName"
    with pytest.raises(ArmError) as caught:
        validate_publish(["eastus", "atlantis"], False, "eastus")
    assert caught.value.target == "targetRegions[1]"
    assert validate_publish(None, False, "eastus").target_regions == ("eastus",)
    assert validate_publish(["East US", "eastus", "westus"], True, "eastus").target_regions == (
        "eastus",
        "westus",
    )


def gallery_set_body(capacity: int, image_id: str = IMAGE_ID, **properties: Any) -> Json:
    body = scale_set_body(capacity, **properties)
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"] = {"id": image_id}
    return body


def test_a_scale_set_names_a_gallery_image_by_id_only() -> None:
    stored = validate_scale_set(gallery_set_body(2), "web", None)
    reference = stored["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]
    assert reference == {"id": IMAGE_ID}
    request = image_request(stored)
    assert (request.version, request.gallery_image) == ("latest", IMAGE_ID)
    assert reference_follows_latest(reference)
    pinned = reference_request({"id": IMAGE_ID + "/versions/1.0.0"})
    assert pinned.version == "1.0.0" and not reference_follows_latest({"id": IMAGE_ID + "/versions/1.0.0"})
    assert (pinned.publisher, pinned.offer, pinned.sku) == (request.publisher, request.offer, request.sku)

    both = gallery_set_body(2)
    both["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["publisher"] = "x"
    shared = gallery_set_body(2)
    shared["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"] = {
        "sharedGalleryImageId": "/SharedGalleries/x/Images/y"
    }
    for body in (both, shared):
        with pytest.raises(ArmError) as caught:
            validate_scale_set(body, "web", None)
        assert caught.value.status == 400
        assert caught.value.target is not None and caught.value.target.startswith(
            "properties.virtualMachineProfile.storageProfile.imageReference."
        )


def test_automatic_os_upgrade_accepts_a_gallery_id_without_a_version_only() -> None:
    """M-7, M-12: a gallery id without /versions/... is 'latest'; one with a version is refused, naming
    the id (not the platform 'version' field)."""
    policy = {"mode": "Rolling", "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}}
    body = gallery_set_body(2, upgradePolicy=policy)
    body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": PROBE_ID}}
    validate_scale_set(body, "web", None)
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["id"] += "/versions/1.0.0"
    with pytest.raises(ArmError) as caught:
        validate_scale_set(body, "web", None)
    assert caught.value.target == "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade"
    assert "imageReference.id" in caught.value.message


# ------------------------------------------------------------------------------- on the fleet
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_data(tmp_path_factory.mktemp("galleries-prepared"), supported=True)


@pytest.fixture
def fleet(tmp_path: Path, prepared: Path) -> Iterator[Fleet]:
    yield from fleet_on_copy(prepared, tmp_path)


def galleries(fleet: Fleet) -> GalleryService:
    return GalleryService(fleet.container.db, fleet.clock, fleet.container.catalog)


def with_definition(fleet: Fleet) -> GalleryService:
    service = galleries(fleet)
    service.put_gallery(SUB, GROUP, GALLERY, {"location": "eastus"})
    service.put_definition(SUB, GROUP, GALLERY, DEFINITION, DEFINITION_BODY)
    return service


def artifact(fleet: Fleet, version: str) -> Path:
    """An image directory whose manifest does not set automaticOSUpgradeSupported (galleries need not)."""
    folder = fleet.root / f"gallery-{version}"
    folder.mkdir()
    (folder / "scaleset-image.json").write_text(json.dumps({**MANIFEST, "osVersion": version}))
    (folder / "app.py").write_text("print('hello')\n")
    return folder


def publish(
    fleet: Fleet,
    service: GalleryService,
    version: str,
    regions: list[str] | None = None,
    exclude: bool = False,
) -> None:
    service.publish_version(
        SUB, GROUP, GALLERY, DEFINITION, version, artifact(fleet, version), regions, exclude
    )


def create(fleet: Fleet, name: str, body: Json) -> None:
    fleet.container.scalesets.put_set(SUB, GROUP, name, body)
    fleet.run()
    fleet.clock.advance(BOOT_SECONDS)


def versions_of(fleet: Fleet, name: str) -> set[str]:
    return {i.image_version for i in fleet.container.scalesets.list_instances(SUB, GROUP, name)[1]}


def count(fleet: Fleet, table: Any) -> int:
    with fleet.container.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_latest_is_the_newest_version_replicated_to_the_region_and_not_excluded(fleet: Fleet) -> None:
    service = with_definition(fleet)
    publish(fleet, service, "1.0.0")
    publish(fleet, service, "1.1.0", regions=["eastus", "westus"])
    publish(fleet, service, "1.2.0", regions=["westus"])  # not in the set's region
    publish(fleet, service, "1.3.0", exclude=True)

    create(fleet, "latest", gallery_set_body(3))
    create(fleet, "pinned", gallery_set_body(2, IMAGE_ID + "/versions/1.3.0"))

    assert versions_of(fleet, "latest") == {"1.1.0"}
    assert fleet.container.scalesets.get_set(SUB, GROUP, "latest").exact_image_version == "1.1.0"
    # An excluded version is still there for whoever names it.
    assert versions_of(fleet, "pinned") == {"1.3.0"}
    # Reimage makes the OS disk afresh from the catalog row of the gallery version.
    fleet.container.scalesets.vm_action(SUB, GROUP, "latest", "0", "reimage")
    fleet.run()
    assert versions_of(fleet, "latest") == {"1.1.0"}


def test_unknown_gallery_images_and_unreplicated_versions_are_404_and_make_nothing(fleet: Fleet) -> None:
    service = with_definition(fleet)
    publish(fleet, service, "1.0.0", regions=["westus"])
    for image_id in (
        definition_id_of(SUB, GROUP, GALLERY, "nope"),
        IMAGE_ID,  # no version in eastus
        IMAGE_ID + "/versions/1.0.0",
        IMAGE_ID + "/versions/9.0.0",
    ):
        with pytest.raises(ArmError) as caught:
            fleet.container.scalesets.put_set(SUB, GROUP, "web", gallery_set_body(2, image_id))
        assert (caught.value.status, caught.value.code) == (404, "GalleryImageNotFound"), image_id
    assert count(fleet, ScaleSet) == 0


def test_versions_are_immutable_and_a_refused_publish_leaves_nothing(fleet: Fleet) -> None:
    service = with_definition(fleet)
    publish(fleet, service, "1.0.0")
    rows_before, images_before = count(fleet, GalleryImageVersion), count(fleet, Image)
    with pytest.raises(ArmError) as caught:
        publish(fleet, service, "1.0.00")  # the same version, spelt otherwise
    assert caught.value.status == 409
    broken = fleet.root / "broken"
    broken.mkdir()
    (broken / "scaleset-image.json").write_text("{}")
    with pytest.raises(ArmError) as caught:
        service.publish_version(SUB, GROUP, GALLERY, DEFINITION, "2.0.0", broken, ["eastus", "westus"], False)
    assert caught.value.code == "InvalidImageManifest"
    assert (count(fleet, GalleryImageVersion), count(fleet, Image)) == (rows_before, images_before)
    assert not list((fleet.root / "data" / "images" / "_galleries").glob("*/2.0.0"))


def test_deletes_refuse_nested_resources_and_versions_in_use(fleet: Fleet) -> None:
    service = with_definition(fleet)
    publish(fleet, service, "1.0.0")
    publish(fleet, service, "1.1.0")
    create(fleet, "web", gallery_set_body(2, IMAGE_ID + "/versions/1.0.0"))

    with pytest.raises(ArmError) as caught:
        service.delete_gallery(SUB, GROUP, GALLERY)
    assert (caught.value.status, caught.value.code) == (409, "CannotDeleteResource")
    with pytest.raises(ArmError) as caught:
        service.delete_definition(SUB, GROUP, GALLERY, DEFINITION)
    assert (caught.value.status, caught.value.code) == (409, "CannotDeleteResource")
    assert IMAGE_ID + "/versions/1.0.0" in caught.value.message
    with pytest.raises(ArmError) as caught:
        service.delete_version(SUB, GROUP, GALLERY, DEFINITION, "1.0.0")
    assert (caught.value.status, caught.value.code) == (409, "OperationNotAllowed")
    assert "'web'" in caught.value.message

    # 1.1.0 is not in use: it goes, with its catalog rows and files.
    assert service.delete_version(SUB, GROUP, GALLERY, DEFINITION, "1.1.0") is True
    assert [v.name for v, _ in service.list_versions(SUB, GROUP, GALLERY, DEFINITION)] == ["1.0.0"]
    with fleet.container.db.read() as session:
        assert session.scalars(select(Image.version).where(Image.publisher_key == "~gallery")).all() == [
            "1.0.0"
        ]
    assert service.delete_version(SUB, GROUP, GALLERY, DEFINITION, "1.1.0") is False


def auto_gallery_body(capacity: int) -> Json:
    policy = {"mode": "Rolling", "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}}
    body = gallery_set_body(capacity, upgradePolicy=policy)
    body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": PROBE_ID}}
    return body


def platform_runs(fleet: Fleet) -> list[RollingUpgrade]:
    with fleet.container.db.read() as session:
        return list(session.scalars(select(RollingUpgrade).order_by(RollingUpgrade.start_time)))


def test_a_gallery_publish_upgrades_an_opted_in_set_and_history_names_the_id(fleet: Fleet) -> None:
    """M-8, M-12, M-14: a new gallery version starts a Platform run on a set whose id has no version; an
    excluded version, or one replicated elsewhere, starts nothing; the history's targetImageReference
    carries the gallery id with the version."""
    service = with_definition(fleet)
    publish(fleet, service, "1.0.0")
    create(fleet, "web", auto_gallery_body(5))

    publish(fleet, service, "1.1.0", exclude=True)
    publish(fleet, service, "1.2.0", regions=["westus"])
    assert fleet.container.platform.sweep() == []  # what the periodic sweep finds due: nothing
    assert platform_runs(fleet) == []

    publish(fleet, service, "1.3.0")
    (run,) = platform_runs(fleet)
    assert (run.kind, run.started_by, run.target_image_version) == ("os", "Platform", "1.3.0")
    fleet.run()
    assert versions_of(fleet, "web") == {"1.3.0"}

    history = HistoryService(fleet.container.db, fleet.clock).page(
        SUB, GROUP, "web", limits=HistoryLimits(), page_size=10
    )
    (entry,) = history.entries
    assert entry.target_image["id"] == IMAGE_ID + "/versions/1.3.0"
    assert entry.target_image["exactVersion"] == "1.3.0"
    assert "publisher" not in entry.target_image


def test_a_standalone_vm_runs_a_gallery_image(fleet: Fleet) -> None:
    """A VM's `storageProfile.imageReference.id` names a gallery image as a set's does (services/vms.py)."""
    service = with_definition(fleet)
    publish(fleet, service, "1.0.0")
    publish(fleet, service, "1.1.0")
    c = fleet.container
    vms = VmService(c.db, c.clock, c.catalog, c.extensions, SecretBox.in_directory(c.settings.data_dir),
                    c.scalesets, c.executor.wake)  # fmt: skip
    body = {"location": "eastus", "properties": {"storageProfile": {"imageReference": {"id": IMAGE_ID}}}}
    change = vms.put(SUB, GROUP, "vm1", body)
    fleet.run()
    with c.db.read() as session:
        backing = session.get(ScaleSet, change.vm.set_id)
        assert backing is not None and backing.exact_image_version == "1.1.0"
    body["properties"]["storageProfile"]["imageReference"]["id"] = IMAGE_ID + "/versions/9.9.9"
    with pytest.raises(ArmError) as caught:
        vms.put(SUB, GROUP, "vm2", body)
    assert (caught.value.status, caught.value.code) == (404, "GalleryImageNotFound")
    assert caught.value.target is not None and caught.value.target.startswith("properties.storageProfile")


def test_the_worked_examples_in_the_gallery_rules_hold() -> None:
    import doctest

    from scaleset.domain import gallery_spec

    result = doctest.testmod(gallery_spec, raise_on_error=False)
    assert result.attempted >= 6 and result.failed == 0, result
