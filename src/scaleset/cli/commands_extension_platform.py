"""Automatic extension upgrades from the command line (docs/automatic-extension-upgrades.md):

- `scaleset vmss extension set ... --enable-auto-upgrade true` (az's `vmss extension set`, M-24): add or
  update an extension of a set's model; `scaleset vm extension set` does the same for a VM;
- `scaleset extension-upgrade list-blocked` / `clear-blocked`: the versions that failed on a set (or VM),
  which the platform retries once and then blocks, and how to let them back.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from scaleset.cli.client import ApiClient
from scaleset.cli.commands_common import GroupOption, NoWaitOption, client, emit, usage_error
from scaleset.cli.commands_vm import (
    EXTENSION_COLUMNS,
    EnableAutoUpgradeOption,
    ExtensionTypeOption,
    ForceUpdateOption,
    HandlerVersionOption,
    NoAutoMinorOption,
    ProtectedSettingsOption,
    PublisherOption,
    SettingsOption,
    extension_properties,
)
from scaleset.cli.output import col

app = typer.Typer(
    no_args_is_help=True,
    help="Automatic extension upgrades: versions that failed on a set or VM, and clearing them.",
)
vmss_extension_app = typer.Typer(no_args_is_help=True, help="Extensions of a scale set's model.")

FAILURE_COLUMNS = [
    col("Extension", "extensionName"),
    col("Version", "version"),
    col("Blocked", "blocked"),
    col("Retry", "retryTime"),
    col("Failed", "failedTime"),
    col("Cleared", "clearedTime"),
    col("Reason", "reason"),
]
VmssNameOption = Annotated[
    str | None, typer.Option("--vmss-name", help="Name of the scale set.", show_default=False)
]
VmNameOption = Annotated[str | None, typer.Option("--vm-name", help="Name of the VM.", show_default=False)]


def _target(api: ApiClient, group: str, vmss_name: str | None, vm_name: str | None, *parts: str) -> str:
    if (vmss_name is None) == (vm_name is None):
        raise usage_error("give exactly one of --vmss-name and --vm-name", "--vmss-name")
    if vmss_name is not None:
        return api.vmss_path(group, vmss_name, *parts)
    assert vm_name is not None
    return api.compute_path(group, "virtualMachines", vm_name, *parts)


@app.command("list-blocked")
def list_blocked(
    ctx: typer.Context, group: GroupOption, vmss_name: VmssNameOption = None, vm_name: VmNameOption = None
) -> None:
    """Extension versions whose automatic upgrade failed on the set or VM: retried once after the retry
    interval (Retry), then blocked."""
    api = client(ctx)
    emit(
        ctx,
        api.get(_target(api, group, vmss_name, vm_name, "blockedExtensionVersions"))["value"],
        FAILURE_COLUMNS,
    )


@app.command("clear-blocked")
def clear_blocked(
    ctx: typer.Context,
    group: GroupOption,
    vmss_name: VmssNameOption = None,
    vm_name: VmNameOption = None,
    extension: Annotated[
        str | None,
        typer.Option(
            "--extension", help="Only this extension (its name, or publisher.type).", show_default=False
        ),
    ] = None,
    versions: Annotated[
        list[str] | None,
        typer.Option("--version", help="Only this version (repeat for several).", show_default=False),
    ] = None,
) -> None:
    """Forget failed and blocked versions: the platform may upgrade to them again at once."""
    api = client(ctx)
    body: dict[str, Any] = {}
    if extension is not None:
        body["extension"] = extension
    if versions:
        body["versions"] = versions
    path = _target(api, group, vmss_name, vm_name, "clearBlockedExtensionVersions")
    response = api.request("POST", path, body=body or None)
    emit(ctx, response.json()["value"], FAILURE_COLUMNS)


@vmss_extension_app.command("set")
def set_extension(
    ctx: typer.Context,
    group: GroupOption,
    vmss_name: Annotated[str, typer.Option("--vmss-name", help="Name of the scale set.", show_default=False)],
    name: ExtensionTypeOption,
    publisher: PublisherOption,
    version: HandlerVersionOption = "1.0",
    settings: SettingsOption = None,
    protected_settings: ProtectedSettingsOption = None,
    instance_name: Annotated[
        str | None,
        typer.Option(
            "--extension-instance-name", help="Name of the extension in the model (default: --name)."
        ),
    ] = None,
    no_auto_upgrade_minor_version: NoAutoMinorOption = False,
    enable_auto_upgrade: EnableAutoUpgradeOption = None,
    force_update: ForceUpdateOption = False,
    no_wait: NoWaitOption = False,
) -> None:
    """Add or update an extension of a scale set's model (az's `vmss extension set`)."""
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
    path = api.vmss_path(group, vmss_name, "extensions", instance_name or name)
    emit(ctx, api.begin("PUT", path, {"properties": properties}, wait=not no_wait), EXTENSION_COLUMNS)
