"""Azure Compute Gallery resources as a user writes them, and how a gallery image id names a catalog image.

Pure: validation of gallery, image definition and image version bodies (the stored documents are the wire
shape without read-only fields), parsing of gallery image ids, and the rules that pick the version an
`imageReference.id` without `/versions/...` means (M-12, `azure-api.md` §2.2 and §2.7: "gallery images must
use `id`, and an `id` without `/versions/…` means latest"; "only after replication to the scale set's
region, and not if excluded from latest").

One artifact store: a gallery image version is filed in the image catalog (table `images`) once per target
region, under a synthetic publisher/offer/sku derived from the image definition's resource id
(`catalog_coordinates`). The executor, the rolling engine and reimage/rollback find it there exactly as they
find a platform image; only the read and write paths that name images by `id` need to know the mapping.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scaleset.domain.errors import ArmError, invalid
from scaleset.domain.fields import json_object as _object
from scaleset.domain.fields import non_empty_string as _string
from scaleset.domain.fields import one_of as _choice
from scaleset.domain.fields import validate_tags as _tags
from scaleset.domain.regions import find_region
from scaleset.domain.versions import ImageVersion

Json = dict[str, Any]

GALLERY_TYPE = "Microsoft.Compute/galleries"
IMAGE_TYPE = "Microsoft.Compute/galleries/images"
VERSION_TYPE = "Microsoft.Compute/galleries/images/versions"
# The catalog publisher gallery images are filed under: '~' is refused in a platform publisher's name
# (`validate_resource_name`), so no platform image can ever collide with a gallery image.
GALLERY_PUBLISHER = "~gallery"
OS_TYPES = ("Linux", "Windows")
OS_STATES = ("Generalized", "Specialized")
HYPER_V_GENERATIONS = ("V1", "V2")
ARCHITECTURES = ("x64", "Arm64")
# Fixed once a definition exists (Azure: "PropertyChangeNotAllowed" on these).
_IMMUTABLE_DEFINITION = ("osType", "osState", "hyperVGeneration", "identifier", "architecture")

# Azure: a gallery name is letters, digits, '_' and '.', at most 80, starting and ending alphanumeric
# (no '-'); an image definition name also allows '-'.
_GALLERY_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.]{0,78}[A-Za-z0-9])?$")
_DEFINITION_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,78}[A-Za-z0-9])?$")
_IMAGE_ID = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<group>[^/]+)/providers/Microsoft\.Compute"
    r"/galleries/(?P<gallery>[^/]+)/images/(?P<image>[^/]+)(?:/versions/(?P<version>[^/]+))?/?$",
    re.IGNORECASE,
)
_READ_ONLY_TOP = ("id", "name", "type", "etag", "systemData")


@dataclass(frozen=True)
class GalleryImageId:
    """A gallery image definition's resource id, with the version when one is named."""

    subscription: str
    group: str
    gallery: str
    image: str
    version: str | None = None

    @property
    def definition_id(self) -> str:
        return definition_id_of(self.subscription, self.group, self.gallery, self.image)

    @property
    def key(self) -> str:
        """The synthetic catalog offer of the definition: the same for every spelling of its id.

        >>> a = parse_gallery_image_id("/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/"
        ...     "galleries/G/images/I/versions/1.0.0")
        >>> b = parse_gallery_image_id("/SUBSCRIPTIONS/s/resourcegroups/rg/providers/microsoft.compute/"
        ...     "galleries/g/images/i")
        >>> a is not None and b is not None and a.key == b.key and len(a.key) == 40
        True
        """
        return definition_key(self.subscription, self.group, self.gallery, self.image)


def gallery_id_of(subscription: str, group: str, gallery: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{GALLERY_TYPE}/{gallery}"


def definition_id_of(subscription: str, group: str, gallery: str, image: str) -> str:
    return f"{gallery_id_of(subscription, group, gallery)}/images/{image}"


def version_id_of(subscription: str, group: str, gallery: str, image: str, version: str) -> str:
    return f"{definition_id_of(subscription, group, gallery, image)}/versions/{version}"


def definition_key(subscription: str, group: str, gallery: str, image: str) -> str:
    """A definition's catalog offer: a digest of its lower-cased id (ARM ids are case-insensitive), short
    enough for the catalog's columns whatever the names' lengths."""
    text = "/".join(part.lower() for part in (subscription, group, gallery, image))
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def parse_gallery_image_id(text: str) -> GalleryImageId | None:
    match = _IMAGE_ID.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        return None
    return GalleryImageId(
        match["subscription"], match["group"], match["gallery"], match["image"], match["version"]
    )


def gallery_base_id(text: str) -> str:
    """A gallery image id as given, without its /versions/... part.

    >>> gallery_base_id("/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/x/images/i"
    ...     "/Versions/1.0.0")
    '/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/galleries/x/images/i'
    """
    return re.split(r"/versions/", text, maxsplit=1, flags=re.IGNORECASE)[0].rstrip("/")


def validate_image_id(value: Any, target: str) -> GalleryImageId:
    """An `imageReference.id`: a gallery image definition, with `/versions/{Major.Minor.Patch}` or without
    (latest). Managed images (`Microsoft.Compute/images`) have no place here: only galleries hold custom
    images (`azure-api.md` §2.7)."""
    parsed = parse_gallery_image_id(value) if isinstance(value, str) else None
    if parsed is None:
        raise invalid(
            target,
            "An image id must name an Azure Compute Gallery image: /subscriptions/{sub}/resourceGroups/"
            "{rg}/providers/Microsoft.Compute/galleries/{gallery}/images/{image}[/versions/{version}].",
        )
    if parsed.version is not None:
        try:
            ImageVersion.parse(parsed.version)
        except ValueError as error:
            raise invalid(target, f"{error}; or leave out /versions/... for the latest.") from None
    return parsed


# ------------------------------------------------------------------------------------- resolution
def excluded_from_latest(document: Mapping[str, Any], location: str) -> bool:
    """Whether a version is passed over by 'latest' in `location`: its publishing profile, or its
    target region there, says `excludeFromLatest`.

    >>> doc = {"properties": {"publishingProfile": {"excludeFromLatest": False, "targetRegions": [
    ...     {"name": "eastus"}, {"name": "westus", "excludeFromLatest": True}]}}}
    >>> excluded_from_latest(doc, "eastus"), excluded_from_latest(doc, "westus")
    (False, True)
    """
    profile = (document.get("properties") or {}).get("publishingProfile") or {}
    if profile.get("excludeFromLatest"):
        return True
    return any(
        region.get("name") == location and bool(region.get("excludeFromLatest"))
        for region in profile.get("targetRegions") or []
    )


def latest_version(candidates: Iterable[tuple[str, bool]]) -> str | None:
    """The version 'latest' means among (version, excluded) pairs replicated to a region: the highest
    one not excluded from latest; None when every one is excluded (or there is none).

    >>> latest_version([("1.0.0", False), ("1.2.0", True), ("1.1.0", False)])
    '1.1.0'
    >>> latest_version([("1.0.0", True)]) is None
    True
    """
    allowed = [ImageVersion.parse(version) for version, excluded in candidates if not excluded]
    return str(max(allowed)) if allowed else None


# -------------------------------------------------------------------------------------- validation
def _location(raw: Any, current: Json | None, resource: str) -> str:
    location = _string(raw, "location")
    region = find_region(location)
    if region is None:
        raise ArmError(
            400,
            "LocationNotAvailableForResourceType",
            f"The provided location '{location}' is not available for resource type '{resource}'.",
            "location",
        )
    if current is not None and current["location"] != region.name:
        raise ArmError(
            400, "PropertyChangeNotAllowed", "The location of a resource cannot change.", "location"
        )
    return region.name


def validate_gallery_name(name: str) -> None:
    if not _GALLERY_NAME.match(name):
        raise invalid(
            "galleryName",
            f"The gallery name '{name}' is invalid: use 1 to 80 letters, digits, '_' or '.', starting and "
            "ending with a letter or digit.",
        )


def validate_definition_name(name: str) -> None:
    if not _DEFINITION_NAME.match(name):
        raise invalid(
            "galleryImageName",
            f"The gallery image name '{name}' is invalid: use 1 to 80 letters, digits, '_', '.' or '-', "
            "starting and ending with a letter or digit.",
        )


def validate_version_name(name: str) -> str:
    """A gallery image version's name: Major.Minor.Patch, each a 32-bit integer (as Azure)."""
    try:
        return str(ImageVersion.parse(name))
    except ValueError as error:
        raise invalid("galleryImageVersionName", str(error)) from None


def _base(body: Any, current: Json | None, resource: str) -> tuple[Json, Json]:
    document = copy.deepcopy(_object(body, "body"))
    for key in _READ_ONLY_TOP:
        document.pop(key, None)
    result: Json = {"location": _location(document.get("location"), current, resource)}
    if document.get("tags") is not None:
        result["tags"] = _tags(document["tags"])
    properties = copy.deepcopy(_object(document.get("properties") or {}, "properties"))
    properties.pop("provisioningState", None)
    return result, properties


def validate_gallery(body: Any, name: str, current: Json | None) -> Json:
    """The stored document of a gallery PUT body (`current` is the gallery as stored, None on create)."""
    validate_gallery_name(name)
    result, properties = _base(body, current, GALLERY_TYPE)
    given: Json = {}
    if properties.get("description") is not None:
        given["description"] = _string(properties["description"], "properties.description")
    result["properties"] = given
    return result


def validate_definition(body: Any, name: str, gallery_location: str, current: Json | None) -> Json:
    """The stored document of an image definition PUT body. `osType`, `osState` and `identifier` are
    required; those and `hyperVGeneration`/`architecture` cannot change once the definition exists."""
    validate_definition_name(name)
    result, raw = _base(body, current, IMAGE_TYPE)
    if result["location"] != gallery_location:
        raise invalid(
            "location",
            f"An image definition lives in its gallery's location '{gallery_location}', "
            f"not '{result['location']}'.",
        )
    properties: Json = {
        "osType": _choice(raw.get("osType"), "properties.osType", OS_TYPES),
        "osState": _choice(raw.get("osState"), "properties.osState", OS_STATES),
        "hyperVGeneration": _choice(
            raw.get("hyperVGeneration") or "V1", "properties.hyperVGeneration", HYPER_V_GENERATIONS
        ),
        "architecture": _choice(raw.get("architecture") or "x64", "properties.architecture", ARCHITECTURES),
    }
    identifier = _object(raw.get("identifier"), "properties.identifier")
    properties["identifier"] = {
        key: _string(identifier.get(key), f"properties.identifier.{key}")
        for key in ("publisher", "offer", "sku")
    }
    for key in ("description", "eula", "privacyStatementUri", "releaseNoteUri", "endOfLifeDate"):
        if raw.get(key) is not None:
            properties[key] = _string(raw[key], f"properties.{key}")
    for key in ("recommended", "disallowed", "purchasePlan"):
        if raw.get(key) is not None:
            properties[key] = _object(raw[key], f"properties.{key}")
    if raw.get("features") is not None:
        if not isinstance(raw["features"], list):
            raise invalid("properties.features", "'properties.features' must be a list.")
        properties["features"] = raw["features"]
    if current is not None:
        before = current["properties"]
        for key in _IMMUTABLE_DEFINITION:
            if _folded(before.get(key)) != _folded(properties.get(key)):
                raise ArmError(
                    400,
                    "PropertyChangeNotAllowed",
                    f"Changing property '{key}' of an image definition is not allowed.",
                    f"properties.{key}",
                )
    result["properties"] = properties
    return result


def _folded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _folded(v) for k, v in value.items()}
    return value.lower() if isinstance(value, str) else value


@dataclass(frozen=True)
class VersionPublish:
    """What publishing a version asks for: where to replicate it and whether 'latest' passes over it."""

    target_regions: tuple[str, ...]
    exclude_from_latest: bool
    excluded_regions: tuple[str, ...] = ()


def validate_publish(
    target_regions: Iterable[str] | None, exclude_from_latest: bool, default_region: str
) -> VersionPublish:
    """The target regions of a publish (the gallery's own region when none is given), canonical and
    without repeats."""
    regions: list[str] = []
    for index, name in enumerate(target_regions or [default_region]):
        region = find_region(str(name))
        if region is None:
            raise invalid(f"targetRegions[{index}]", f"Unknown location '{name}'.")
        if region.name not in regions:
            regions.append(region.name)
    if not regions:
        raise invalid("targetRegions", "A version needs at least one target region.")
    return VersionPublish(tuple(regions), exclude_from_latest)


def version_document(
    location: str, publish: VersionPublish, published_date: str, size_bytes: int, tags: Mapping[str, str]
) -> Json:
    """The stored document of a published version (GalleryImageVersion's wire shape, without read-only
    ids): its publishing profile with the date it was published, and the OS disk it was made from."""
    return {
        "location": location,
        "tags": dict(tags),
        "properties": {
            "publishingProfile": {
                "targetRegions": [
                    {
                        "name": region,
                        "regionalReplicaCount": 1,
                        "storageAccountType": "Standard_LRS",
                        "excludeFromLatest": publish.exclude_from_latest
                        or region in publish.excluded_regions,
                    }
                    for region in publish.target_regions
                ],
                "replicaCount": 1,
                "excludeFromLatest": publish.exclude_from_latest,
                "publishedDate": published_date,
                "storageAccountType": "Standard_LRS",
            },
            "storageProfile": {
                "osDiskImage": {"sizeInGB": max(1, -(-size_bytes // 2**30)), "hostCaching": "ReadOnly"}
            },
        },
    }
