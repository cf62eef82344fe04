"""`scaleset group ...`: resource groups (`Microsoft.Resources`)."""

from __future__ import annotations

from typing import Annotated

import typer

from scaleset.cli.client import CliError
from scaleset.cli.commands_common import NoWaitOption, client, confirm_or_refuse, emit, usage_error
from scaleset.cli.output import col
from scaleset.cli.paths import parse_tags

app = typer.Typer(name="group", help="Manage resource groups.", no_args_is_help=True)

GROUP_COLUMNS = [
    col("Name", "name"),
    col("Location", "location"),
    col("Status", "properties", "provisioningState"),
]

NameOption = Annotated[
    str, typer.Option("--name", "-n", "--resource-group", "-g", help="Name of the resource group.")
]


@app.command("create")
def create(
    ctx: typer.Context,
    name: NameOption,
    location: Annotated[str, typer.Option("--location", "-l", help="Location, e.g. eastus.")],
    tags: Annotated[
        list[str] | None, typer.Option("--tags", help="Space-separated tags: key=value. Repeatable.")
    ] = None,
) -> None:
    """Create a resource group (or update its location and tags)."""
    try:
        tag_map = parse_tags(tags or [])
    except ValueError as exc:
        raise usage_error(str(exc), "--tags") from exc
    api = client(ctx)
    body = {"location": location, "tags": tag_map}
    emit(ctx, api.begin("PUT", api.group_path(name), body), GROUP_COLUMNS)


@app.command("show")
def show(ctx: typer.Context, name: NameOption) -> None:
    """Show a resource group."""
    api = client(ctx)
    emit(ctx, api.get(api.group_path(name)), GROUP_COLUMNS)


@app.command("exists")
def exists(ctx: typer.Context, name: NameOption) -> None:
    """Print true if the resource group exists, else false."""
    emit(ctx, _exists(ctx, name))


def _exists(ctx: typer.Context, name: str) -> bool:
    api = client(ctx)
    try:
        api.request("HEAD", api.group_path(name))
    except CliError as exc:
        if exc.status == 404:
            return False
        raise
    return True


@app.command("list")
def list_groups(ctx: typer.Context) -> None:
    """List the resource groups of the subscription."""
    api = client(ctx)
    emit(ctx, api.get_pages(f"{api.subscription_path}/resourcegroups"), GROUP_COLUMNS)


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: NameOption,
    no_wait: NoWaitOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not prompt for confirmation.")] = False,
) -> None:
    """Delete a resource group with every scale set in it, their instances and disks."""
    confirm_or_refuse(f"Delete resource group {name!r} and everything in it?", yes)
    api = client(ctx)
    api.begin("DELETE", api.group_path(name), wait=not no_wait)
