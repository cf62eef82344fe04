"""(being written) `scaleset vmss rolling-upgrade plan`."""

from __future__ import annotations

import typer


def plan(ctx: typer.Context) -> None:
    """The batches a rolling upgrade would run now."""
    raise NotImplementedError
