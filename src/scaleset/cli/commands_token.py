"""`scaleset token ...`: API tokens (admin)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from scaleset.cli.client import json_body
from scaleset.cli.commands_common import client, emit, state
from scaleset.cli.output import OutputFormat

app = typer.Typer(name="token", help="Manage API tokens (needs an admin token).", no_args_is_help=True)


class Role(StrEnum):
    reader = "reader"
    contributor = "contributor"
    admin = "admin"


@app.command("create")
def create(
    ctx: typer.Context,
    role: Annotated[
        Role,
        typer.Option(
            "--role",
            case_sensitive=False,
            help="reader: GET only; contributor: also writes; admin: also publishes images and mints tokens.",
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="A label to recognise the token by.")
    ] = None,
) -> None:
    """Mint a token. It is shown once: keep it."""
    body: dict[str, Any] = {"role": role.value}
    if name:
        body["name"] = name
    created = json_body(client(ctx).request("POST", "/scaleset/admin/tokens", body=body))
    if state(ctx).output is OutputFormat.json:
        emit(ctx, created)
    else:  # for people and shells: the token alone, ready to paste or capture
        emit(ctx, created.get("token") if isinstance(created, dict) else created)
