"""`scaleset vm ...`: standalone VMs, their extensions, and availability sets (az's names and flags).

The commands join the `vm` app that `scaleset vm image ...` already lives on (cli/commands_image.py), so
importing this module is what registers them.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from scaleset.cli.client import ApiClient
from scaleset.cli.commands_common import (
    GroupOption,
    NoWaitOption,
    bool_value,
    client,
    confirm_or_refuse,
    emit,
    group_location,
    usage_error,
)
from scaleset.cli.commands_image import vm_app
from scaleset.cli.output import col
from scaleset.cli.paths import parse_urn

vm_extension_app = typer.Typer(name="extension", help="Manage the extensions of a VM.", no_args_is_help=True)
availability_set_app = typer.Typer(
    name="availability-set", help="Manage availability sets.", no_args_is_help=True
)
vm_app.add_typer(vm_extension_app, name="extension")
vm_app.add_typer(availability_set_app, name="availability-set")

DEFAULT_SIZE = "Standard_B1s"
VM_COLUMNS = [
    col("Name", "name"),
    col("Location", "location"),
    col("Size", "properties", "hardwareProfile", "vmSize"),
    col("Status", "properties", "provisioningState"),
    col("UpdateDomain", "properties", "instanceView", "platformUpdateDomain"),
    col("FaultDomain", "properties", "instanceView", "platformFaultDomain"),
]
EXTENSION_COLUMNS = [
    col("Name", "name"),
    col("Publisher", "properties", "publisher"),
    col("Type", "properties", "type"),
    col("Version", "properties", "typeHandlerVersion"),
    col("Status", "properties", "provisioningState"),
]
AVAILABILITY_SET_COLUMNS = [
    col("Name", "name"),
    col("Location", "location"),
    col("UpdateDomains", "properties", "platformUpdateDomainCount"),
    col("FaultDomains", "properties", "platformFaultDomainCount"),
]
NameOption = Annotated[str, typer.Option("--name", "-n", help="Name of the VM.", show_default=False)]
VmNameOption = Annotated[str, typer.Option("--vm-name", help="Name of the VM.", show_default=False)]
SetNameOption = Annotated[
    str, typer.Option("--name", "-n", help="Name of the availability set.", show_default=False)
]


def vm_path(api: ApiClient, group: str, name: str, *parts: str) -> str:
    return api.compute_path(group, "virtualMachines", name, *parts)


def availability_set_path(api: ApiClient, group: str, name: str) -> str:
    return api.compute_path(group, "availabilitySets", name)


def json_argument(text: str, flag: str) -> dict[str, Any]:
    """A JSON object given inline or as a file path (az accepts both; `@file` too)."""
    candidate = Path(text[1:] if text.startswith("@") else text)
    source = text
    if text.startswith("@") or (
        len(text) < 4096 and not text.lstrip().startswith("{") and candidate.is_file()
    ):
        try:
            source = candidate.read_text()
        except OSError as exc:
            raise usage_error(f"cannot read {candidate}: {exc}", flag) from exc
    try:
        value = json.loads(source)
    except ValueError as exc:
        raise usage_error(f"not JSON: {exc}", flag) from exc
    if not isinstance(value, dict):
        raise usage_error("must be a JSON object", flag)
    return value


def availability_set_id(api: ApiClient, group: str, name_or_id: str) -> str:
    """An availability set named by its name (in the VM's group) or by its full id."""
    if name_or_id.startswith("/"):
        return name_or_id
    return (
        f"/subscriptions/{api.config.subscription}/resourceGroups/{group}/providers/Microsoft.Compute/"
        f"availabilitySets/{name_or_id}"
    )


# ---------------------------------------------------------------------------------------------- VMs
@vm_app.command("create")
def create(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    image: Annotated[
        str, typer.Option("--image", help="Image URN: PUBLISHER:OFFER:SKU:VERSION (VERSION may be latest).")
    ],
    location: Annotated[
        str | None, typer.Option("--location", "-l", help="Location; defaults to the resource group's.")
    ] = None,
    size: Annotated[str, typer.Option("--size", help="VM size.")] = DEFAULT_SIZE,
    availability_set: Annotated[
        str | None, typer.Option("--availability-set", help="Name or id of the availability set to join.")
    ] = None,
    zone: Annotated[str | None, typer.Option("--zone", help="Availability zone.")] = None,
    data_disk_sizes_gb: Annotated[
        list[int] | None,
        typer.Option(
            "--data-disk-sizes-gb", min=1, help="Sizes of empty data disks, LUN 0 upward. Repeatable."
        ),
    ] = None,
    computer_name: Annotated[
        str | None, typer.Option("--computer-name", help="Host name (default: the VM's name).")
    ] = None,
    admin_username: Annotated[str, typer.Option("--admin-username", help="Admin user name.")] = "azureuser",
    custom_data: Annotated[
        Path | None, typer.Option("--custom-data", help="File whose content runs at first boot.")
    ] = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Create a VM from an image, optionally in an availability set."""
    try:
        urn = parse_urn(image)
    except ValueError as exc:
        raise usage_error(str(exc), "--image") from exc
    api = client(ctx)
    os_profile: dict[str, Any] = {"computerName": computer_name or name, "adminUsername": admin_username}
    if custom_data is not None:
        os_profile["customData"] = base64.b64encode(custom_data.read_bytes()).decode()
    properties: dict[str, Any] = {
        "hardwareProfile": {"vmSize": size},
        "storageProfile": {
            "imageReference": urn.image_reference(),
            "osDisk": {"createOption": "FromImage"},
            "dataDisks": [
                {"lun": lun, "diskSizeGB": gb, "createOption": "Empty"}
                for lun, gb in enumerate(data_disk_sizes_gb or [])
            ],
        },
        "osProfile": os_profile,
    }
    if availability_set is not None:
        properties["availabilitySet"] = {"id": availability_set_id(api, group, availability_set)}
    body: dict[str, Any] = {"location": location or group_location(api, group), "properties": properties}
    if zone is not None:
        body["zones"] = [zone]
    emit(ctx, api.begin("PUT", vm_path(api, group, name), body, wait=not no_wait), VM_COLUMNS)


@vm_app.command("show")
def show(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    instance_view: Annotated[
        bool, typer.Option("--instance-view", help="Include the instance view (power state, domains).")
    ] = False,
) -> None:
    """Show a VM."""
    api = client(ctx)
    params = {"$expand": "instanceView"} if instance_view else None
    emit(ctx, api.get(vm_path(api, group, name), params), VM_COLUMNS)


@vm_app.command("list")
def list_vms(
    ctx: typer.Context,
    group: Annotated[
        str | None, typer.Option("--resource-group", "-g", help="Only this group's VMs.", show_default=False)
    ] = None,
) -> None:
    """List VMs, of one resource group or of the whole subscription."""
    api = client(ctx)
    path = (
        api.compute_path(group, "virtualMachines")
        if group
        else f"{api.subscription_path}/providers/Microsoft.Compute/virtualMachines"
    )
    emit(ctx, api.get_pages(path), VM_COLUMNS)


@vm_app.command("delete")
def delete(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    no_wait: NoWaitOption = False,
) -> None:
    """Delete a VM with its disks."""
    confirm_or_refuse(f"Delete VM {name!r} and its disks?", yes)
    api = client(ctx)
    api.begin("DELETE", vm_path(api, group, name), wait=not no_wait)


def _action(ctx: typer.Context, group: str, name: str, action: str, no_wait: bool, body: Any = None) -> None:
    api = client(ctx)
    api.begin("POST", vm_path(api, group, name, action), body, wait=not no_wait)


@vm_app.command("start")
def start(ctx: typer.Context, group: GroupOption, name: NameOption, no_wait: NoWaitOption = False) -> None:
    """Start a stopped VM."""
    _action(ctx, group, name, "start", no_wait)


@vm_app.command("stop")
def stop(ctx: typer.Context, group: GroupOption, name: NameOption, no_wait: NoWaitOption = False) -> None:
    """Power off a VM (it keeps its disks and address)."""
    _action(ctx, group, name, "powerOff", no_wait)


@vm_app.command("restart")
def restart(ctx: typer.Context, group: GroupOption, name: NameOption, no_wait: NoWaitOption = False) -> None:
    """Restart a VM."""
    _action(ctx, group, name, "restart", no_wait)


@vm_app.command("reimage")
def reimage(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    exact_version: Annotated[
        str | None, typer.Option("--exact-version", help="Image version to reimage to (default: its own).")
    ] = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Give a VM a fresh OS disk from its image; data disks are kept."""
    body = {"exactVersion": exact_version} if exact_version else None
    _action(ctx, group, name, "reimage", no_wait, body)


# --------------------------------------------------------------------------------------- extensions
def extension_path(api: ApiClient, group: str, vm: str, name: str) -> str:
    return vm_path(api, group, vm, "extensions", name)


# What `az vm extension set` and `az vmss extension set` (commands_extension_platform) both take.
ExtensionTypeOption = Annotated[str, typer.Option("--name", "-n", help="Extension type, e.g. CustomScript.")]
PublisherOption = Annotated[str, typer.Option("--publisher", help="Extension publisher.")]
HandlerVersionOption = Annotated[str, typer.Option("--version", help="Handler version, major.minor.")]
SettingsOption = Annotated[str | None, typer.Option("--settings", help="JSON or a JSON file.")]
ProtectedSettingsOption = Annotated[
    str | None, typer.Option("--protected-settings", help="JSON or a JSON file; never shown again.")
]
NoAutoMinorOption = Annotated[
    bool, typer.Option("--no-auto-upgrade-minor-version", help="Pin the minor version.")
]
EnableAutoUpgradeOption = Annotated[
    str | None,
    typer.Option(
        "--enable-auto-upgrade",
        help="true: the platform upgrades it when a newer minor version is published (az's form).",
        show_default=False,
    ),
]
ForceUpdateOption = Annotated[bool, typer.Option("--force-update", help="Run it again even if unchanged.")]


def extension_properties(
    publisher: str,
    type_: str,
    version: str,
    settings: str | None,
    protected_settings: str | None,
    no_auto_upgrade_minor_version: bool,
    enable_auto_upgrade: str | None,
    force_update: bool,
) -> dict[str, Any]:
    """The extension's `properties` as az sends them for `vm extension set` and `vmss extension set`."""
    properties: dict[str, Any] = {
        "publisher": publisher,
        "type": type_,
        "typeHandlerVersion": version,
        "autoUpgradeMinorVersion": not no_auto_upgrade_minor_version,
    }
    if settings is not None:
        properties["settings"] = json_argument(settings, "--settings")
    if protected_settings is not None:
        properties["protectedSettings"] = json_argument(protected_settings, "--protected-settings")
    automatic = bool_value(enable_auto_upgrade, "--enable-auto-upgrade")
    if automatic is not None:
        properties["enableAutomaticUpgrade"] = automatic
    if force_update:
        properties["forceUpdateTag"] = str(uuid.uuid4())
    return properties


@vm_extension_app.command("set")
def set_extension(
    ctx: typer.Context,
    group: GroupOption,
    vm_name: VmNameOption,
    name: ExtensionTypeOption,
    publisher: PublisherOption,
    version: HandlerVersionOption = "1.0",
    settings: SettingsOption = None,
    protected_settings: ProtectedSettingsOption = None,
    instance_name: Annotated[
        str | None,
        typer.Option("--extension-instance-name", help="Name of the extension resource (default: --name)."),
    ] = None,
    no_auto_upgrade_minor_version: NoAutoMinorOption = False,
    enable_auto_upgrade: EnableAutoUpgradeOption = None,
    force_update: ForceUpdateOption = False,
    no_wait: NoWaitOption = False,
) -> None:
    """Add or update an extension on a VM (what `az vm extension set` sends)."""
    api = client(ctx)
    properties = extension_properties(
        publisher,
        name,
        version,
        settings,
        protected_settings,
        no_auto_upgrade_minor_version,
        enable_auto_upgrade,
        force_update,
    )
    vm = api.get(vm_path(api, group, vm_name))
    body = {"location": vm["location"], "properties": properties}
    path = extension_path(api, group, vm_name, instance_name or name)
    emit(ctx, api.begin("PUT", path, body, wait=not no_wait), EXTENSION_COLUMNS)


@vm_extension_app.command("show")
def show_extension(
    ctx: typer.Context,
    group: GroupOption,
    vm_name: VmNameOption,
    name: Annotated[str, typer.Option("--name", "-n", help="Name of the extension.")],
    instance_view: Annotated[bool, typer.Option("--instance-view", help="Include its status.")] = False,
) -> None:
    """Show one extension of a VM."""
    api = client(ctx)
    params = {"$expand": "instanceView"} if instance_view else None
    emit(ctx, api.get(extension_path(api, group, vm_name, name), params), EXTENSION_COLUMNS)


@vm_extension_app.command("list")
def list_extensions(ctx: typer.Context, group: GroupOption, vm_name: VmNameOption) -> None:
    """List the extensions of a VM."""
    api = client(ctx)
    emit(ctx, api.get_pages(vm_path(api, group, vm_name, "extensions")), EXTENSION_COLUMNS)


@vm_extension_app.command("delete")
def delete_extension(
    ctx: typer.Context,
    group: GroupOption,
    vm_name: VmNameOption,
    name: Annotated[str, typer.Option("--name", "-n", help="Name of the extension.")],
    no_wait: NoWaitOption = False,
) -> None:
    """Remove an extension from a VM."""
    api = client(ctx)
    api.begin("DELETE", extension_path(api, group, vm_name, name), wait=not no_wait)


# --------------------------------------------------------------------------------- availability sets
@availability_set_app.command("create")
def create_availability_set(
    ctx: typer.Context,
    group: GroupOption,
    name: SetNameOption,
    location: Annotated[
        str | None, typer.Option("--location", "-l", help="Location; defaults to the resource group's.")
    ] = None,
    update_domains: Annotated[
        int | None,
        typer.Option("--platform-update-domain-count", min=1, max=20, help="Update domains (default 5)."),
    ] = None,
    fault_domains: Annotated[
        int | None,
        typer.Option("--platform-fault-domain-count", min=1, max=3, help="Fault domains (default 2)."),
    ] = None,
) -> None:
    """Create an availability set (its domain counts are fixed from then on)."""
    api = client(ctx)
    properties: dict[str, Any] = {}
    if update_domains is not None:
        properties["platformUpdateDomainCount"] = update_domains
    if fault_domains is not None:
        properties["platformFaultDomainCount"] = fault_domains
    body = {
        "location": location or group_location(api, group),
        "sku": {"name": "Aligned"},
        "properties": properties,
    }
    emit(ctx, api.begin("PUT", availability_set_path(api, group, name), body), AVAILABILITY_SET_COLUMNS)


@availability_set_app.command("show")
def show_availability_set(ctx: typer.Context, group: GroupOption, name: SetNameOption) -> None:
    """Show an availability set and its VMs."""
    api = client(ctx)
    emit(ctx, api.get(availability_set_path(api, group, name)), AVAILABILITY_SET_COLUMNS)


@availability_set_app.command("list")
def list_availability_sets(
    ctx: typer.Context,
    group: Annotated[
        str | None, typer.Option("--resource-group", "-g", help="Only this group's sets.", show_default=False)
    ] = None,
) -> None:
    """List availability sets, of one resource group or of the whole subscription."""
    api = client(ctx)
    path = (
        api.compute_path(group, "availabilitySets")
        if group
        else f"{api.subscription_path}/providers/Microsoft.Compute/availabilitySets"
    )
    emit(ctx, api.get_pages(path), AVAILABILITY_SET_COLUMNS)


@availability_set_app.command("delete")
def delete_availability_set(ctx: typer.Context, group: GroupOption, name: SetNameOption) -> None:
    """Delete an availability set (refused while it holds VMs)."""
    api = client(ctx)
    api.request("DELETE", availability_set_path(api, group, name))
