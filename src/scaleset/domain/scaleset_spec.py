"""The scale-set resource as a user writes it: validation and normalisation of PUT and PATCH bodies.

Pure: the caller passes the region table and the set as it is now (for PATCH and for the rules on what may
not change); looking the image up in the catalog is the service's job. The result is the *stored
document*: the wire shape with read-only fields dropped and defaults filled in, so that two bodies meaning
the same thing compare equal (that equality is what decides whether the model changed, M-4).

Ranges are Azure's (`azure-api.md` §2.2): maxBatchInstancePercent 5–100, maxUnhealthyInstancePercent
5–100, maxUnhealthyUpgradedInstancePercent 0–100, automatic-repairs grace period PT10M–PT90M.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scaleset.domain.durations import parse_duration
from scaleset.domain.errors import ArmError, invalid
from scaleset.domain.extensions_spec import validate_extensions
from scaleset.domain.fields import json_object as _object
from scaleset.domain.fields import non_empty_string as _string
from scaleset.domain.fields import one_of as _choice
from scaleset.domain.fields import validate_tags as _validate_tags
from scaleset.domain.gallery_spec import GALLERY_PUBLISHER, parse_gallery_image_id, validate_image_id
from scaleset.domain.placement import DEFAULT_FAULT_DOMAIN_COUNT, MAX_FAULT_DOMAIN_COUNT
from scaleset.domain.regions import Region, find_region
from scaleset.domain.versions import ImageVersion, is_latest

Json = dict[str, Any]

MAX_CAPACITY = 1000
MAX_DATA_DISKS = 64
UPGRADE_MODES = ("Automatic", "Manual", "Rolling")
REPAIR_ACTIONS = ("Replace", "Restart", "Reimage")
APPLICATION_HEALTH_TYPES = ("applicationhealthlinux", "applicationhealthwindows")

# Azure's documented defaults, echoed by GET rollingUpgrades/latest as the policy used (azure-api.md §2.6).
DEFAULT_ROLLING_POLICY: Json = {
    "maxBatchInstancePercent": 20,
    "maxUnhealthyInstancePercent": 20,
    "maxUnhealthyUpgradedInstancePercent": 20,
    "pauseTimeBetweenBatches": "PT0S",
    "enableCrossZoneUpgrade": False,
    "prioritizeUnhealthyInstances": False,
    "rollbackFailedInstancesOnPolicyBreach": False,
    "maxSurge": False,
}
_PERCENT_RANGES = {
    "maxBatchInstancePercent": (5, 100),
    "maxUnhealthyInstancePercent": (5, 100),
    "maxUnhealthyUpgradedInstancePercent": (0, 100),
}
_ROLLING_BOOLS = (
    "enableCrossZoneUpgrade",
    "prioritizeUnhealthyInstances",
    "rollbackFailedInstancesOnPolicyBreach",
    "maxSurge",
)
_AUTO_OS_BOOLS = (
    "enableAutomaticOSUpgrade",
    "disableAutomaticRollback",
    "useRollingUpgradePolicy",
    "osRollingUpgradeDeferral",
)
# Fields the server owns: ignored when a client sends them back (read-only on the wire).
_READ_ONLY_TOP = ("id", "name", "type", "etag")
_READ_ONLY_PROPERTIES = ("provisioningState", "uniqueId", "timeCreated")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}[A-Za-z0-9_]$|^[A-Za-z0-9]$")
_PROBE_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/loadBalancers/[^/]+/probes/[^/]+$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ImageRequest:
    """The catalog image a model asks for; `version` may be 'latest'.

    A gallery image (`imageReference.id`) is asked for under its synthetic catalog coordinates
    (`domain/gallery_spec.py`), with `gallery_image` holding the definition's id for messages and views.
    """

    publisher: str
    offer: str
    sku: str
    version: str
    gallery_image: str | None = None

    @property
    def urn(self) -> str:
        if self.gallery_image is not None:
            return self.gallery_image + ("" if is_latest(self.version) else f"/versions/{self.version}")
        return f"{self.publisher}:{self.offer}:{self.sku}:{self.version}"

    def with_version(self, version: str) -> ImageRequest:
        return ImageRequest(self.publisher, self.offer, self.sku, version, self.gallery_image)


def validate_resource_name(name: str, target: str = "name") -> None:
    if not _NAME.match(name):
        raise invalid(
            target,
            f"The name '{name}' is invalid: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit.",
        )


# ---------------------------------------------------------------------------------------------- readers
def _optional_object(parent: Json, key: str, target: str) -> Json | None:
    value = parent.get(key)
    return None if value is None else _object(value, target)


def _integer(value: Any, target: str, low: int, high: int) -> int:
    # bool is an int in Python; JSON true is not a number on the wire.
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(target, f"'{target}' must be an integer between {low} and {high}.")
    if not low <= value <= high:
        raise invalid(target, f"'{target}' is {value}; it must be between {low} and {high}.")
    return value


def _boolean(value: Any, target: str) -> bool:
    # Azure's own ARM samples write "true" as a string (azure-api.md §2.2), so accept both forms.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid(target, f"'{target}' must be true or false.")


def _canonical_keys(value: Json, known: tuple[str, ...] | list[str], target: str) -> Json:
    """Match keys case-insensitively onto their canonical spelling; refuse unknown ones."""
    by_lower = {name.lower(): name for name in known}
    result: Json = {}
    for key, item in value.items():
        canonical = by_lower.get(key.lower())
        if canonical is None:
            raise invalid(f"{target}.{key}", f"'{key}' is not a property of {target}.")
        result[canonical] = item
    return result


# ------------------------------------------------------------------------------------------- sections
def _validate_rolling_policy(raw: Any, target: str) -> Json:
    given = _canonical_keys(_object(raw, target), list(DEFAULT_ROLLING_POLICY), target)
    policy: Json = {}
    for key, (low, high) in _PERCENT_RANGES.items():
        if given.get(key) is not None:
            policy[key] = _integer(given[key], f"{target}.{key}", low, high)
    if given.get("pauseTimeBetweenBatches") is not None:
        pause = _string(given["pauseTimeBetweenBatches"], f"{target}.pauseTimeBetweenBatches")
        try:
            parse_duration(pause)
        except ValueError as error:
            raise invalid(f"{target}.pauseTimeBetweenBatches", str(error)) from None
        policy["pauseTimeBetweenBatches"] = pause.upper()
    for key in _ROLLING_BOOLS:
        if given.get(key) is not None:
            policy[key] = _boolean(given[key], f"{target}.{key}")
    return policy


def _validate_auto_os_policy(raw: Any, target: str) -> Json:
    given = _canonical_keys(_object(raw, target), _AUTO_OS_BOOLS, target)
    return {key: _boolean(value, f"{target}.{key}") for key, value in given.items() if value is not None}


def _validate_upgrade_policy(raw: Any, target: str) -> Json:
    given = _canonical_keys(
        _object(raw, target), ["mode", "rollingUpgradePolicy", "automaticOSUpgradePolicy"], target
    )
    policy: Json = {"mode": _choice(given.get("mode") or "Manual", f"{target}.mode", UPGRADE_MODES)}
    if given.get("rollingUpgradePolicy") is not None:
        policy["rollingUpgradePolicy"] = _validate_rolling_policy(
            given["rollingUpgradePolicy"], f"{target}.rollingUpgradePolicy"
        )
    if given.get("automaticOSUpgradePolicy") is not None:
        policy["automaticOSUpgradePolicy"] = _validate_auto_os_policy(
            given["automaticOSUpgradePolicy"], f"{target}.automaticOSUpgradePolicy"
        )
    return policy


def _validate_repairs_policy(raw: Any, target: str) -> Json:
    given = _canonical_keys(_object(raw, target), ["enabled", "gracePeriod", "repairAction"], target)
    policy: Json = {"enabled": _boolean(given.get("enabled", False), f"{target}.enabled")}
    if given.get("gracePeriod") is not None:
        grace = _string(given["gracePeriod"], f"{target}.gracePeriod")
        try:
            seconds = parse_duration(grace)
        except ValueError as error:
            raise invalid(f"{target}.gracePeriod", str(error)) from None
        if not 600 <= seconds <= 5400:
            raise invalid(f"{target}.gracePeriod", "The grace period must be between PT10M and PT90M.")
        policy["gracePeriod"] = grace.upper()
    if given.get("repairAction") is not None:
        policy["repairAction"] = _choice(given["repairAction"], f"{target}.repairAction", REPAIR_ACTIONS)
    return policy


def _validate_image_reference(raw: Any, target: str) -> Json:
    reference = {k: v for k, v in _object(raw, target).items() if k != "exactVersion"}
    for key in ("sharedGalleryImageId", "communityGalleryImageId"):
        if reference.get(key):
            raise invalid(
                f"{target}.{key}",
                "Shared and community galleries are not served by this scaleset; name a gallery image of "
                "a subscription with 'id' (docs/galleries.md) or a platform image.",
            )
    if reference.get("id"):
        # A gallery image: by `id` only, as Azure wants; without /versions/... it means latest (M-12).
        if any(reference.get(key) for key in ("publisher", "offer", "sku", "version")):
            raise invalid(
                f"{target}.id",
                "An image reference names a gallery image by 'id' or a platform image by publisher, "
                "offer, sku and version, not both.",
            )
        validate_image_id(reference["id"], f"{target}.id")
        return {"id": reference["id"]}
    for key in ("publisher", "offer", "sku", "version"):
        reference[key] = _string(reference.get(key), f"{target}.{key}")
    if not is_latest(reference["version"]):
        try:
            ImageVersion.parse(reference["version"])
        except ValueError as error:
            raise invalid(f"{target}.version", f"{error}; or use 'latest'.") from None
    return reference


def _validate_data_disks(raw: Any, target: str) -> list[Json]:
    if not isinstance(raw, list):
        raise invalid(target, f"'{target}' must be a list.")
    if len(raw) > MAX_DATA_DISKS:
        raise invalid(target, f"A scale set can have at most {MAX_DATA_DISKS} data disks.")
    disks: list[Json] = []
    seen: set[int] = set()
    for index, item in enumerate(raw):
        where = f"{target}[{index}]"
        disk = dict(_object(item, where))
        lun = _integer(disk.get("lun"), f"{where}.lun", 0, MAX_DATA_DISKS - 1)
        if lun in seen:
            raise invalid(f"{where}.lun", f"Two data disks use lun {lun}.")
        seen.add(lun)
        disk["lun"] = lun
        if disk.get("diskSizeGB") is not None:
            disk["diskSizeGB"] = _integer(disk["diskSizeGB"], f"{where}.diskSizeGB", 1, 32767)
        disk["createOption"] = _choice(
            disk.get("createOption") or "Empty", f"{where}.createOption", ("Empty",)
        )
        disks.append(disk)
    return sorted(disks, key=lambda disk: int(disk["lun"]))


def _validate_os_profile(raw: Any, target: str, set_name: str) -> Json:
    profile = dict(_object(raw, target))
    prefix = profile.get("computerNamePrefix") or set_name[:9]
    profile["computerNamePrefix"] = _string(prefix, f"{target}.computerNamePrefix")
    if len(profile["computerNamePrefix"]) > 58:
        raise invalid(f"{target}.computerNamePrefix", "The computer name prefix is at most 58 characters.")
    profile["adminUsername"] = _string(profile.get("adminUsername") or "azureuser", f"{target}.adminUsername")
    if profile.get("customData") is not None:
        custom_data = _string(profile["customData"], f"{target}.customData")
        try:
            base64.b64decode(custom_data, validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"{target}.customData", "customData must be base64-encoded.") from None
    return profile


def _validate_vm_profile(raw: Any, target: str, set_name: str) -> Json:
    profile = copy.deepcopy(_object(raw, target))
    profile.pop("timeCreated", None)
    storage = dict(_object(profile.get("storageProfile"), f"{target}.storageProfile"))
    storage["imageReference"] = _validate_image_reference(
        storage.get("imageReference"), f"{target}.storageProfile.imageReference"
    )
    os_disk = dict(_optional_object(storage, "osDisk", f"{target}.storageProfile.osDisk") or {})
    os_disk["createOption"] = _choice(
        os_disk.get("createOption") or "FromImage",
        f"{target}.storageProfile.osDisk.createOption",
        ("FromImage",),
    )
    storage["osDisk"] = os_disk
    storage["dataDisks"] = _validate_data_disks(
        storage.get("dataDisks") or [], f"{target}.storageProfile.dataDisks"
    )
    profile["storageProfile"] = storage
    profile["osProfile"] = _validate_os_profile(
        profile.get("osProfile") or {}, f"{target}.osProfile", set_name
    )
    network = _optional_object(profile, "networkProfile", f"{target}.networkProfile")
    if network is not None:
        probe = _optional_object(network, "healthProbe", f"{target}.networkProfile.healthProbe")
        if probe is not None and not _PROBE_ID.match(str(probe.get("id", ""))):
            raise invalid(
                f"{target}.networkProfile.healthProbe.id",
                "A health probe is referenced as /subscriptions/{sub}/resourceGroups/{rg}/providers/"
                "Microsoft.Network/loadBalancers/{lb}/probes/{probe}.",
            )
    extension_profile = _optional_object(profile, "extensionProfile", f"{target}.extensionProfile")
    if extension_profile is not None:
        extension_profile = dict(extension_profile)
        extension_profile["extensions"] = validate_extensions(
            extension_profile.get("extensions"), f"{target}.extensionProfile.extensions"
        )
        profile["extensionProfile"] = extension_profile
    return profile


def has_health_probe(vm_profile: Mapping[str, Any]) -> bool:
    probe = (vm_profile.get("networkProfile") or {}).get("healthProbe") or {}
    return bool(probe.get("id"))


def has_application_health_extension(vm_profile: Mapping[str, Any]) -> bool:
    extensions = (vm_profile.get("extensionProfile") or {}).get("extensions") or []
    return any(
        str((ext.get("properties") or {}).get("type", "")).lower() in APPLICATION_HEALTH_TYPES
        for ext in extensions
        if isinstance(ext, dict)
    )


def has_health_source(vm_profile: Mapping[str, Any]) -> bool:
    """A load-balancer probe or the Application Health extension (M-11)."""
    return has_health_probe(vm_profile) or has_application_health_extension(vm_profile)


# --------------------------------------------------------------------------------------------- public
def validate_scale_set(body: Any, name: str, current: Json | None) -> Json:
    """The stored document for a PUT body (`current` is the set as it is, None on create)."""
    validate_resource_name(name)
    document = copy.deepcopy(_object(body, "body"))
    for key in _READ_ONLY_TOP:
        document.pop(key, None)
    region = _validate_location(document.get("location"), current)
    result: Json = {"location": region.name}
    if document.get("tags") is not None:
        result["tags"] = _validate_tags(document["tags"])
    result["sku"] = _validate_sku(document.get("sku"), current)
    result["zones"] = _validate_zones(document.get("zones"), region, current)
    for key in ("plan", "identity"):
        if document.get(key) is not None:
            result[key] = _object(document[key], key)
    result["properties"] = _validate_properties(document.get("properties"), name, result["zones"], current)
    return result


def merge_patch(current: Json, patch: Any) -> Json:
    """A PATCH body applied onto the stored document: objects merge key by key, anything else replaces.

    `tags` is replaced whole, as ARM's UpdateResource does, so `{"tags": {}}` clears them.
    """

    def merge(base: Any, change: Any) -> Any:
        if isinstance(base, dict) and isinstance(change, dict):
            merged = dict(base)
            for key, value in change.items():
                merged[key] = merge(base.get(key), value) if value is not None else base.get(key)
            return merged
        return copy.deepcopy(change)

    change = _object(patch, "body")
    merged: Json = merge(copy.deepcopy(current), {k: v for k, v in change.items() if k != "tags"})
    if change.get("tags") is not None:
        merged["tags"] = copy.deepcopy(change["tags"])
    return merged


def model_of(document: Json) -> Json:
    """The part of the set every instance runs: a change here makes a new model version (M-4)."""
    model: Json = copy.deepcopy(document["properties"]["virtualMachineProfile"])
    return model


def models_differ(before: Json, after: Json) -> bool:
    return json.dumps(model_of(before), sort_keys=True) != json.dumps(model_of(after), sort_keys=True)


def image_request(document: Json) -> ImageRequest:
    profile = document["properties"]["virtualMachineProfile"]
    return reference_request(profile["storageProfile"]["imageReference"])


def reference_request(reference: Mapping[str, Any]) -> ImageRequest:
    """The catalog image a (validated) image reference asks for: a platform image by its URN, a gallery
    image by the synthetic coordinates of its definition, 'latest' when the id names no version."""
    gallery = parse_gallery_image_id(str(reference["id"])) if reference.get("id") else None
    if gallery is not None:
        return ImageRequest(
            GALLERY_PUBLISHER,
            gallery.key,
            gallery.image.lower(),
            gallery.version or "latest",
            gallery.definition_id,
        )
    return ImageRequest(reference["publisher"], reference["offer"], reference["sku"], reference["version"])


def reference_follows_latest(reference: Mapping[str, Any]) -> bool:
    """Whether a model's image follows new versions: a platform image on 'latest', or a gallery image id
    without /versions/... (M-7, M-12)."""
    if reference.get("id"):
        parsed = parse_gallery_image_id(str(reference["id"]))
        return parsed is not None and parsed.version is None
    return is_latest(str(reference.get("version", "")))


def _validate_location(raw: Any, current: Json | None) -> Region:
    location = _string(raw, "location")
    region = find_region(location)
    if region is None:
        raise ArmError(
            400,
            "LocationNotAvailableForResourceType",
            f"The provided location '{location}' is not available for resource type "
            "'Microsoft.Compute/virtualMachineScaleSets'.",
            "location",
        )
    if current is not None and current["location"] != region.name:
        raise ArmError(
            400, "PropertyChangeNotAllowed", "The location of a scale set cannot change.", "location"
        )
    return region


def _validate_sku(raw: Any, current: Json | None) -> Json:
    if raw is None and current is not None:
        return dict(current["sku"])
    sku = dict(_object(raw, "sku"))
    sku["name"] = _string(sku.get("name") or "Standard_B1s", "sku.name")
    sku["tier"] = sku.get("tier") or "Standard"
    default_capacity = current["sku"]["capacity"] if current is not None else 2
    capacity = sku.get("capacity", default_capacity)
    sku["capacity"] = _integer(capacity, "sku.capacity", 0, MAX_CAPACITY)
    return sku


def _validate_zones(raw: Any, region: Region, current: Json | None) -> list[str]:
    zones: list[str] = []
    if raw is not None:
        if not isinstance(raw, list):
            raise invalid("zones", "'zones' must be a list of zone names.")
        for index, zone in enumerate(raw):
            text = _string(
                str(zone) if isinstance(zone, int) and not isinstance(zone, bool) else zone, f"zones[{index}]"
            )
            if not region.zones:
                raise ArmError(
                    400,
                    "ZonesNotSupported",
                    f"The location '{region.name}' has no availability zones; remove 'zones'.",
                    "zones",
                )
            if text not in region.zones:
                raise invalid(
                    f"zones[{index}]",
                    f"Zone '{text}' does not exist in '{region.name}' (zones: {', '.join(region.zones)}).",
                )
            if text in zones:
                raise invalid(f"zones[{index}]", f"Zone '{text}' is listed twice.")
            zones.append(text)
    if current is not None and sorted(zones) != sorted(current.get("zones", [])):
        raise ArmError(
            400, "PropertyChangeNotAllowed", "The zones of an existing scale set cannot change.", "zones"
        )
    return sorted(zones)


def _validate_properties(raw: Any, name: str, zones: list[str], current: Json | None) -> Json:
    if raw is None and current is None:
        raise invalid("properties", "'properties' with a 'virtualMachineProfile' is required.")
    properties = copy.deepcopy(_object(raw if raw is not None else {}, "properties"))
    for key in _READ_ONLY_PROPERTIES:
        properties.pop(key, None)
    previous = current["properties"] if current is not None else {}
    if properties.get("virtualMachineProfile") is None:
        if not previous:
            raise invalid("properties.virtualMachineProfile", "'virtualMachineProfile' is required.")
        properties["virtualMachineProfile"] = previous["virtualMachineProfile"]
    profile = _validate_vm_profile(
        properties["virtualMachineProfile"], "properties.virtualMachineProfile", name
    )
    properties["virtualMachineProfile"] = profile
    properties["upgradePolicy"] = _validate_upgrade_policy(
        properties.get("upgradePolicy") or {}, "properties.upgradePolicy"
    )
    if properties.get("automaticRepairsPolicy") is not None:
        properties["automaticRepairsPolicy"] = _validate_repairs_policy(
            properties["automaticRepairsPolicy"], "properties.automaticRepairsPolicy"
        )
    mode = _choice(
        properties.get("orchestrationMode") or "Uniform",
        "properties.orchestrationMode",
        ("Uniform", "Flexible"),
    )
    if mode != "Uniform":
        raise invalid("properties.orchestrationMode", "scaleset runs Uniform scale sets only.")
    properties["orchestrationMode"] = mode
    properties["platformFaultDomainCount"] = _integer(
        properties.get("platformFaultDomainCount", DEFAULT_FAULT_DOMAIN_COUNT),
        "properties.platformFaultDomainCount",
        1,
        MAX_FAULT_DOMAIN_COUNT,
    )
    if previous and properties["platformFaultDomainCount"] != previous["platformFaultDomainCount"]:
        raise ArmError(
            400,
            "PropertyChangeNotAllowed",
            "platformFaultDomainCount cannot change.",
            "properties.platformFaultDomainCount",
        )
    for key in (
        "overprovision",
        "singlePlacementGroup",
        "zoneBalance",
        "doNotRunExtensionsOnOverprovisionedVMs",
    ):
        if properties.get(key) is not None:
            properties[key] = _boolean(properties[key], f"properties.{key}")
    if properties.get("zoneBalance") and len(zones) < 2:
        raise invalid("properties.zoneBalance", "zoneBalance can only be set with more than one zone.")
    _check_image_identity(profile, previous)
    _check_health_source(properties)
    _check_automatic_os_upgrade(properties)
    return properties


def _check_image_identity(profile: Json, previous: Json) -> None:
    # Azure: "Image reference publisher and offer can only be set when you create the scale set."
    if not previous:
        return
    before = previous["virtualMachineProfile"]["storageProfile"]["imageReference"]
    after = profile["storageProfile"]["imageReference"]
    if before.get("id") or after.get("id"):
        # A custom image may be swapped for another one (M-2: "change the custom image"); a gallery id
        # names no platform publisher/offer to hold fixed.
        return
    for key in ("publisher", "offer"):
        if str(before[key]).lower() != str(after[key]).lower():
            raise ArmError(
                400,
                "PropertyChangeNotAllowed",
                f"The image {key} of a scale set cannot change after it is created.",
                f"properties.virtualMachineProfile.storageProfile.imageReference.{key}",
            )


def _check_health_source(properties: Json) -> None:
    profile = properties["virtualMachineProfile"]
    if has_health_probe(profile) and has_application_health_extension(profile):
        raise invalid(
            "properties.virtualMachineProfile.extensionProfile",
            "Only one source of health monitoring can be used: remove either the load balancer health "
            "probe or the Application Health extension.",
        )
    if properties["upgradePolicy"]["mode"] == "Rolling" and not has_health_source(profile):
        raise invalid(
            "properties.upgradePolicy.mode",
            "Rolling upgrade mode needs a health source: a load balancer health probe "
            "(networkProfile.healthProbe) or the Application Health extension.",
        )


def _check_automatic_os_upgrade(properties: Json) -> None:
    """M-7, M-11: automatic OS upgrade follows `latest` and needs a health source. The third rule, an image
    the catalog marks as supporting it (M-12), needs the catalog: `services/scalesets.py` checks it."""
    auto = properties["upgradePolicy"].get("automaticOSUpgradePolicy") or {}
    if not auto.get("enableAutomaticOSUpgrade"):
        return
    reference = properties["virtualMachineProfile"]["storageProfile"]["imageReference"]
    if not reference_follows_latest(reference):
        if reference.get("id"):
            message = (
                "Automatic OS image upgrade of a gallery image needs an image id without /versions/... "
                "(the latest version) in virtualMachineProfile.storageProfile.imageReference.id."
            )
        else:
            message = (
                "Automatic OS image upgrade needs the image version 'latest' in "
                "virtualMachineProfile.storageProfile.imageReference.version."
            )
        raise invalid("properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade", message)
    if not has_health_source(properties["virtualMachineProfile"]):
        # Azure: the platform judges each batch by a health signal; without one it cannot stop a bad image.
        raise invalid(
            "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade",
            "Automatic OS image upgrade needs a health source: a load balancer health probe "
            "(virtualMachineProfile.networkProfile.healthProbe) or the Application Health extension.",
        )
