"""`scaleset network lb ...`: load balancers and their health probes, with az's command and flag names.

A probe is a part of its load balancer, so `probe create` and `probe delete` do what az does: GET the
load balancer, change its `probes`, PUT it back.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from scaleset.cli.client import ApiClient, CliError, segment
from scaleset.cli.commands_common import GroupOption, client, emit, usage_error
from scaleset.cli.commands_vmss import resource_group_of
from scaleset.cli.output import Column, col
from scaleset.cli.paths import parse_tags

app = typer.Typer(name="network", help="Manage network resources: load balancers.", no_args_is_help=True)
lb_app = typer.Typer(
    name="lb", help="Manage load balancers (their probes are scale-set health sources).", no_args_is_help=True
)
probe_app = typer.Typer(
    name="probe", help="Manage the health probes of a load balancer.", no_args_is_help=True
)
app.add_typer(lb_app, name="lb")
lb_app.add_typer(probe_app, name="probe")

READ_ONLY_TOP_LEVEL = ("id", "name", "type", "etag")


class ProbeProtocol(StrEnum):
    Http = "Http"
    Https = "Https"
    Tcp = "Tcp"


LB_COLUMNS = [
    col("Name", "name"),
    Column("ResourceGroup", resource_group_of),
    col("Location", "location"),
    Column("Probes", lambda lb: len((lb.get("properties") or {}).get("probes") or [])),
    col("ProvisioningState", "properties", "provisioningState"),
]
PROBE_COLUMNS = [
    col("Name", "name"),
    Column("ResourceGroup", resource_group_of),
    col("Protocol", "properties", "protocol"),
    col("Port", "properties", "port"),
    col("RequestPath", "properties", "requestPath"),
    col("IntervalInSeconds", "properties", "intervalInSeconds"),
    col("NumberOfProbes", "properties", "numberOfProbes"),
    col("ProbeThreshold", "properties", "probeThreshold"),
    col("ProvisioningState", "properties", "provisioningState"),
]

NameOption = Annotated[
    str, typer.Option("--name", "-n", help="Name of the load balancer.", show_default=False)
]
LbNameOption = Annotated[
    str, typer.Option("--lb-name", help="Name of the load balancer.", show_default=False)
]
ProbeNameOption = Annotated[str, typer.Option("--name", "-n", help="Name of the probe.", show_default=False)]


def lb_path(api: ApiClient, group: str, *parts: str) -> str:
    """`/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Network/loadBalancers/<parts>`."""
    tail = "/".join(segment(part) for part in parts)
    base = (
        f"{api.subscription_path}/resourceGroups/{segment(group)}/providers/Microsoft.Network/loadBalancers"
    )
    return f"{base}/{tail}" if tail else base


def probe_body(
    name: str,
    protocol: ProbeProtocol,
    port: int,
    path: str | None,
    interval: int | None,
    number_of_probes: int | None,
    probe_threshold: int | None,
) -> dict[str, Any]:
    """A probe as it goes into the load balancer's `probes`; what is not given takes the server's default."""
    properties: dict[str, Any] = {"protocol": protocol.value, "port": port}
    optional = {
        "requestPath": path,
        "intervalInSeconds": interval,
        "numberOfProbes": number_of_probes,
        "probeThreshold": probe_threshold,
    }
    properties.update((key, value) for key, value in optional.items() if value is not None)
    return {"name": name, "properties": properties}


def with_probe(load_balancer: dict[str, Any], probe: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The load balancer's PUT body with the probe `name` replaced by `probe` (or removed when None)."""
    body = {k: v for k, v in load_balancer.items() if k not in READ_ONLY_TOP_LEVEL}
    properties = dict(body.get("properties") or {})
    properties.pop("provisioningState", None)
    probes = [p for p in properties.get("probes") or [] if str(p.get("name", "")).lower() != name.lower()]
    if probe is not None:
        probes.append(probe)
    properties["probes"] = probes
    body["properties"] = properties
    return body


def _probe_named(load_balancer: Any, name: str) -> dict[str, Any]:
    for probe in (load_balancer.get("properties") or {}).get("probes") or []:
        if str(probe.get("name", "")).lower() == name.lower():
            return dict(probe)
    raise CliError("ResourceNotFound", f"the load balancer has no probe named {name!r}", status=404)


# --- load balancers --------------------------------------------------------------------------


@lb_app.command("create")
def create(
    ctx: typer.Context,
    group: GroupOption,
    name: NameOption,
    location: Annotated[
        str | None, typer.Option("--location", "-l", help="Location; defaults to the resource group's.")
    ] = None,
    tags: Annotated[
        list[str] | None, typer.Option("--tags", help="Space-separated tags: key=value. Repeatable.")
    ] = None,
) -> None:
    """Create a load balancer with no probes (or replace one: its probes are dropped, as az's create
    does)."""
    try:
        tag_map = parse_tags(tags or [])
    except ValueError as exc:
        raise usage_error(str(exc), "--tags") from exc
    api = client(ctx)
    if location is None:
        location = str((api.get(api.group_path(group)) or {}).get("location") or "")
    body = {"location": location, "tags": tag_map, "properties": {"probes": []}}
    emit(ctx, api.begin("PUT", lb_path(api, group, name), body), LB_COLUMNS)


@lb_app.command("show")
def show(ctx: typer.Context, group: GroupOption, name: NameOption) -> None:
    """Show a load balancer."""
    api = client(ctx)
    emit(ctx, api.get(lb_path(api, group, name)), LB_COLUMNS)


@lb_app.command("list")
def list_load_balancers(ctx: typer.Context, group: GroupOption) -> None:
    """List the load balancers of a resource group."""
    api = client(ctx)
    emit(ctx, api.get_pages(lb_path(api, group)), LB_COLUMNS)


@lb_app.command("delete")
def delete(ctx: typer.Context, group: GroupOption, name: NameOption) -> None:
    """Delete a load balancer (refused while a scale set uses one of its probes)."""
    api = client(ctx)
    api.begin("DELETE", lb_path(api, group, name))


# --- probes ----------------------------------------------------------------------------------


@probe_app.command("create")
def probe_create(
    ctx: typer.Context,
    group: GroupOption,
    lb_name: LbNameOption,
    name: ProbeNameOption,
    protocol: Annotated[
        ProbeProtocol, typer.Option("--protocol", case_sensitive=False, help="Http, Https or Tcp.")
    ],
    port: Annotated[int, typer.Option("--port", help="Port to probe, 1-65535.", show_default=False)],
    path: Annotated[
        str | None, typer.Option("--path", help="Request path for Http(s), e.g. /health.")
    ] = None,
    interval: Annotated[
        int | None, typer.Option("--interval", help="Seconds between probes (at least 5; default 15).")
    ] = None,
    threshold: Annotated[
        int | None,
        typer.Option(
            "--threshold",
            "--number-of-probes",
            help="Consecutive failed probes before an instance is unhealthy (default 2).",
        ),
    ] = None,
    probe_threshold: Annotated[
        int | None,
        typer.Option(
            "--probe-threshold",
            help="Consecutive probes that change the verdict either way; when set it is used instead of "
            "--threshold.",
        ),
    ] = None,
) -> None:
    """Add a probe to a load balancer, or replace the one with the same name."""
    api = client(ctx)
    path_of_lb = lb_path(api, group, lb_name)
    probe = probe_body(name, protocol, port, path, interval, threshold, probe_threshold)
    updated = api.begin("PUT", path_of_lb, with_probe(api.get(path_of_lb), probe, name))
    emit(ctx, _probe_named(updated, name), PROBE_COLUMNS)


@probe_app.command("show")
def probe_show(ctx: typer.Context, group: GroupOption, lb_name: LbNameOption, name: ProbeNameOption) -> None:
    """Show a probe of a load balancer."""
    api = client(ctx)
    emit(ctx, api.get(lb_path(api, group, lb_name, "probes", name)), PROBE_COLUMNS)


@probe_app.command("list")
def probe_list(ctx: typer.Context, group: GroupOption, lb_name: LbNameOption) -> None:
    """List the probes of a load balancer."""
    api = client(ctx)
    emit(ctx, api.get_pages(lb_path(api, group, lb_name, "probes")), PROBE_COLUMNS)


@probe_app.command("delete")
def probe_delete(
    ctx: typer.Context, group: GroupOption, lb_name: LbNameOption, name: ProbeNameOption
) -> None:
    """Remove a probe from a load balancer (refused while a scale set uses it)."""
    api = client(ctx)
    path_of_lb = lb_path(api, group, lb_name)
    current = api.get(path_of_lb)
    _probe_named(current, name)
    api.begin("PUT", path_of_lb, with_probe(current, None, name))
