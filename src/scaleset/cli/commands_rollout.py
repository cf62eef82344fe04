"""`scaleset rollout list` / `scaleset rollout show`: where platform rollouts stand, phase by phase
(M-21, docs/availability-first.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from scaleset.cli.commands_common import client, emit, state, usage_error
from scaleset.cli.output import Column, OutputFormat, col

app = typer.Typer(
    no_args_is_help=True,
    help="Platform rollouts (automatic OS and extension upgrades): phases across regions, their state.",
)
ROLLOUTS = "/providers/Scaleset.Platform/rollouts"


def _count(state: str) -> Column:
    return col(state.capitalize(), "counts", state)


LIST_COLUMNS = [
    col("Kind", "kind"),
    col("Key", "key"),
    col("Version", "version"),
    col("State", "state"),
    col("Targets", "targetCount"),
    *(_count(s) for s in ("succeeded", "running", "waiting", "failed")),
]
PHASE_COLUMNS = [
    col("Phase", "phase"),
    Column("Regions", lambda p: ", ".join(p.get("regions") or []) or "(others)"),
    col("State", "state"),
    Column("Targets", lambda p: len(p.get("targets") or [])),
    *(_count(s) for s in ("succeeded", "running", "waiting", "failed", "excluded")),
    Column("Target names", lambda p: ", ".join(f"{t['name']}:{t['state']}" for t in p.get("targets") or [])),
]
KindOption = Annotated[str | None, typer.Option("--kind", help="image or extension", show_default=False)]


def _params(kind: str | None, key: str | None, version: str | None) -> dict[str, str]:
    return {k: v for k, v in (("kind", kind), ("key", key), ("version", version)) if v is not None}


@app.command("list")
def list_rollouts(
    ctx: typer.Context,
    kind: KindOption = None,
    key: Annotated[
        str | None, typer.Option("--key", help="publisher:offer:sku or publisher.type", show_default=False)
    ] = None,
) -> None:
    """Every platform rollout: its version, state and how many targets stand where."""
    api = client(ctx)
    emit(ctx, api.get(ROLLOUTS, _params(kind, key, None))["value"], LIST_COLUMNS)


@app.command("show")
def show_rollout(
    ctx: typer.Context,
    key: Annotated[str, typer.Option("--key", help="publisher:offer:sku (an image) or publisher.type")],
    version: Annotated[str, typer.Option("--version", help="The version rolled out")],
    kind: KindOption = None,
) -> None:
    """One rollout phase by phase: regions, state, targets (with `-o json`: every target's id and run)."""
    api = client(ctx)
    found: list[Any] = api.get(ROLLOUTS, _params(kind, key, version))["value"]
    if not found:
        raise usage_error(f"No platform rollout of {key} {version}.", "--key/--version")
    if len(found) > 1:
        raise usage_error(f"{key} {version} names an image and an extension rollout: add --kind.", "--kind")
    (rollout,) = found
    if state(ctx).output in (OutputFormat.table, OutputFormat.tsv):
        emit(ctx, rollout["phases"], PHASE_COLUMNS)
    else:
        emit(ctx, rollout)
