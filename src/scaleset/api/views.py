"""Stored rows as Azure's wire shapes. Read-only fields are added here; secrets never leave."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from scaleset.api.guest_views import (
    custom_data_status,
    extension_code,
    extension_views,
    guest_status_of,
    health_state,
    vm_agent_view,
    vm_health_view,
)
from scaleset.catalog.manifest import ImageManifest, parse_image_manifest
from scaleset.engine.executor import computer_name
from scaleset.providers.base import GuestReport
from scaleset.services.scalesets import group_id_of, set_id_of
from scaleset.services.upgrades import RunStatus
from scaleset.store.tables import Image, Instance, Operation, ResourceGroup, ScaleSet

Json = dict[str, Any]

SET_TYPE = "Microsoft.Compute/virtualMachineScaleSets"
VM_TYPE = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines"
EXTENSION_TYPE = "Microsoft.Compute/virtualMachines/extensions"
# Written by clients, never shown again (Azure returns neither).
_SECRET_OS_PROFILE_KEYS = ("adminPassword", "customData")
_SECRET_EXTENSION_KEYS = ("protectedSettings", "protectedSettingsSealed")

_POWER_DISPLAY = {
    "running": "VM running",
    "stopped": "VM stopped",
    "deallocated": "VM deallocated",
    "starting": "VM starting",
    "stopping": "VM stopping",
    "deallocating": "VM deallocating",
    "unknown": "VM status unknown",
}
_PROVISIONING_DISPLAY = {
    "creating": "Creating",
    "updating": "Updating",
    "succeeded": "Provisioning succeeded",
    "failed": "Provisioning failed",
    "deleting": "Deleting",
}


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC; SQLite hands datetimes back without their zone, and they were stored as UTC."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def group_view(group: ResourceGroup) -> Json:
    return {
        "id": group_id_of(group.subscription, group.name),
        "name": group.name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": group.location,
        "tags": group.tags,
        "properties": {"provisioningState": group.provisioning_state},
    }


def public_extension_properties(properties: Json) -> Json:
    """An extension's properties as anyone may see them: protected settings never leave the server."""
    return {k: copy.deepcopy(v) for k, v in properties.items() if k not in _SECRET_EXTENSION_KEYS}


def public_model(profile: Json) -> Json:
    """A copy of a model without its secrets (admin password, custom data, protected settings)."""
    clean = copy.deepcopy(profile)
    os_profile = clean.get("osProfile") or {}
    for key in _SECRET_OS_PROFILE_KEYS:
        os_profile.pop(key, None)
    for extension in (clean.get("extensionProfile") or {}).get("extensions") or []:
        if isinstance(extension, dict):
            extension["properties"] = public_extension_properties(extension.get("properties") or {})
    return clean


def scale_set_view(scale_set: ScaleSet, group_name: str) -> Json:
    document = copy.deepcopy(scale_set.document)
    properties = document["properties"]
    profile = public_model(properties["virtualMachineProfile"])
    profile["storageProfile"]["imageReference"]["exactVersion"] = scale_set.exact_image_version
    profile["timeCreated"] = iso(scale_set.created_at)
    properties["virtualMachineProfile"] = profile
    properties["provisioningState"] = scale_set.provisioning_state
    properties["uniqueId"] = scale_set.uid
    properties["timeCreated"] = iso(scale_set.created_at)
    view: Json = {
        "id": set_id_of(scale_set.subscription, group_name, scale_set.name),
        "name": scale_set.name,
        "type": SET_TYPE,
        "location": document["location"],
        "tags": document.get("tags", {}),
        "sku": document["sku"],
        "properties": properties,
    }
    if document.get("zones"):
        view["zones"] = document["zones"]
    for key in ("plan", "identity"):
        if key in document:
            view[key] = document[key]
    return view


def _status(
    code: str, display: str, level: str = "Info", message: str = "", time: datetime | None = None
) -> Json:
    status: Json = {"code": code, "level": level, "displayStatus": display}
    if message:
        status["message"] = message
    if time is not None:
        status["time"] = iso(time)
    return status


def instance_statuses(instance: Instance) -> list[Json]:
    failed = instance.provisioning_state == "failed"
    return [
        _status(
            f"ProvisioningState/{instance.provisioning_state}",
            _PROVISIONING_DISPLAY.get(instance.provisioning_state, instance.provisioning_state),
            "Error" if failed else "Info",
            instance.status_message if failed else "",
            instance.updated_at,
        ),
        _status(
            f"PowerState/{instance.power_state}",
            _POWER_DISPLAY.get(instance.power_state, instance.power_state),
            "Info",
            "" if failed else instance.status_message,
        ),
    ]


def instance_view(
    scale_set: ScaleSet, instance: Instance, model: Json, manifest: ImageManifest | None, report: GuestReport
) -> Json:
    prefix = model["osProfile"]["computerNamePrefix"]
    view: Json = {
        "platformUpdateDomain": instance.update_domain,
        "platformFaultDomain": instance.fault_domain,
        "computerName": computer_name(prefix, instance.instance_id),
        "osName": manifest.os_name if manifest else None,
        "osVersion": manifest.os_version if manifest else None,
        "disks": [
            {
                "name": _os_disk_name(scale_set, instance),
                "statuses": [_status("ProvisioningState/succeeded", "Provisioning succeeded")],
            },
        ],
        "statuses": instance_statuses(instance),
    }
    if instance.zone:
        view["zones"] = [instance.zone]
    custom_data = custom_data_status(report)
    if custom_data is not None:
        view["statuses"].append(
            {**custom_data, "code": custom_data["code"].replace("ProvisioningState", "CustomData")}
        )
    status = guest_status_of(report)
    if status is not None:
        view["vmAgent"] = vm_agent_view(status)
        view["extensions"] = extension_views(status)
        health = health_state(status)
        if health is not None:
            view["vmHealth"] = vm_health_view(health)
    return view


def _os_disk_name(scale_set: ScaleSet, instance: Instance) -> str:
    return f"{scale_set.name}_{instance.instance_id}_OsDisk_{instance.os_disk_generation}"


def vm_id_of(scale_set: ScaleSet, group_name: str, instance: Instance) -> str:
    set_id = set_id_of(scale_set.subscription, group_name, scale_set.name)
    return f"{set_id}/virtualMachines/{instance.instance_id}"


def vm_view(
    scale_set: ScaleSet, group_name: str, instance: Instance, profile: Json, expanded_view: Json | None = None
) -> Json:
    """One VM. `profile` is its model already through `public_model`; it is read, never changed, so one
    copy serves every instance on that model version."""
    vm_id = vm_id_of(scale_set, group_name, instance)
    reference = dict(profile["storageProfile"]["imageReference"])
    reference["exactVersion"] = instance.image_version
    properties: Json = {
        "latestModelApplied": instance.model_version == scale_set.model_version,
        "modelDefinitionApplied": "VirtualMachineScaleSet",
        "vmId": instance.vm_id,
        "provisioningState": instance.provisioning_state.capitalize(),
        "hardwareProfile": {"vmSize": scale_set.document["sku"]["name"]},
        "storageProfile": {
            "imageReference": reference,
            "osDisk": {
                **profile["storageProfile"].get("osDisk", {}),
                "name": _os_disk_name(scale_set, instance),
                "osType": "Linux",
            },
            "dataDisks": profile["storageProfile"].get("dataDisks", []),
        },
        "osProfile": {
            "computerName": computer_name(profile["osProfile"]["computerNamePrefix"], instance.instance_id),
            "adminUsername": profile["osProfile"]["adminUsername"],
        },
        "networkProfile": {
            "networkInterfaces": [{"id": f"{vm_id}/networkInterfaces/nic0", "properties": {"primary": True}}]
        },
        "protectionPolicy": {
            "protectFromScaleIn": instance.protect_from_scale_in,
            "protectFromScaleSetActions": instance.protect_from_scale_set_actions,
        },
        "timeCreated": iso(instance.created_at),
    }
    if expanded_view is not None:
        properties["instanceView"] = expanded_view
    view: Json = {
        "id": vm_id,
        "name": f"{scale_set.name}_{instance.instance_id}",
        "type": VM_TYPE,
        "location": scale_set.location,
        "instanceId": str(instance.instance_id),
        "sku": {
            "name": scale_set.document["sku"]["name"],
            "tier": scale_set.document["sku"].get("tier", "Standard"),
        },
        "properties": properties,
    }
    if instance.zone:
        view["zones"] = [instance.zone]
    return view


def network_interface_view(scale_set: ScaleSet, group_name: str, instance: Instance) -> Json:
    vm_id = vm_id_of(scale_set, group_name, instance)
    return primary_nic_view(
        f"{vm_id}/networkInterfaces/nic0", "nic0", scale_set.location, vm_id, instance.address
    )


def primary_nic_view(nic_id: str, name: str, location: str, vm_id: str, address: str | None) -> Json:
    """Azure's NetworkInterface for a VM's one NIC (a set's instance's, a standalone VM's): primary, with
    one dynamic IPv4 configuration holding the instance's address."""
    return {
        "name": name,
        "id": nic_id,
        "type": "Microsoft.Network/networkInterfaces",
        "location": location,
        "properties": {
            "primary": True,
            "provisioningState": "Succeeded",
            "virtualMachine": {"id": vm_id},
            "ipConfigurations": [
                {
                    "name": "ipconfig1",
                    "id": f"{nic_id}/ipConfigurations/ipconfig1",
                    "properties": {
                        "privateIPAddress": address,
                        "privateIPAddressVersion": "IPv4",
                        "privateIPAllocationMethod": "Dynamic",
                        "primary": True,
                    },
                }
            ],
        },
    }


def extension_resource_view(
    extension: Json, reported: Json | None, owner_id: str, location: str, expand: bool
) -> Json:
    """An extension of a VM (a set's instance or a standalone VM) as an ARM child resource of `owner_id`,
    its provisioning state taken from the guest agent's report of it (`reported`, None before one)."""
    properties = public_extension_properties(extension["properties"])
    code = reported["statuses"][0]["code"] if reported else "ProvisioningState/transitioning"
    properties["provisioningState"] = (
        "Succeeded"
        if code == "ProvisioningState/succeeded"
        else "Failed"
        if code.startswith("ProvisioningState/failed")
        else "Creating"
    )
    if expand and reported:
        properties["instanceView"] = reported
    return {
        "id": f"{owner_id}/extensions/{extension['name']}",
        "name": extension["name"],
        "type": EXTENSION_TYPE,
        "location": location,
        "properties": properties,
    }


def set_instance_view(scale_set: ScaleSet, instances: Iterable[tuple[Instance, GuestReport]]) -> Json:
    codes: Counter[str] = Counter()
    extension_codes: dict[str, Counter[str]] = {}
    for instance, report in instances:
        codes[f"ProvisioningState/{instance.provisioning_state}"] += 1
        codes[f"PowerState/{instance.power_state}"] += 1
        status = guest_status_of(report)
        for extension in status.extensions if status else ():
            extension_codes.setdefault(extension.name, Counter())[extension_code(extension)[0]] += 1
    state = scale_set.provisioning_state.lower()
    return {
        "virtualMachine": {
            "statusesSummary": [{"code": code, "count": count} for code, count in sorted(codes.items())]
        },
        "extensions": [
            {"name": name, "statusesSummary": [{"code": c, "count": n} for c, n in sorted(counter.items())]}
            for name, counter in sorted(extension_codes.items())
        ],
        "statuses": [
            _status(
                f"ProvisioningState/{state}",
                _PROVISIONING_DISPLAY.get(state, state),
                "Error" if state == "failed" else "Info",
                time=scale_set.updated_at,
            )
        ],
        "orchestrationServices": [],
    }


def _image_id(image: Image, subscription: str) -> str:
    return (
        f"/Subscriptions/{subscription}/Providers/Microsoft.Compute/Locations/{image.location}"
        f"/Publishers/{image.publisher}/ArtifactTypes/VMImage/Offers/{image.offer}/Skus/{image.sku}"
        f"/Versions/{image.version}"
    )


def image_name_view(name: str, location: str, resource_id: str) -> Json:
    return {"name": name, "location": location, "id": resource_id}


def image_resource_view(image: Image, subscription: str) -> Json:
    return image_name_view(image.version, image.location, _image_id(image, subscription))


def image_view(image: Image, subscription: str) -> Json:
    manifest = parse_image_manifest(image.manifest)
    view = image_resource_view(image, subscription)
    view["properties"] = {
        "osDiskImage": {"operatingSystem": manifest.os_type},
        "dataDiskImages": [],
        "automaticOSUpgradeProperties": {
            "automaticOSUpgradeSupported": manifest.automatic_os_upgrade_supported
        },
        "hyperVGeneration": "V2",
        "architecture": "x64",
        "imageDeprecationStatus": {"imageState": "Active"},
    }
    return view


def operation_view(operation: Operation) -> Json:
    view: Json = {"name": operation.id, "status": operation.status, "startTime": iso(operation.start_time)}
    if operation.end_time is not None:
        view["endTime"] = iso(operation.end_time)
    if operation.error:
        view["error"] = operation.error
    return view


def rolling_upgrade_view(status: RunStatus) -> Json:
    """`RollingUpgradeStatusInfo` (azure-api.md §2.6). Like Azure's, it has no id or name."""
    run = status.run
    properties: Json = {
        "policy": run.policy,
        "runningStatus": {
            "code": run.status,
            "startTime": iso(run.start_time),
            "lastAction": run.last_action,
            "lastActionTime": iso(run.last_action_time),
        },
        "progress": status.progress,
    }
    if run.error:
        properties["error"] = run.error
    return {
        "location": status.location,
        "type": "Microsoft.Compute/virtualMachineScaleSets/rollingUpgrades",
        "properties": properties,
    }
