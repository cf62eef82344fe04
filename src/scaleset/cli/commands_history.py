"""`scaleset vmss get-os-upgrade-history`, as `az vmss get-os-upgrade-history` (M-14).

Prints every page of `GET .../osUpgradeHistory`: by default the five newest OS upgrade attempts of the
last 60 days, newest first. `--top` and `--since` ask the server for more (docs/upgrade-history.md).
"""

from __future__ import annotations

from typing import Annotated

import typer

from scaleset.cli.commands_common import GroupOption, client, emit
from scaleset.cli.commands_vmss import NameOption
from scaleset.cli.output import Column, col, field

HISTORY_COLUMNS = [
    col("Status", "properties", "runningStatus", "code"),
    col("Started", "properties", "runningStatus", "startTime"),
    col("Ended", "properties", "runningStatus", "endTime"),
    col("StartedBy", "properties", "startedBy"),
    # A platform image names its version in `version`; a custom image (by id) in `exactVersion`.
    Column(
        "TargetVersion",
        lambda item: (
            field("properties", "targetImageReference", "version")(item)
            or field("properties", "targetImageReference", "exactVersion")(item)
        ),
    ),
    col("Succeeded", "properties", "progress", "successfulInstanceCount"),
    col("Failed", "properties", "progress", "failedInstanceCount"),
    col("RolledBack", "properties", "rollbackInfo", "successfullyRolledbackInstanceCount"),
    col("RollbackFailed", "properties", "rollbackInfo", "failedRolledbackInstanceCount"),
    col("Error", "properties", "error", "code"),
]

TopOption = Annotated[
    int | None,
    typer.Option(
        "--top",
        min=1,
        max=1000,
        help="How many attempts at most (newest first). Default: 5, as Azure.",
        show_default=False,
    ),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Show attempts started at or after this ISO 8601 date or date-time. Default: 60 days ago.",
        show_default=False,
    ),
]


def get_os_upgrade_history(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    top: TopOption = None,
    since: SinceOption = None,
) -> None:
    """The scale set's OS upgrade history, newest first."""
    api = client(ctx)
    params: dict[str, str] = {}
    if top is not None:
        params["$top"] = str(top)
    if since is not None:
        params["since"] = since
    emit(ctx, api.get_pages(api.vmss_path(group, name, "osUpgradeHistory"), params or None), HISTORY_COLUMNS)
