"""`scaleset vmss rolling-upgrade …`: start, watch and cancel rolling upgrades, as `az vmss rolling-upgrade`.

`start` and `start-extension-upgrade` wait for the upgrade to end unless `--no-wait`, showing its progress
(cli/progress.py), and exit with a code that says how it ended: 0 Completed, 3 Faulted, 4 rolled back,
5 Cancelled, 6 refused by the server (docs/cli.md). Before, a faulted or cancelled upgrade exited 1; scripts
that test for non-zero see no difference.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from scaleset.cli.commands_common import GroupOption, NoWaitOption, client, emit, state
from scaleset.cli.commands_vmss import NameOption
from scaleset.cli.output import OutputFormat, col
from scaleset.cli.progress import members_text, start_or_refuse, watch_run, where

app = typer.Typer(
    name="rolling-upgrade", help="Start, watch and cancel rolling upgrades.", no_args_is_help=True
)

WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait",
        help="Wait for the upgrade to end, showing its progress, and exit with its verdict (the default).",
    ),
]

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
# For people (-o table/tsv): what kind of run, how many batches, and the newest batch.
BATCH_COLUMNS = [
    col("Kind", "batches", "kind"),
    col("Batches", "batches", "count"),
    col("CurrentBatch", "batches", "current"),
]


@app.command("start")
def start(ctx: typer.Context, group: GroupOption, name: NameOption, wait: WaitOption = True) -> None:
    """Upgrade every instance's OS to the newest image version the model allows, batch by batch."""
    api = client(ctx)
    started = start_or_refuse(api, api.vmss_path(group, name, "osRollingUpgrade"))
    if wait:
        watch_run(api, group, name, started, f"OS rolling upgrade of {name}")


@app.command("start-extension-upgrade")
def start_extension_upgrade(
    ctx: typer.Context, group: GroupOption, name: NameOption, wait: WaitOption = True
) -> None:
    """Upgrade every instance's extensions to their newest allowed versions, batch by batch."""
    api = client(ctx)
    started = start_or_refuse(api, api.vmss_path(group, name, "extensionRollingUpgrade"))
    if wait:
        watch_run(api, group, name, started, f"extension upgrade of {name}")


def latest_row(latest: Any, batches: Any) -> Any:
    """`rollingUpgrades/latest` with a `batches` summary added, for the table."""
    listed = (batches or {}).get("value") or []
    current = listed[-1] if listed else None
    summary = {
        "kind": (batches or {}).get("kind"),
        "count": len(listed),
        "current": f"{current.get('batch')} ({where(current)}): {members_text(current)}" if current else None,
    }
    return {**latest, "batches": summary} if isinstance(latest, dict) else latest


def _emit_latest(ctx: typer.Context, group: str, name: str) -> None:
    api = client(ctx)
    latest = api.get(api.vmss_path(group, name, "rollingUpgrades", "latest"))
    if state(ctx).output is OutputFormat.json:
        emit(ctx, latest)  # Azure's shape, unchanged
        return
    batches = api.get(api.vmss_path(group, name, "rollingUpgrades", "latest", "batches"))
    emit(ctx, latest_row(latest, batches), [*LATEST_COLUMNS, *BATCH_COLUMNS])


@app.command("get-latest")
def get_latest(ctx: typer.Context, group: GroupOption, name: NameOption) -> None:
    """The status of the newest rolling upgrade: policy, running status, progress counts, error."""
    _emit_latest(ctx, group, name)


@app.command("cancel")
def cancel(ctx: typer.Context, group: GroupOption, name: NameOption, no_wait: NoWaitOption = False) -> None:
    """Stop the running upgrade after its current batch.

    Prints nothing with `-o json`, as `az`; with `-o table`/`tsv` it shows how the run ended."""
    api = client(ctx)
    api.begin("POST", api.vmss_path(group, name, "rollingUpgrades", "cancel"), None, wait=not no_wait)
    if state(ctx).output is not OutputFormat.json:
        _emit_latest(ctx, group, name)
