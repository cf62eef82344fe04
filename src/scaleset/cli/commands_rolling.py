"""`scaleset vmss rolling-upgrade …`: start, watch and cancel rolling upgrades, as `az vmss rolling-upgrade`.

`start` waits for the upgrade to end unless `--no-wait`, and fails (exit code 1, the ARM error printed)
when the upgrade faults or is cancelled.
"""

from __future__ import annotations

import typer

from scaleset.cli.commands_common import GroupOption, NoWaitOption, client, emit
from scaleset.cli.commands_vmss import NameOption
from scaleset.cli.output import col

app = typer.Typer(
    name="rolling-upgrade", help="Start, watch and cancel rolling upgrades.", no_args_is_help=True
)

LATEST_COLUMNS = [
    col("Status", "properties", "runningStatus", "code"),
    col("Started", "properties", "runningStatus", "startTime"),
    col("LastAction", "properties", "runningStatus", "lastAction"),
    col("Succeeded", "properties", "progress", "successfulInstanceCount"),
    col("Failed", "properties", "progress", "failedInstanceCount"),
    col("InProgress", "properties", "progress", "inProgressInstanceCount"),
    col("Pending", "properties", "progress", "pendingInstanceCount"),
    col("Error", "properties", "error", "code"),
]


@app.command("start")
def start(ctx: typer.Context, group: GroupOption, name: NameOption, no_wait: NoWaitOption = False) -> None:
    """Upgrade every instance's OS to the newest image version the model allows, batch by batch."""
    api = client(ctx)
    api.begin("POST", api.vmss_path(group, name, "osRollingUpgrade"), None, wait=not no_wait)


@app.command("start-extension-upgrade")
def start_extension_upgrade(
    ctx: typer.Context, group: GroupOption, name: NameOption, no_wait: NoWaitOption = False
) -> None:
    """Upgrade every instance's extensions to their newest allowed versions, batch by batch."""
    api = client(ctx)
    api.begin("POST", api.vmss_path(group, name, "extensionRollingUpgrade"), None, wait=not no_wait)


@app.command("get-latest")
def get_latest(ctx: typer.Context, group: GroupOption, name: NameOption) -> None:
    """The status of the newest rolling upgrade: policy, running status, progress counts, error."""
    api = client(ctx)
    emit(ctx, api.get(api.vmss_path(group, name, "rollingUpgrades", "latest")), LATEST_COLUMNS)


@app.command("cancel")
def cancel(ctx: typer.Context, group: GroupOption, name: NameOption, no_wait: NoWaitOption = False) -> None:
    """Stop the running upgrade after its current batch."""
    api = client(ctx)
    api.begin("POST", api.vmss_path(group, name, "rollingUpgrades", "cancel"), None, wait=not no_wait)
