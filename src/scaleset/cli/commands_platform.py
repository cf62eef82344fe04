"""`scaleset vmss list-blocked-image-versions` / `clear-blocked-image-versions` / `approve-rolling-upgrade`:
the automatic OS upgrade's memory of image versions rolled back on a set (docs/automatic-os-upgrades.md).
"""

from __future__ import annotations

from typing import Annotated

import typer

from scaleset.cli.commands_common import GroupOption, NoWaitOption, client, emit
from scaleset.cli.commands_vmss import NameOption
from scaleset.cli.output import col

BLOCKED_COLUMNS = [
    col("Version", "imageVersion"),
    col("Blocked", "blockedTime"),
    col("Cleared", "clearedTime"),
    col("Reason", "reason"),
]
VersionsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--version",
        help="Only this image version (repeat for several); default: every version blocked on the set.",
        show_default=False,
    ),
]


def list_blocked_image_versions(ctx: typer.Context, group: GroupOption, name: NameOption) -> None:
    """Image versions rolled back on the set, which automatic OS upgrades will not offer it again."""
    api = client(ctx)
    emit(ctx, api.get(api.vmss_path(group, name, "blockedImageVersions"))["value"], BLOCKED_COLUMNS)


def clear_blocked_image_versions(
    ctx: typer.Context, group: GroupOption, name: NameOption, versions: VersionsOption = None
) -> None:
    """Let automatic OS upgrades offer blocked versions to the set again (it may start one at once)."""
    api = client(ctx)
    body = {"versions": versions} if versions else None
    response = api.request("POST", api.vmss_path(group, name, "clearBlockedImageVersions"), body=body)
    emit(ctx, response.json()["value"], BLOCKED_COLUMNS)


def approve_rolling_upgrade(
    ctx: typer.Context, group: GroupOption, name: NameOption, no_wait: NoWaitOption = False
) -> None:
    """Start the automatic OS upgrade that osRollingUpgradeDeferral holds back; waits for it to end."""
    api = client(ctx)
    api.begin("POST", api.vmss_path(group, name, "approveRollingUpgrade"), None, wait=not no_wait)
