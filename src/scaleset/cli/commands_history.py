"""(being written) `scaleset vmss get-os-upgrade-history`."""

from __future__ import annotations

import typer


def get_os_upgrade_history(ctx: typer.Context) -> None:
    """The scale set's OS upgrade history, newest first."""
    raise NotImplementedError
