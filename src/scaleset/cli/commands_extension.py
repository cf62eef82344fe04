"""`scaleset extension publish|list` (the extension handler catalog)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scaleset.cli.client import json_body
from scaleset.cli.commands_common import client, emit
from scaleset.cli.commands_image import read_artifact
from scaleset.cli.output import col

app = typer.Typer(
    name="extension", help="Extension handler packages (publish needs admin).", no_args_is_help=True
)

COLUMNS = [col("Name", "name"), col("SupportsMultipleExtensions", "properties", "supportsMultipleExtensions")]


@app.command("publish")
def publish(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            help="A handler package directory, or a .zip/.tar.gz of one, with a HandlerManifest.json.",
            show_default=False,
        ),
    ],
    publisher: Annotated[str, typer.Option("--publisher", "-p")],
    type_: Annotated[str, typer.Option("--type", "-t", help="Extension type, e.g. CustomScript.")],
    version: Annotated[str, typer.Option("--version", help="Version, e.g. 2.1.0.")],
) -> None:
    """Publish an extension handler package version (needs an admin token)."""
    content, content_type = read_artifact(path)
    response = client(ctx).request(
        "POST",
        "/scaleset/admin/extensions",
        params={"publisher": publisher, "type": type_, "version": version},
        content=content,
        headers={"Content-Type": content_type},
        timeout=600.0,
    )
    emit(ctx, json_body(response), COLUMNS)


@app.command("list-versions")
def list_versions(
    ctx: typer.Context,
    publisher: Annotated[str, typer.Option("--publisher", "-p")],
    type_: Annotated[str, typer.Option("--type", "-t")],
    location: Annotated[str, typer.Option("--location", "-l")] = "eastus",
) -> None:
    """List the published versions of an extension (VirtualMachineExtensionImages)."""
    api = client(ctx)
    path = api.location_path(
        location, "publishers", publisher, "artifacttypes", "vmextension", "types", type_, "versions"
    )
    emit(ctx, api.get(path), COLUMNS)
