"""The standalone VM (`Microsoft.Compute/virtualMachines`) as a user writes it, and the one-instance
scale-set model that runs it.

A VM here is backed by a hidden scale set of capacity 1 (services/vms.py says why): this module turns the
VM's document into that set's PUT body, so the scale-set rules (`domain/scaleset_spec.py`) validate the
image, the disks, the custom data and the extensions once, for both kinds of resource. Errors found there
name scale-set properties; `vm_error` renames them to the VM's (`properties.virtualMachineProfile.
storageProfile...` → `properties.storageProfile...`), so a client is told about the body it sent.

Pure: no I/O. The stored VM document is the wire shape with read-only fields and secrets dropped
(`adminPassword` is never used by a local instance, so it is never kept) and defaults filled in.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from scaleset.domain.errors import ArmError, invalid
from scaleset.domain.extensions_spec import validate_extensions
from scaleset.domain.fields import json_object as _object
from scaleset.domain.resource_location import validate_location
from scaleset.domain.scaleset_spec import validate_resource_name

Json = dict[str, Any]

DEFAULT_VM_SIZE = "Standard_B1s"
# The scale-set rules cap a computer-name prefix at 58 characters (six digits follow it on a set).
_MAX_PREFIX = 58
_READ_ONLY_TOP = ("id", "name", "type", "etag", "resources", "managedBy")
_READ_ONLY_PROPERTIES = ("provisioningState", "vmId", "instanceView", "timeCreated")
_AVAILABILITY_SET_ID = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<group>[^/]+)/providers/"
    r"Microsoft\.Compute/availabilitySets/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
# Scale-set property paths and the VM property paths they stand for, most specific first.
_TARGETS = (
    ("properties.virtualMachineProfile.osProfile.computerNamePrefix", "properties.osProfile.computerName"),
    ("properties.virtualMachineProfile.extensionProfile.extensions", "resources"),
    ("properties.virtualMachineProfile.", "properties."),
    ("sku.name", "properties.hardwareProfile.vmSize"),
)


def validate_vm(body: Any, name: str, current: Json | None) -> Json:
    """The stored document for a VM PUT body (`current`: the VM as stored, None on create)."""
    validate_resource_name(name)
    document = {k: copy.deepcopy(v) for k, v in _object(body, "body").items() if k not in _READ_ONLY_TOP}
    region = validate_location(document.get("location"), "Microsoft.Compute/virtualMachines", "a VM", current)
    result: Json = {"location": region.name}
    if document.get("tags") is not None:
        tags = _object(document["tags"], "tags")
        if not all(isinstance(v, str) for v in tags.values()):
            raise invalid("tags", "Tag values must be strings.")
        result["tags"] = dict(tags)
    result["zones"] = _zones(document.get("zones"), current)
    raw = document.get("properties")
    if raw is None:
        if current is None:
            raise invalid("properties", "'properties' with a 'storageProfile' is required.")
        raw = copy.deepcopy(current["properties"])
    properties = {k: v for k, v in _object(raw, "properties").items() if k not in _READ_ONLY_PROPERTIES}
    hardware = dict(_object(properties.get("hardwareProfile") or {}, "properties.hardwareProfile"))
    size = hardware.get("vmSize") or DEFAULT_VM_SIZE
    if not isinstance(size, str):
        raise invalid("properties.hardwareProfile.vmSize", "'vmSize' must be a string.")
    hardware["vmSize"] = size
    properties["hardwareProfile"] = hardware
    _object(properties.get("storageProfile"), "properties.storageProfile")
    os_profile = dict(_object(properties.get("osProfile") or {}, "properties.osProfile"))
    os_profile.pop("adminPassword", None)
    os_profile["computerName"] = os_profile.get("computerName") or name
    if not isinstance(os_profile["computerName"], str):
        raise invalid("properties.osProfile.computerName", "'computerName' must be a string.")
    os_profile["adminUsername"] = os_profile.get("adminUsername") or "azureuser"
    properties["osProfile"] = os_profile
    properties.pop("availabilitySet", None)
    reference = _availability_set(raw, current)
    if reference is not None:
        if result["zones"]:
            raise invalid(
                "properties.availabilitySet",
                "A VM is either in an availability set or in an availability zone, not both.",
            )
        properties["availabilitySet"] = {"id": reference}
    result["properties"] = properties
    return result


def _zones(raw: Any, current: Json | None) -> list[str]:
    zones: list[str] = []
    if raw is not None:
        if not isinstance(raw, list) or len(raw) > 1:
            raise invalid("zones", "A VM is in at most one availability zone: 'zones' is a list of one.")
        zones = [str(zone) for zone in raw]
    if current is not None and zones != current.get("zones", []):
        raise ArmError(409, "PropertyChangeNotAllowed", "The zone of an existing VM cannot change.", "zones")
    return zones


def _availability_set(raw: Any, current: Json | None) -> str | None:
    """The availability set's id as given; fixed at creation, as on Azure."""
    before = ((current or {}).get("properties") or {}).get("availabilitySet", {}).get("id")
    if isinstance(raw, dict) and "availabilitySet" in raw:
        given = raw["availabilitySet"]
    else:
        # A PUT without the property keeps what the VM has (the SDK round-trips GET → PUT).
        return str(before) if before else None
    wanted = None
    if given is not None:
        wanted = _object(given, "properties.availabilitySet").get("id")
        if not isinstance(wanted, str) or _AVAILABILITY_SET_ID.match(wanted) is None:
            raise invalid(
                "properties.availabilitySet.id",
                "An availability set is referenced as /subscriptions/{sub}/resourceGroups/{rg}/providers/"
                "Microsoft.Compute/availabilitySets/{name}.",
            )
    if current is not None and (wanted or "").lower() != (before or "").lower():
        # Azure answers 409 here: a VM joins an availability set when it is created, never later.
        raise ArmError(
            409,
            "PropertyChangeNotAllowed",
            "Changing property 'availabilitySet.id' is not allowed: a VM joins an availability set only "
            "when it is created.",
            "properties.availabilitySet.id",
        )
    return wanted


def availability_set_of(document: Json) -> tuple[str, str, str] | None:
    """(subscription, resource group, name) of the VM's availability set, or None."""
    reference = (document["properties"].get("availabilitySet") or {}).get("id")
    match = _AVAILABILITY_SET_ID.match(reference or "")
    return (match["subscription"], match["group"], match["name"]) if match else None


def scale_set_body(document: Json, extensions: list[Json]) -> Json:
    """The PUT body of the one-instance scale set that runs the VM.

    Automatic upgrade mode: a change to the VM (a new extension, say) reaches its one instance at once,
    as a change to a VM does on Azure. One fault domain: the availability set, not the set, places it.
    """
    properties = document["properties"]
    storage = copy.deepcopy(properties["storageProfile"])
    os_profile = properties["osProfile"]
    model_os: Json = {
        "computerNamePrefix": str(os_profile["computerName"])[:_MAX_PREFIX],
        "adminUsername": os_profile["adminUsername"],
    }
    if os_profile.get("customData") is not None:
        model_os["customData"] = os_profile["customData"]
    profile: Json = {"storageProfile": storage, "osProfile": model_os}
    if extensions:
        profile["extensionProfile"] = {"extensions": copy.deepcopy(extensions)}
    body: Json = {
        "location": document["location"],
        "sku": {"name": properties["hardwareProfile"]["vmSize"], "capacity": 1},
        "properties": {
            "upgradePolicy": {"mode": "Automatic"},
            "platformFaultDomainCount": 1,
            "virtualMachineProfile": profile,
        },
    }
    if document.get("zones"):
        body["zones"] = list(document["zones"])
    return body


def vm_error(error: ArmError) -> ArmError:
    """`error`, raised by the scale-set rules, with its target named as in the VM's own body."""
    target = error.target or ""
    for set_path, vm_path in _TARGETS:
        if target.startswith(set_path):
            return ArmError(error.status, error.code, error.message, vm_path + target[len(set_path) :])
    return error


def validate_vm_extension(body: Any, name: str) -> Json:
    """One VM extension (`PUT .../virtualMachines/{vm}/extensions/{name}`) as the model keeps it:
    `{"name", "properties"}`. The body's `location` is required by Azure's schema but says nothing new
    (the VM's location rules), so it is not kept."""
    properties = _object(body, "body").get("properties")
    if not isinstance(properties, dict):
        raise invalid("properties", 'The body must be an extension: {"properties": {...}}.')
    try:
        (extension,) = validate_extensions([{"name": name, "properties": properties}], "extensions")
    except ArmError as error:
        target = (error.target or "").replace("extensions[0].", "", 1)
        raise ArmError(error.status, error.code, error.message, target) from None
    return extension


def replace_extension(extensions: list[Json], extension: Json) -> tuple[list[Json], bool]:
    """The list with `extension` put in place of the one of the same name (any case), or appended;
    and whether it was new."""
    result = [copy.deepcopy(e) for e in extensions]
    for index, existing in enumerate(result):
        if str(existing["name"]).lower() == str(extension["name"]).lower():
            result[index] = {"name": existing["name"], "properties": extension["properties"]}
            return result, False
    return [*result, extension], True
