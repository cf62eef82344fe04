"""`scaleset vmss rolling-upgrade plan`: the batches a rolling upgrade would run now, before it runs.

Calls `GET …/rollingUpgrades/scalesetPlan` (docs/plan-preview.md). `-o json` (the default) prints the
whole plan; `-o table` one row per batch (no table when there is no batch), then the skipped instances and a
one-line summary; `-o tsv` the rows only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from scaleset.cli.commands_common import GroupOption, client, emit, state
from scaleset.cli.commands_vmss import NameOption
from scaleset.cli.output import OutputFormat, col

BATCH_COLUMNS = [
    col("Batch", "batch"),
    col("Instances", "instanceIds"),
    col("Zones", "zones"),
    col("UpdateDomain", "updateDomain"),
    col("OutOfService", "outOfService"),
    col("Surge", "surge"),
]


class UpgradeKind(StrEnum):
    os = "os"
    extension = "extension"
    model = "model"


def plan(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    upgrade: Annotated[
        UpgradeKind,
        typer.Option(
            "--upgrade",
            case_sensitive=False,
            help="What to preview: os (rolling-upgrade start), extension (start-extension-upgrade) or "
            "model (the rollout of the current model in Rolling mode).",
        ),
    ] = UpgradeKind.os,
    max_batch_instance_percent: Annotated[
        int | None, typer.Option("--max-batch-instance-percent", help="What if: another batch size.")
    ] = None,
    max_unhealthy_instance_percent: Annotated[
        int | None, typer.Option("--max-unhealthy-instance-percent", help="What if: another budget.")
    ] = None,
    pause_time_between_batches: Annotated[
        str | None, typer.Option("--pause-time-between-batches", help="What if: ISO 8601, e.g. PT30S.")
    ] = None,
    enable_cross_zone_upgrade: Annotated[
        str | None, typer.Option("--enable-cross-zone-upgrade", help="What if: true or false.")
    ] = None,
    prioritize_unhealthy_instances: Annotated[
        str | None, typer.Option("--prioritize-unhealthy-instances", help="What if: true or false.")
    ] = None,
    max_surge: Annotated[str | None, typer.Option("--max-surge", help="What if: true or false.")] = None,
) -> None:
    """The batches a rolling upgrade would run now: instances with zone and update domain, skipped
    instances and why, the most instances out of service at once, the expected duration, and whether the
    health gate would stop it. Changes nothing; the policy options try other values than the set's."""
    overrides: dict[str, Any] = {
        "maxBatchInstancePercent": max_batch_instance_percent,
        "maxUnhealthyInstancePercent": max_unhealthy_instance_percent,
        "pauseTimeBetweenBatches": pause_time_between_batches,
        "enableCrossZoneUpgrade": enable_cross_zone_upgrade,
        "prioritizeUnhealthyInstances": prioritize_unhealthy_instances,
        "maxSurge": max_surge,
    }
    params = {"upgrade": upgrade.value} | {k: str(v) for k, v in overrides.items() if v is not None}
    api = client(ctx)
    preview = api.get(api.vmss_path(group, name, "rollingUpgrades", "scalesetPlan"), params)
    if state(ctx).output is OutputFormat.json:
        emit(ctx, preview)
        return
    batches = preview.get("batches") or []
    if batches or state(ctx).output is OutputFormat.tsv:
        emit(ctx, batches, BATCH_COLUMNS)
    if state(ctx).output is OutputFormat.table:
        skipped = preview.get("skipped") or []
        if skipped:
            typer.echo("Skipped: " + ", ".join(f"{s['instanceId']} ({s['reason']})" for s in skipped))
        typer.echo(str(preview.get("summary", "")))
