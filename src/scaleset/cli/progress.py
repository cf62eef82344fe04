"""Watching an upgrade to its end, and an exit code that says how it ended.

`rolling-upgrade start`, `start-extension-upgrade`, `upgrade-domain-walk` and `update-instances` wait by
default. While they wait they show what the server reports: on a terminal a live Rich display (status,
a bar of instances done, the counts, every batch with its update domain, zone and instances), anywhere
else one plain line each time something changed, so scripts and tests can read it:

    RollingForward: batch 1 (update domain 0): 0=upgrading 2=upgrading; 0 succeeded, 0 failed, …
    Completed: 4 succeeded, 0 failed, 0 in progress, 0 pending

The exit code is the verdict (docs/cli.md, cli/main.py): see `ExitCode`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import urlparse

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from scaleset.cli.client import ApiClient, CliError, Started, is_terminal
from scaleset.cli.output import console, print_error

Json = dict[str, Any]
ACTIVE_STATUSES = ("RollingForward", "RollingBack")
COUNTS = (
    ("successfulInstanceCount", "succeeded"),
    ("failedInstanceCount", "failed"),
    ("inProgressInstanceCount", "in progress"),
    ("pendingInstanceCount", "pending"),
)


class ExitCode(IntEnum):
    """How a waiting command ended. 1 and 2 keep the meaning they have for every command."""

    COMPLETED = 0  # every instance runs the target model
    API_ERROR = 1  # the API refused a request, or could not be reached
    USAGE = 2  # a usage error
    FAULTED = 3  # the run stopped Faulted (a health gate), or a manual upgrade's operation failed
    ROLLED_BACK = 4  # the run stopped Faulted and rolled its failed instances back
    CANCELLED = 5  # the run was cancelled (`rolling-upgrade cancel`)
    NOT_STARTED = 6  # the server refused to start it (another run is active, no such set, …)


@dataclass(frozen=True)
class Verdict:
    code: ExitCode
    line: str


# ----------------------------------------------------------------------------------- what a run shows
@dataclass(frozen=True)
class RunSnapshot:
    """One run as `rollingUpgrades/latest/batches` shows it (routes_walks.py): status, counts, batches."""

    status: str
    progress: dict[str, int]
    batches: tuple[Json, ...]
    error: Json | None
    rolled_back: int = 0
    rollback_failed: int = 0

    @classmethod
    def of(cls, run: Json) -> RunSnapshot:
        progress = run.get("progress") or {}
        rollback = run.get("rollbackInfo") or {}
        return cls(
            status=str(run.get("status") or "Unknown"),
            progress={key: int(progress.get(key) or 0) for key, _ in COUNTS},
            batches=tuple(run.get("value") or ()),
            error=run.get("error"),
            rolled_back=int(rollback.get("successfullyRolledbackInstanceCount") or 0),
            rollback_failed=int(rollback.get("failedRolledbackInstanceCount") or 0),
        )

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


def counts_text(progress: dict[str, int]) -> str:
    return ", ".join(f"{progress.get(key, 0)} {label}" for key, label in COUNTS)


def where(batch: Json) -> str:
    """`update domain 0` or `update domain 0, zone 2`: where a batch runs."""
    place = f"update domain {batch.get('updateDomain')}"
    return f"{place}, zone {batch['zone']}" if batch.get("zone") else place


def members_text(batch: Json) -> str:
    return " ".join(f"{m.get('instanceId')}={m.get('state')}" for m in batch.get("instances") or [])


def run_line(snapshot: RunSnapshot) -> str:
    """The plain line for one look at a run (the current batch is the newest)."""
    if not snapshot.batches:
        return f"{snapshot.status}: no batch started yet; {counts_text(snapshot.progress)}"
    batch = snapshot.batches[-1]
    return (
        f"{snapshot.status}: batch {batch.get('batch')} ({where(batch)}): {members_text(batch)}; "
        f"{counts_text(snapshot.progress)}"
    )


def run_verdict(snapshot: RunSnapshot) -> Verdict:
    """How a finished run ended: Completed → 0, Cancelled → 5, Faulted → 3, or 4 when it rolled its
    failed instances back (every rollback succeeded; a failed rollback stays 3, the worse news)."""
    counts = counts_text(snapshot.progress)
    error = snapshot.error or {}
    reason = f" ({error.get('code')}) {error.get('message')}" if error.get("code") else ""
    if snapshot.status == "Completed":
        return Verdict(ExitCode.COMPLETED, f"Completed: {counts}")
    if snapshot.status == "Cancelled":
        return Verdict(ExitCode.CANCELLED, f"Cancelled: {counts}")
    if snapshot.status == "Faulted" and snapshot.rolled_back and not snapshot.rollback_failed:
        return Verdict(
            ExitCode.ROLLED_BACK, f"RolledBack: {counts}; {snapshot.rolled_back} rolled back;{reason}"
        )
    return Verdict(ExitCode.FAULTED, f"{snapshot.status}: {counts};{reason}")


def run_renderable(title: str, snapshot: RunSnapshot) -> RenderableType:
    total = sum(snapshot.progress.values())
    done = snapshot.progress["successfulInstanceCount"] + snapshot.progress["failedInstanceCount"]
    table = Table("Batch", "Where", "Instances", box=None, header_style="bold", pad_edge=False)
    for batch in snapshot.batches:
        table.add_row(str(batch.get("batch")), where(batch), members_text(batch))
    # A progress bar does not end its line by itself: a grid row gives it one, with the counts beside it.
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(total, 1), completed=done, width=30),
        Text(f"{done} of {total} instances done; {counts_text(snapshot.progress)}"),
    )
    return Group(Text(f"{title}: {snapshot.status}", style="bold"), bar, table)


# ------------------------------------------------------------------------- what a manual upgrade shows
@dataclass(frozen=True)
class InstancesSnapshot:
    """A manual upgrade's operation status and the provisioning state of the instances it touches."""

    status: str
    states: tuple[tuple[str, str], ...]  # (instance id, provisioning state)
    error: Json | None

    @classmethod
    def of(cls, operation: Json, vms: Sequence[Json], chosen: set[str] | None) -> InstancesSnapshot:
        states = tuple(
            (str(vm.get("instanceId")), str((vm.get("properties") or {}).get("provisioningState")))
            for vm in vms
            if chosen is None or str(vm.get("instanceId")) in chosen
        )
        return cls(str(operation.get("status")), states, operation.get("error"))


def instances_line(snapshot: InstancesSnapshot) -> str:
    states = " ".join(f"{i}={state}" for i, state in snapshot.states)
    return f"{snapshot.status}: {states}" if states else snapshot.status


def instances_verdict(snapshot: InstancesSnapshot) -> Verdict:
    status = snapshot.status.lower()
    error = snapshot.error or {}
    reason = f" ({error.get('code')}) {error.get('message')}" if error.get("code") else ""
    if status == "succeeded":
        return Verdict(ExitCode.COMPLETED, f"Completed: {instances_line(snapshot).split(': ', 1)[-1]}")
    if status == "canceled":
        return Verdict(ExitCode.CANCELLED, f"Cancelled:{reason}")
    return Verdict(ExitCode.FAULTED, f"Failed:{reason}")


def instances_renderable(title: str, snapshot: InstancesSnapshot) -> RenderableType:
    table = Table("Instance", "ProvisioningState", box=None, header_style="bold", pad_edge=False)
    for instance_id, state in snapshot.states:
        table.add_row(instance_id, state)
    return Group(Text(f"{title}: {snapshot.status}", style="bold"), table)


# ------------------------------------------------------------------------------------------ displays
class Display:
    """Plain lines, one per change (stdout not a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last: str | None = None

    def __enter__(self) -> Display:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        return None

    def show(self, line: str, renderable: Callable[[], RenderableType], final: bool = False) -> None:
        # The final look is not printed: the verdict line that follows says the same, and more.
        if line != self._last and not final:
            self._stream.write(line + "\n")
            self._stream.flush()
            self._last = line

    def finish(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


class LiveDisplay(Display):
    """A Rich live display, redrawn in place (stdout a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._live = Live(Text(""), console=console(stream), refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveDisplay:
        self._live.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._live.__exit__(kind, error, trace)

    def show(self, line: str, renderable: Callable[[], RenderableType], final: bool = False) -> None:
        self._live.update(renderable(), refresh=True)


def display_for(stream: TextIO | None = None) -> Display:
    out = stream or sys.stdout
    return LiveDisplay(out) if out.isatty() else Display(out)


# ----------------------------------------------------------------------------------------- watching
class Watcher:
    """Polls the server until an operation ends, showing each look on a display."""

    def __init__(self, api: ApiClient, display: Display) -> None:
        self._api = api
        self._display = display

    def run(self, group: str, name: str, started: Started, title: str) -> Verdict:
        """Follow a rolling-upgrade run (any kind) to its end; the verdict comes from its final status.

        The run is looked up by the operation its start answered with, so a run someone starts right
        after ours ended is never mistaken for ours."""
        path = self._api.vmss_path(group, name, "rollingUpgrades", "latest", "batches")
        params = {"operationId": operation_id(started.status_url)} if started.status_url else None

        def look() -> RunSnapshot:
            return RunSnapshot.of(self._api.get(path, params))

        with self._display:
            snapshot = self._follow(
                started,
                look,
                lambda s: (run_line(s), lambda: run_renderable(title, s)),
                ended=None,
                done=lambda s: not s.active,
            )
        verdict = run_verdict(snapshot)
        self._display.finish(verdict.line)
        return verdict

    def instances(
        self, group: str, name: str, started: Started, chosen: set[str] | None, title: str
    ) -> Verdict:
        """Follow a manual upgrade's operation, showing the provisioning state of its instances."""
        vms_path = self._api.vmss_path(group, name, "virtualMachines")
        status: Json = {"status": "Succeeded"}

        def look() -> InstancesSnapshot:
            return InstancesSnapshot.of(status, self._api.get_pages(vms_path), chosen)

        def operation() -> bool:
            nonlocal status
            if started.status_url is not None:
                status = self._api.operation_status(started.status_url)
            return is_terminal(str(status["status"]))

        with self._display:
            snapshot = self._follow(
                started,
                look,
                lambda s: (instances_line(s), lambda: instances_renderable(title, s)),
                operation,
            )
        verdict = instances_verdict(snapshot)
        self._display.finish(verdict.line)
        return verdict

    def _follow(
        self,
        started: Started,
        look: Callable[[], Any],
        draw: Callable[[Any], tuple[str, Callable[[], RenderableType]]],
        ended: Callable[[], bool] | None = None,
        done: Callable[[Any], bool] | None = None,
    ) -> Any:
        """Look, show, sleep until it is over: `done(snapshot)` says so from a look itself, or else
        `ended()` (the operation), asked before the look so that the last look shows the final state."""
        deadline = self._api.lro.clock() + self._api.lro.timeout
        delay = started.delay
        while True:
            over = ended() if ended is not None else False
            snapshot = look()
            over = over or (done is not None and done(snapshot))
            line, renderable = draw(snapshot)
            self._display.show(line, renderable, final=over)
            if over:
                return snapshot
            if self._api.lro.clock() > deadline:
                raise CliError(
                    "OperationTimedOut",
                    f"still running after {self._api.lro.timeout:.0f}s; it goes on on the server",
                )
            self._api.lro.sleep(delay)
            delay = self._api.lro.default_delay


def operation_id(status_url: str) -> str:
    """The operation's id: the last segment of its Azure-AsyncOperation URL's path."""
    return urlparse(status_url).path.rstrip("/").rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------------- for commands
def start_or_refuse(api: ApiClient, path: str, body: Any = None) -> Started:
    """POST a start; a refusal from the server (an ARM error answer) exits with NOT_STARTED.

    A server that cannot be reached is not a refusal: that stays exit code 1, as for every command."""
    try:
        return api.start("POST", path, body)
    except CliError as exc:
        if exc.status is None:
            raise
        print_error(exc.code, exc.message, exc.target)
        raise typer.Exit(int(ExitCode.NOT_STARTED)) from exc


def conclude(verdict: Verdict) -> None:
    """Exit with the verdict's code; a run that did not complete also says why on stderr."""
    if verdict.code is ExitCode.COMPLETED:
        return
    print(f"ERROR {verdict.line}", file=sys.stderr)
    raise typer.Exit(int(verdict.code))


def watch_run(api: ApiClient, group: str, name: str, started: Started, title: str) -> None:
    """Follow a started run to its end on this terminal (or as plain lines), then exit with its verdict."""
    conclude(Watcher(api, display_for()).run(group, name, started, title))
