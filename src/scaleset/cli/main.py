"""The `scaleset` command: the server (`serve`) and az-like commands that talk to its HTTP API.

Exit codes: 0 success, 1 an error from the API (printed as `ERROR (<code>) <message>`), 2 a usage
error. The commands that start an upgrade and wait for it (`vmss rolling-upgrade start`,
`start-extension-upgrade`, `vmss upgrade-domain-walk`, `vmss update-instances`) say how it ended:
3 faulted, 4 faulted and rolled back, 5 cancelled, 6 refused to start (cli/progress.py `ExitCode`,
docs/cli.md). Global options (`--endpoint`, `--token`, `--subscription`, `--ca-cert`, `-o`) may be given
anywhere on the command line, as with az.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from scaleset.cli import (
    commands_extension,
    commands_extension_platform,
    commands_gallery,
    commands_group,
    commands_history,
    commands_image,
    commands_network,
    commands_plan,
    commands_platform,
    commands_rolling,
    commands_rollout,
    commands_token,
    commands_vm,  # noqa: F401  (registers vm create/… on commands_image.vm_app)
    commands_vmss,
)
from scaleset.cli.client import DEFAULT_ENDPOINT, DEFAULT_SUBSCRIPTION, CliError
from scaleset.cli.commands_common import State
from scaleset.cli.output import OutputFormat, print_error
from scaleset.cli.paths import normalize_argv


def serve_command() -> Any:
    """The `serve` command, built from `scaleset.cli.serve.serve` (imported only now)."""
    from scaleset.cli.serve import serve

    serve_app = typer.Typer()
    serve_app.command("serve")(serve)
    return typer.main.get_command(serve_app)


class RootGroup(TyperGroup):
    """The root command group, which loads `serve` only when it is asked for.

    `serve` pulls in the whole server (FastAPI, SQLAlchemy, uvicorn, the engine): seconds of imports
    that the client commands, which only speak HTTP, should not pay on every run.
    """

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return names if "serve" in names else ["serve", *names]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name == "serve" and "serve" not in self.commands:
            self.add_command(serve_command(), "serve")
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="scaleset",
    cls=RootGroup,
    help="A self-hosted control plane for VM scale sets that speaks Azure's Compute REST API.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    endpoint: Annotated[
        str, typer.Option("--endpoint", envvar="SCALESET_ENDPOINT", help="Base URL of the scaleset server.")
    ] = DEFAULT_ENDPOINT,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="SCALESET_TOKEN",
            help="API token. Default: the admin token in $SCALESET_DATA_DIR (or ~/.scaleset)/admin.token.",
            show_default=False,
        ),
    ] = None,
    subscription: Annotated[
        str, typer.Option("--subscription", envvar="SCALESET_SUBSCRIPTION", help="Subscription id.")
    ] = DEFAULT_SUBSCRIPTION,
    ca_cert: Annotated[
        str | None,
        typer.Option(
            "--ca-cert",
            envvar="SCALESET_CA_CERT",
            help="PEM certificate to trust for https (the server's self-signed one).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        OutputFormat,
        typer.Option("--output", "-o", case_sensitive=False, help="Output format: json, table or tsv."),
    ] = OutputFormat.json,
    debug: Annotated[bool, typer.Option("--debug", help="Log every HTTP request to stderr.")] = False,
) -> None:
    """Global options; they may also be given after the command (`scaleset vmss list -o table`)."""
    current = State(
        endpoint=endpoint,
        token=token,
        subscription=subscription,
        ca_cert=ca_cert,
        output=output,
        debug=debug,
    )
    ctx.obj = current
    ctx.call_on_close(current.close)


app.add_typer(commands_group.app, name="group")
app.add_typer(commands_vmss.app, name="vmss")
commands_vmss.app.add_typer(commands_rolling.app, name="rolling-upgrade")
commands_vmss.app.command("get-os-upgrade-history")(commands_history.get_os_upgrade_history)
commands_vmss.app.command("list-blocked-image-versions")(commands_platform.list_blocked_image_versions)
commands_vmss.app.command("clear-blocked-image-versions")(commands_platform.clear_blocked_image_versions)
commands_vmss.app.command("approve-rolling-upgrade")(commands_platform.approve_rolling_upgrade)
commands_rolling.app.command("plan")(commands_plan.plan)
app.add_typer(commands_image.vm_app, name="vm")
app.add_typer(commands_image.image_app, name="image")
app.add_typer(commands_token.app, name="token")
app.add_typer(commands_extension.app, name="extension")
app.add_typer(commands_network.app, name="network")
app.add_typer(commands_gallery.app, name="sig")
app.add_typer(commands_rollout.app, name="rollout")
app.add_typer(commands_extension_platform.app, name="extension-upgrade")
commands_vmss.app.add_typer(commands_extension_platform.vmss_extension_app, name="extension")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `scaleset` console script."""
    args = normalize_argv(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="scaleset")
    except CliError as exc:
        print_error(exc.code, exc.message, exc.target)
        sys.exit(1)


if __name__ == "__main__":
    main()
