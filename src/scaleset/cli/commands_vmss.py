"""`scaleset vmss ...`: scale sets and their instances, with az's command and flag names."""

from __future__ import annotations

import json
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from scaleset.cli.client import ApiClient, CliError
from scaleset.cli.commands_common import (
    GroupOption,
    NoWaitOption,
    bool_value,
    client,
    emit,
    group_location,
    state,
    usage_error,
)
from scaleset.cli.output import Column, OutputFormat, col, field, render
from scaleset.cli.paths import ImageUrn, PathError, apply_set, apply_sets, parse_instance_ids, parse_urn
from scaleset.cli.progress import Watcher, conclude, display_for, start_or_refuse, watch_run

app = typer.Typer(name="vmss", help="Manage virtual machine scale sets.", no_args_is_help=True)

DEFAULT_INSTANCE_COUNT = 2
DEFAULT_VM_SKU = "Standard_B1s"
DEFAULT_ADMIN_USERNAME = "azureuser"
READ_ONLY_TOP_LEVEL = ("id", "type", "etag")


class UpgradeMode(StrEnum):
    Manual = "Manual"
    Automatic = "Automatic"
    Rolling = "Rolling"


class RepairAction(StrEnum):
    Replace = "Replace"
    Restart = "Restart"
    Reimage = "Reimage"


NameOption = Annotated[
    str,
    typer.Option("--name", "-n", "--vm-scale-set-name", help="Name of the scale set.", show_default=False),
]
InstanceIdsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--instance-ids",
        help="Space-separated instance ids (ex: 0 1 2), or * for all. Omit for all instances.",
        show_default=False,
    ),
]


# --- table shapes ----------------------------------------------------------------------------


def resource_group_of(resource: Any) -> str | None:
    """The resource group named in an ARM resource id."""
    resource_id = resource.get("id") if isinstance(resource, dict) else None
    if not isinstance(resource_id, str):
        return None
    match = re.search(r"/resourcegroups/([^/]+)", resource_id, flags=re.IGNORECASE)
    return match.group(1) if match else None


def power_state(vm: Any) -> str | None:
    """`running` from `PowerState/running` in an instance view (the VM's, or the view itself)."""
    return _status_suffix(vm, "PowerState/")


def _status_suffix(vm: Any, prefix: str) -> str | None:
    view = field("properties", "instanceView")(vm) or vm
    statuses = view.get("statuses") if isinstance(view, dict) else None
    for status in statuses or []:
        code = status.get("code") if isinstance(status, dict) else None
        if isinstance(code, str) and code.startswith(prefix):
            return code[len(prefix) :]
    return None


def health_state(vm: Any) -> str | None:
    code = field("properties", "instanceView", "vmHealth", "status", "code")(vm)
    return code.split("/", 1)[-1] if isinstance(code, str) else None


def image_version(vm: Any) -> str | None:
    reference = field("properties", "storageProfile", "imageReference")(vm)
    if not isinstance(reference, dict):
        return None
    version = reference.get("exactVersion") or reference.get("version")
    return str(version) if version is not None else None


def first_zone(item: Any) -> str | None:
    zones = item.get("zones") if isinstance(item, dict) else None
    return str(zones[0]) if isinstance(zones, list) and zones else None


VMSS_COLUMNS = [
    col("Name", "name"),
    Column("ResourceGroup", resource_group_of),
    col("Location", "location"),
    col("Zones", "zones"),
    col("Capacity", "sku", "capacity"),
    col("UpgradeMode", "properties", "upgradePolicy", "mode"),
    col("ProvisioningState", "properties", "provisioningState"),
]

INSTANCE_COLUMNS = [
    col("InstanceId", "instanceId"),
    col("Name", "name"),
    Column("Zone", first_zone),
    col("LatestModelApplied", "properties", "latestModelApplied"),
    col("ProvisioningState", "properties", "provisioningState"),
    Column("PowerState", power_state),
    Column("Health", health_state),
    Column("ImageVersion", image_version),
]

STATUS_COLUMNS = [
    col("Code", "code"),
    col("Level", "level"),
    col("DisplayStatus", "displayStatus"),
    col("Time", "time"),
]

SUMMARY_COLUMNS = [col("Code", "code"), col("Count", "count")]
ADDRESS_COLUMNS = [col("InstanceId", "instanceId"), col("Address", "address")]


# --- the create body -------------------------------------------------------------------------


def build_vmss_body(
    *,
    location: str,
    image: ImageUrn,
    instance_count: int = DEFAULT_INSTANCE_COUNT,
    vm_sku: str = DEFAULT_VM_SKU,
    zones: list[str] | None = None,
    platform_fault_domain_count: int | None = None,
    upgrade_policy_mode: str = UpgradeMode.Manual.value,
    data_disk_sizes_gb: list[int] | None = None,
    computer_name_prefix: str,
    admin_username: str = DEFAULT_ADMIN_USERNAME,
) -> dict[str, Any]:
    """The Azure-shaped body `vmss create` PUTs (properties nested, as on the wire)."""
    storage: dict[str, Any] = {
        "imageReference": image.image_reference(),
        "osDisk": {"createOption": "FromImage"},
    }
    if data_disk_sizes_gb:
        storage["dataDisks"] = [
            {"lun": lun, "diskSizeGB": size, "createOption": "Empty"}
            for lun, size in enumerate(data_disk_sizes_gb)
        ]
    properties: dict[str, Any] = {
        "upgradePolicy": {"mode": upgrade_policy_mode},
        "virtualMachineProfile": {
            "osProfile": {"computerNamePrefix": computer_name_prefix, "adminUsername": admin_username},
            "storageProfile": storage,
        },
    }
    if platform_fault_domain_count is not None:
        properties["platformFaultDomainCount"] = platform_fault_domain_count
    body: dict[str, Any] = {
        "location": location,
        "sku": {"name": vm_sku, "tier": "Standard", "capacity": instance_count},
    }
    if zones:
        body["zones"] = zones
    body["properties"] = properties
    return body


def default_computer_name_prefix(name: str) -> str:
    """A prefix from the set's name: letters, digits and '-', at most 9 characters (instance names
    append a suffix; Windows caps computer names at 15)."""
    cleaned = re.sub(r"[^A-Za-z0-9-]", "", name)[:9].strip("-")
    return cleaned or "vmss"


def load_template(path: str) -> dict[str, Any]:
    """A scale-set resource body from a JSON file (`-` reads stdin), without its read-only identity."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise usage_error(f"cannot read {path}: {exc.strerror or exc}", "--template") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise usage_error(f"{path} is not valid JSON: {exc}", "--template") from exc
    if not isinstance(document, dict):
        raise usage_error(f"{path} must hold a JSON object (the scale-set resource)", "--template")
    if "resources" in document and "properties" not in document:
        raise usage_error(
            f"{path} looks like an ARM deployment template; give the scale-set resource itself "
            '({"location", "sku", "properties": {...}})',
            "--template",
        )
    for key in (*READ_ONLY_TOP_LEVEL, "name"):
        document.pop(key, None)
    return document


# --- commands --------------------------------------------------------------------------------


@app.command("create")
def create(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="Image URN: PUBLISHER:OFFER:SKU:VERSION (VERSION may be latest), or a gallery image id "
            "(/subscriptions/.../galleries/G/images/I[/versions/V]).",
        ),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            "--template",
            help="Create from a JSON file holding the whole scale-set resource (- for stdin); "
            "-g/-n name it, -l fills in a missing location.",
        ),
    ] = None,
    location: Annotated[
        str | None, typer.Option("--location", "-l", help="Location; defaults to the resource group's.")
    ] = None,
    instance_count: Annotated[
        int | None,
        typer.Option(
            "--instance-count", min=0, help=f"Number of instances (default {DEFAULT_INSTANCE_COUNT})."
        ),
    ] = None,
    vm_sku: Annotated[
        str | None, typer.Option("--vm-sku", help=f"Instance size (default {DEFAULT_VM_SKU}).")
    ] = None,
    zones: Annotated[
        list[str] | None, typer.Option("--zones", help="Space-separated availability zones.")
    ] = None,
    platform_fault_domain_count: Annotated[
        int | None, typer.Option("--platform-fault-domain-count", min=1, help="Fault domain count.")
    ] = None,
    upgrade_policy_mode: Annotated[
        UpgradeMode | None,
        typer.Option(
            "--upgrade-policy-mode", case_sensitive=False, help="Upgrade policy mode (default Manual)."
        ),
    ] = None,
    data_disk_sizes_gb: Annotated[
        list[int] | None,
        typer.Option(
            "--data-disk-sizes-gb", min=1, help="Space-separated sizes of empty data disks, LUN 0 upward."
        ),
    ] = None,
    computer_name_prefix: Annotated[
        str | None, typer.Option("--computer-name-prefix", help="Prefix of instance computer names.")
    ] = None,
    admin_username: Annotated[
        str | None,
        typer.Option("--admin-username", help=f"Admin user name (default {DEFAULT_ADMIN_USERNAME})."),
    ] = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Create a scale set from an image URN and flags, or from a JSON template."""
    api = client(ctx)
    if template is not None:
        shaping = {
            "--image": image,
            "--instance-count": instance_count,
            "--vm-sku": vm_sku,
            "--zones": zones,
            "--platform-fault-domain-count": platform_fault_domain_count,
            "--upgrade-policy-mode": upgrade_policy_mode,
            "--data-disk-sizes-gb": data_disk_sizes_gb,
            "--computer-name-prefix": computer_name_prefix,
            "--admin-username": admin_username,
        }
        given = [flag for flag, value in shaping.items() if value is not None]
        if given:
            raise usage_error(f"{', '.join(given)} cannot be combined with --template", "--template")
        body = load_template(template)
        if not body.get("location"):
            body["location"] = location or group_location(api, group)
    else:
        if image is None:
            raise usage_error("give --image PUBLISHER:OFFER:SKU:VERSION or --template FILE", "--image")
        # az's --image takes a gallery image id too (docs/galleries.md); without /versions/... it is latest.
        gallery_image = image.strip() if image.strip().startswith("/") else None
        try:
            urn = parse_urn(image) if gallery_image is None else ImageUrn("-", "-", "-", "-")
        except ValueError as exc:
            raise usage_error(str(exc), "--image") from exc
        body = build_vmss_body(
            location=location or group_location(api, group),
            image=urn,
            instance_count=DEFAULT_INSTANCE_COUNT if instance_count is None else instance_count,
            vm_sku=vm_sku or DEFAULT_VM_SKU,
            zones=zones,
            platform_fault_domain_count=platform_fault_domain_count,
            upgrade_policy_mode=(upgrade_policy_mode or UpgradeMode.Manual).value,
            data_disk_sizes_gb=data_disk_sizes_gb,
            computer_name_prefix=computer_name_prefix or default_computer_name_prefix(name),
            admin_username=admin_username or DEFAULT_ADMIN_USERNAME,
        )
        if gallery_image is not None:
            storage = body["properties"]["virtualMachineProfile"]["storageProfile"]
            storage["imageReference"] = {"id": gallery_image}
    emit(ctx, api.begin("PUT", api.vmss_path(group, name), body, wait=not no_wait), VMSS_COLUMNS)


@app.command("show")
def show(ctx: typer.Context, group: GroupOption, name: NameOption) -> None:
    """Show a scale set's model."""
    api = client(ctx)
    emit(ctx, api.get(api.vmss_path(group, name)), VMSS_COLUMNS)


@app.command("list")
def list_sets(
    ctx: typer.Context,
    group: Annotated[
        str | None, typer.Option("--resource-group", "-g", help="Only this resource group (default: all).")
    ] = None,
) -> None:
    """List scale sets, in one resource group or in the whole subscription."""
    api = client(ctx)
    if group:
        path = api.compute_path(group, "virtualMachineScaleSets")
    else:
        path = f"{api.subscription_path}/providers/Microsoft.Compute/virtualMachineScaleSets"
    emit(ctx, api.get_pages(path), VMSS_COLUMNS)


@app.command("update")
def update(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Update a property: PATH=VALUE, e.g. upgradePolicy.mode=Manual, sku.capacity=3, "
            "tags.env=prod, virtualMachineProfile.storageProfile.imageReference.version=1.1.0. Values are "
            "JSON when they parse, else strings. Repeatable; space-separated.",
        ),
    ] = None,
    upgrade_policy_mode: Annotated[
        UpgradeMode | None, typer.Option("--upgrade-policy-mode", case_sensitive=False)
    ] = None,
    max_batch_instance_percent: Annotated[int | None, typer.Option("--max-batch-instance-percent")] = None,
    max_unhealthy_instance_percent: Annotated[
        int | None, typer.Option("--max-unhealthy-instance-percent")
    ] = None,
    max_unhealthy_upgraded_instance_percent: Annotated[
        int | None, typer.Option("--max-unhealthy-upgraded-instance-percent")
    ] = None,
    pause_time_between_batches: Annotated[
        str | None, typer.Option("--pause-time-between-batches", help="ISO 8601 duration, e.g. PT10S.")
    ] = None,
    enable_cross_zone_upgrade: Annotated[
        str | None, typer.Option("--enable-cross-zone-upgrade", help="true or false.")
    ] = None,
    prioritize_unhealthy_instances: Annotated[
        str | None, typer.Option("--prioritize-unhealthy-instances", help="true or false.")
    ] = None,
    enable_auto_os_upgrade: Annotated[
        str | None, typer.Option("--enable-auto-os-upgrade", help="true or false.")
    ] = None,
    enable_automatic_repairs: Annotated[
        str | None, typer.Option("--enable-automatic-repairs", help="true or false.")
    ] = None,
    automatic_repairs_grace_period: Annotated[
        int | None, typer.Option("--automatic-repairs-grace-period", help="Grace period in minutes.")
    ] = None,
    automatic_repairs_action: Annotated[
        RepairAction | None, typer.Option("--automatic-repairs-action", case_sensitive=False)
    ] = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Update a scale set: GET its model, apply the changes, PUT it back.

    With no changes at all this re-applies the model as it is (az's generic model update).
    """
    rolling = "upgradePolicy.rollingUpgradePolicy."
    repairs = "automaticRepairsPolicy."
    changes: list[tuple[str, Any]] = [
        ("upgradePolicy.mode", upgrade_policy_mode.value if upgrade_policy_mode else None),
        (rolling + "maxBatchInstancePercent", max_batch_instance_percent),
        (rolling + "maxUnhealthyInstancePercent", max_unhealthy_instance_percent),
        (rolling + "maxUnhealthyUpgradedInstancePercent", max_unhealthy_upgraded_instance_percent),
        (rolling + "pauseTimeBetweenBatches", pause_time_between_batches),
        (
            rolling + "enableCrossZoneUpgrade",
            bool_value(enable_cross_zone_upgrade, "--enable-cross-zone-upgrade"),
        ),
        (
            rolling + "prioritizeUnhealthyInstances",
            bool_value(prioritize_unhealthy_instances, "--prioritize-unhealthy-instances"),
        ),
        (
            "upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade",
            bool_value(enable_auto_os_upgrade, "--enable-auto-os-upgrade"),
        ),
        (repairs + "enabled", bool_value(enable_automatic_repairs, "--enable-automatic-repairs")),
        (
            repairs + "gracePeriod",
            f"PT{automatic_repairs_grace_period}M" if automatic_repairs_grace_period is not None else None,
        ),
        (repairs + "repairAction", automatic_repairs_action.value if automatic_repairs_action else None),
    ]
    api = client(ctx)
    path = api.vmss_path(group, name)
    resource = api.get(path)
    if not isinstance(resource, dict):
        raise CliError("BadResponse", f"GET {path} did not return an object")
    try:
        for change_path, value in changes:
            if value is not None:
                apply_set(resource, change_path, value)
        apply_sets(resource, set_ or [])
    except PathError as exc:
        raise usage_error(str(exc), "--set") from exc
    for key in READ_ONLY_TOP_LEVEL:
        resource.pop(key, None)
    emit(ctx, api.begin("PUT", path, resource, wait=not no_wait), VMSS_COLUMNS)


@app.command("scale")
def scale(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    new_capacity: Annotated[int, typer.Option("--new-capacity", min=0, help="Number of instances.")],
    no_wait: NoWaitOption = False,
) -> None:
    """Change the number of instances (new ones get the latest model; the highest ids go first)."""
    api = client(ctx)
    path = api.vmss_path(group, name)
    current = api.get(path)
    sku = dict(current.get("sku") or {}) if isinstance(current, dict) else {}
    sku["capacity"] = new_capacity
    emit(ctx, api.begin("PATCH", path, {"sku": sku}, wait=not no_wait), VMSS_COLUMNS)


@app.command("delete")
def delete(ctx: typer.Context, group: GroupOption, name: NameOption, no_wait: NoWaitOption = False) -> None:
    """Delete a scale set with its instances and disks."""
    api = client(ctx)
    api.begin("DELETE", api.vmss_path(group, name), wait=not no_wait)


@app.command("list-instances")
def list_instances(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    expand: Annotated[
        str | None,
        typer.Option("--expand", help="instanceView: include each instance's power and health state."),
    ] = None,
    filter_: Annotated[
        str | None,
        typer.Option("--filter", help="OData filter, e.g. 'properties/latestModelApplied eq false'."),
    ] = None,
) -> None:
    """List the instances of a scale set (every page)."""
    api = client(ctx)
    params: dict[str, str] = {}
    if expand:
        params["$expand"] = expand
    if filter_:
        params["$filter"] = filter_
    emit(ctx, api.get_pages(api.vmss_path(group, name, "virtualMachines"), params), INSTANCE_COLUMNS)


@app.command("get-instance-view")
def get_instance_view(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    instance_id: Annotated[
        str | None,
        typer.Option(
            "--instance-id", help="One instance's view; * for every instance's. Omit for the set's."
        ),
    ] = None,
) -> None:
    """Show the instance view of a scale set (status summaries) or of its instances."""
    api = client(ctx)
    fmt = state(ctx).output
    if instance_id is None:
        view = api.get(api.vmss_path(group, name, "instanceView"))
        rows = field("virtualMachine", "statusesSummary")(view) or []
        _emit_view(fmt, view, rows, SUMMARY_COLUMNS)
        return
    if instance_id.strip() == "*":
        vms = api.get_pages(api.vmss_path(group, name, "virtualMachines"), {"$expand": "instanceView"})
        views = [
            dict(field("properties", "instanceView")(vm) or {}, instanceId=vm.get("instanceId")) for vm in vms
        ]
        statuses = [
            dict(status, instanceId=view["instanceId"])
            for view in views
            for status in view.get("statuses") or []
        ]
        _emit_view(fmt, views, statuses, [col("InstanceId", "instanceId"), *STATUS_COLUMNS])
        return
    ids = _instance_ids([instance_id], "--instance-id")
    if ids is None or len(ids) != 1:
        raise usage_error("give one instance id (or *)", "--instance-id")
    view = api.get(api.vmss_path(group, name, "virtualMachines", ids[0], "instanceView"))
    _emit_view(fmt, view, field("statuses")(view) or [], STATUS_COLUMNS)


def _emit_view(fmt: OutputFormat, view: Any, rows: list[Any], columns: list[Column]) -> None:
    render(view if fmt is OutputFormat.json else rows, fmt, columns)


def _instance_ids(values: list[str] | None, flag: str = "--instance-ids") -> list[str] | None:
    if not values:
        return None
    try:
        return parse_instance_ids(values)
    except ValueError as exc:
        raise usage_error(str(exc), flag) from exc


def _run_action(
    ctx: typer.Context, group: str, name: str, action: str, instance_ids: list[str] | None, no_wait: bool
) -> None:
    api = client(ctx)
    ids = _instance_ids(instance_ids)
    body = {"instanceIds": ids} if ids is not None else None
    api.begin("POST", api.vmss_path(group, name, action), body, wait=not no_wait)


@app.command("start")
def start(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    instance_ids: InstanceIdsOption = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Start instances (all when no ids are given)."""
    _run_action(ctx, group, name, "start", instance_ids, no_wait)


@app.command("stop")
def stop(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    instance_ids: InstanceIdsOption = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Power off instances (they keep their disks and addresses)."""
    _run_action(ctx, group, name, "poweroff", instance_ids, no_wait)


@app.command("restart")
def restart(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    instance_ids: InstanceIdsOption = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Restart instances."""
    _run_action(ctx, group, name, "restart", instance_ids, no_wait)


@app.command("deallocate")
def deallocate(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    instance_ids: InstanceIdsOption = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Deallocate instances."""
    _run_action(ctx, group, name, "deallocate", instance_ids, no_wait)


@app.command("reimage")
def reimage(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    instance_ids: InstanceIdsOption = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Reimage instances: a fresh OS disk from their image; data disks are kept."""
    # az sends `reimageall` when given instance ids, but Azure documents reimageAll as renewing the data
    # disks too; we always send `reimage`, which keeps them, as this command promises.
    _run_action(ctx, group, name, "reimage", instance_ids, no_wait)


WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait",
        help="Wait for the end, showing progress, and exit with a code that says how it ended (default).",
    ),
]
UPDATE_DOMAIN_COLUMNS = [
    col("UpdateDomain", "updateDomain"),
    col("Instances", "instanceIds"),
    col("Zones", "zones"),
    col("LatestModelApplied", "latestModelAppliedInstanceIds"),
]


@app.command("update-instances")
def update_instances(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    instance_ids: Annotated[
        list[str] | None,
        typer.Option(
            "--instance-ids",
            help="Space-separated instance ids (ex: 0 1 2), or * for all instances.",
            show_default=False,
        ),
    ] = None,
    update_domain: Annotated[
        int | None,
        typer.Option(
            "--update-domain",
            min=0,
            help="Instead of --instance-ids: every instance of this update domain (0-4).",
            show_default=False,
        ),
    ] = None,
    wait: WaitOption = True,
) -> None:
    """Bring instances to the latest scale-set model (manual upgrade), chosen by id or by update domain."""
    if (instance_ids is None) == (update_domain is None):
        raise usage_error("give either --instance-ids or --update-domain", "--instance-ids")
    api = client(ctx)
    chosen: set[str] | None
    if update_domain is not None:
        path = api.vmss_path(group, name, "updateDomains", str(update_domain), "manualUpgrade")
        started = start_or_refuse(api, path)
        chosen = _domain_instance_ids(api, group, name, update_domain)
    else:
        ids = _instance_ids(instance_ids)
        body = {"instanceIds": ids if ids is not None else ["*"]}
        started = start_or_refuse(api, api.vmss_path(group, name, "manualupgrade"), body)
        chosen = set(ids) if ids is not None else None
    if wait:
        watcher = Watcher(api, display_for())
        conclude(watcher.instances(group, name, started, chosen, f"manual upgrade of {name}"))


def _domain_instance_ids(api: ApiClient, group: str, name: str, update_domain: int) -> set[str]:
    domains = api.get(api.vmss_path(group, name, "updateDomains")).get("value") or []
    return {
        str(i) for d in domains if d.get("updateDomain") == update_domain for i in d.get("instanceIds") or []
    }


@app.command("list-update-domains")
def list_update_domains(ctx: typer.Context, group: GroupOption, name: NameOption) -> None:
    """The update domains that hold instances: their instances, zones, and which run the latest model."""
    api = client(ctx)
    emit(ctx, api.get(api.vmss_path(group, name, "updateDomains")).get("value") or [], UPDATE_DOMAIN_COLUMNS)


@app.command("upgrade-domain-walk")
def upgrade_domain_walk(
    ctx: typer.Context, group: GroupOption, name: NameOption, wait: WaitOption = True
) -> None:
    """Bring every update domain to the latest model, one domain after the other: each domain's
    instances must be healthy before the next domain starts, and the first failure stops the walk
    (docs/update-domain-walks.md)."""
    api = client(ctx)
    started = start_or_refuse(api, api.vmss_path(group, name, "upgradeDomainWalk"))
    if wait:
        watch_run(api, group, name, started, f"update-domain walk of {name}")


@app.command("delete-instances")
def delete_instances(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    instance_ids: Annotated[
        list[str],
        typer.Option("--instance-ids", help="Space-separated instance ids (ex: 0 1 2), or * for all."),
    ],
    no_wait: NoWaitOption = False,
) -> None:
    """Delete instances (the capacity shrinks accordingly)."""
    api = client(ctx)
    ids = _instance_ids(instance_ids)
    body = {"instanceIds": ids if ids is not None else ["*"]}
    api.begin("POST", api.vmss_path(group, name, "delete"), body, wait=not no_wait)


def instance_addresses(interfaces: list[Any]) -> list[dict[str, str | None]]:
    """`[{"instanceId", "address"}]` from network interfaces (`Microsoft.Network` shape), by id."""
    rows: list[dict[str, str | None]] = []
    for nic in interfaces:
        if not isinstance(nic, dict):
            continue
        rows.append({"instanceId": _nic_instance_id(nic), "address": _nic_address(nic)})

    def order(row: dict[str, str | None]) -> tuple[int, str]:
        instance_id = row["instanceId"] or ""
        return (int(instance_id), "") if instance_id.isdigit() else (sys.maxsize, instance_id)

    return sorted(rows, key=order)


def _nic_instance_id(nic: dict[str, Any]) -> str | None:
    for ref in (field("properties", "virtualMachine", "id")(nic), nic.get("id")):
        if isinstance(ref, str):
            match = re.search(r"/virtualMachines/([^/]+)", ref, flags=re.IGNORECASE)
            if match:
                return match.group(1)
    instance_id = nic.get("instanceId")
    return str(instance_id) if instance_id is not None else None


def _nic_address(nic: dict[str, Any]) -> str | None:
    configs = field("properties", "ipConfigurations")(nic) or []
    configs = sorted(
        (c for c in configs if isinstance(c, dict)), key=lambda c: not field("properties", "primary")(c)
    )
    for config in configs:
        address = field("properties", "privateIPAddress")(config) or config.get("privateIPAddress")
        if address:
            return str(address)
    address = nic.get("address") or field("properties", "privateIPAddress")(nic)
    return str(address) if address else None


@app.command("list-instance-addresses")
def list_instance_addresses(ctx: typer.Context, group: GroupOption, name: NameOption) -> None:
    """List each instance's address (its own loopback address with the local provider)."""
    api = client(ctx)
    interfaces = api.get_pages(api.vmss_path(group, name, "networkInterfaces"))
    emit(ctx, instance_addresses(interfaces), ADDRESS_COLUMNS)
