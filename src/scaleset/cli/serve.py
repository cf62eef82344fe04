"""`scaleset serve`: the API, the engine and the local provider in one process."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.text import Text

from scaleset.api.app import create_app
from scaleset.bootstrap import Settings, build, tune_garbage_collection
from scaleset.cli.tls import ensure_certificate, is_loopback
from scaleset.observability.logs import LogFormat, configure_logging
from scaleset.services.addresses import DEFAULT_POOL
from scaleset.services.rollouts import load_rollout_phases

console = Console(stderr=True)


def announcer(log_format: LogFormat) -> Callable[..., None]:
    """How serve tells the operator things: Rich on the terminal, or, with `--log-format json`, log
    records, so that every line of the server's output is one JSON object for the shipper."""
    if log_format is LogFormat.human:
        return lambda markup, level=logging.INFO: console.print(markup)
    log = logging.getLogger("scaleset.serve")
    return lambda markup, level=logging.INFO: log.log(level, Text.from_markup(markup).plain)


def default_data_dir() -> Path:
    return Path(os.environ.get("SCALESET_DATA_DIR") or Path.home() / ".scaleset")


def serve(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the database, images and instances live [default: $SCALESET_DATA_DIR or ~/.scaleset]"
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; a non-loopback one needs --tls")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8420,
    database_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL [default: SQLite in the data dir; only SQLite is tested so far]"),
    ] = None,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Serve https with a self-signed certificate made in the data directory on first start",
        ),
    ] = False,
    address_pool: Annotated[
        str, typer.Option(help="Loopback range instances get their addresses from")
    ] = DEFAULT_POOL,
    page_size: Annotated[
        int,
        typer.Option(
            help="Instances per page when listing scale-set VMs; entries per page of the OS upgrade history"
        ),
    ] = 100,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo", help="Publish the sample images and create a demo scale set once the server is up"
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    log_format: Annotated[
        LogFormat,
        typer.Option(
            help="human: one readable line per record; json: one JSON object per line (for log shippers)"
        ),
    ] = LogFormat.human,
    metrics_public: Annotated[
        bool,
        typer.Option(
            "--metrics-public",
            help="Let GET /metrics answer without a token (for Prometheus on a trusted network)",
        ),
    ] = False,
    rollout_phases: Annotated[
        Path | None,
        typer.Option(
            envvar="SCALESET_ROLLOUT_PHASES",
            help="JSON file of the rollout phases of platform upgrades: a list of phases, each a list of "
            "regions (docs/availability-first.md) [default: the built-in phases]",
        ),
    ] = None,
) -> None:
    """Run the control plane: Azure's Compute REST API, the engine and the local provider."""
    configure_logging(log_level, log_format)
    say = announcer(log_format)
    if not tls and not is_loopback(host):
        say(
            f"[red]Refusing to serve plain http on {host}[/red]: bearer tokens would cross the "
            "network unencrypted. Add --tls (a self-signed certificate is made for you) or listen "
            "on 127.0.0.1.",
            logging.ERROR,
        )
        raise typer.Exit(2)
    directory = (data_dir or default_data_dir()).resolve()
    try:
        load_rollout_phases(rollout_phases)
    except ValueError as error:  # refuse to start on a bad file rather than roll out in a wrong order
        say(f"[red]Refusing to start[/red]: {error}", logging.ERROR)
        raise typer.Exit(2) from None
    settings = Settings(
        data_dir=directory,
        database_url=database_url,
        address_pool=address_pool,
        page_size=page_size,
        rollout_phases=rollout_phases,
    )
    tune_garbage_collection()
    container = build(settings)
    container.start()
    token_path = container.tokens.ensure_admin_token(directory)
    scheme = "https" if tls else "http"
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    endpoint = f"{scheme}://{shown_host}:{port}"
    cert_file: str | None = None
    key_file: str | None = None
    if tls:
        cert, key = ensure_certificate(directory, host)
        cert_file, key_file = str(cert), str(key)
        say(
            f"TLS: clients trust [bold]{cert}[/bold] (SDK: connection_verify='{cert}'; "
            f"CLI: SCALESET_CA_CERT={cert}; curl: --cacert {cert})"
        )
    say(f"scaleset {endpoint}  data: {directory}  admin token: {token_path}")
    if demo:
        from scaleset.cli.demo import run_demo_when_ready

        threading.Thread(
            target=run_demo_when_ready,
            args=(endpoint, token_path, cert_file),
            daemon=True,
            name="scaleset-demo",
        ).start()
    try:
        uvicorn.run(
            create_app(container, metrics_public=metrics_public),
            host=host,
            port=port,
            log_level=log_level.lower(),
            # Uvicorn's loggers propagate to ours (configure_logging): one format, with the log context.
            log_config=None,
            timeout_graceful_shutdown=5,
            ssl_certfile=cert_file,
            ssl_keyfile=key_file,
        )
    finally:
        container.close()
