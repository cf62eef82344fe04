"""What every command group shares: the per-invocation state, the client, output and common options."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from scaleset.cli.client import (
    DEFAULT_ENDPOINT,
    DEFAULT_SUBSCRIPTION,
    ApiClient,
    CaCertError,
    ClientConfig,
    CliError,
    resolve_token,
)
from scaleset.cli.output import Column, OutputFormat, render


@dataclass
class State:
    """The global options of one invocation (set by the root callback, read by the commands)."""

    endpoint: str
    token: str | None
    subscription: str
    ca_cert: str | None
    output: OutputFormat
    debug: bool = False
    _client: ApiClient | None = field(default=None, repr=False)

    def client(self) -> ApiClient:
        if self._client is None:
            config = ClientConfig(
                endpoint=self.endpoint,
                token=resolve_token(self.token),
                subscription=self.subscription,
                ca_cert=self.ca_cert,
            )
            try:
                self._client = ApiClient(config, debug=self.debug)
            except CaCertError as exc:
                raise typer.BadParameter(str(exc), param_hint="--ca-cert") from exc
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def state(ctx: typer.Context) -> State:
    obj = ctx.find_object(State)
    if obj is None:  # a command run without the root callback (an embedding, a test)
        obj = State(
            endpoint=DEFAULT_ENDPOINT,
            token=None,
            subscription=DEFAULT_SUBSCRIPTION,
            ca_cert=None,
            output=OutputFormat.json,
        )
        ctx.obj = obj
    return obj


def client(ctx: typer.Context) -> ApiClient:
    return state(ctx).client()


def emit(ctx: typer.Context, data: Any, columns: Sequence[Column] | None = None) -> None:
    render(data, state(ctx).output, columns)


def usage_error(message: str, param_hint: str | None = None) -> typer.BadParameter:
    """A usage error (exit code 2) about one option."""
    return typer.BadParameter(message, param_hint=param_hint)


def group_location(api: ApiClient, group: str) -> str:
    """The resource group's location: where a resource created without --location goes."""
    resource_group = api.get(api.group_path(group))
    location = resource_group.get("location") if isinstance(resource_group, dict) else None
    if not isinstance(location, str) or not location:
        raise CliError("MissingLocation", f"resource group {group!r} has no location; pass --location")
    return location


def confirm_or_refuse(question: str, yes: bool) -> None:
    """Ask before something destructive; with no terminal to ask on, refuse unless `--yes`."""
    if yes:
        return
    if not sys.stdin.isatty():
        typer.echo(f"{question} Cannot ask: stdin is not a terminal. Pass --yes to confirm.", err=True)
        raise typer.Exit(2)
    if not typer.confirm(question, default=False):
        raise typer.Abort()


# Options most commands share (az's names).
GroupOption = Annotated[
    str, typer.Option("--resource-group", "-g", help="Name of the resource group.", show_default=False)
]
NoWaitOption = Annotated[
    bool, typer.Option("--no-wait", help="Do not wait for the long-running operation to finish.")
]


def bool_value(value: str | None, flag: str) -> bool | None:
    """az's true/false option values (`--enable-auto-upgrade true`)."""
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise usage_error(f"expected true or false, got {value!r}", flag)
