"""The init process of one local instance: `python -m scaleset.guest.init <instance dir>`.

The local provider's idea of "the instance is powered on" is "this process is alive", the way a VM is on
while its kernel runs, whatever its app does. So this process boots the guest, starts the image's entrypoint
once, logs the app's exit to console.log if it ends, and then keeps the instance running until it is told
to stop (SIGTERM): only then does it end every process of the instance and exit 0. It never restarts the
app; health checks are how a crashed app shows.

Booting, in order (`provision_guest`, then the app):

1. Custom data, as cloud-init runs `osProfile.customData`: once per OS disk, at its first boot, before the
   app (services) start. The script runs from the OS disk with the app's environment; its output goes to
   `<os>/var/log/cloud-init-output.log` and its outcome to `<instance>/custom-data-result.json`. A failing
   script does not keep the app from starting (a VM whose cloud-init failed still boots).
2. The guest agent (`scaleset.guest.agent`) in background threads: it applies `<instance>/goal-state.json`
   at every boot (the real agent re-runs enable after each restart), then again whenever the provider
   writes one with a new incarnation, and writes `<instance>/guest-status.json` every second or so. The
   instance's certificates (`<instance>/certs/`) are copied into the agent's lib dir first, where handlers
   look for them (spec/extension-protocol.md §1.5).

Handlers start daemons (`nohup … &` in a session of their own) that outlive the command that started them.
This process is a child subreaper, so those daemons stay its descendants instead of escaping to pid 1: a
stop ends them with the app, and this process reaps the ones that exit by themselves.

Who records the init: this process writes `init.json` ({pid, start_ticks, create_time}) itself, while it
holds an exclusive lock on `init.lock`. Writing it from inside means no moment exists where a live init has no
record (a server killed right after spawning would otherwise leave an unrecorded, unstoppable init), and
the lock means a second init for the same instance (a restarted server racing a booting one) exits at once
with EXIT_ANOTHER_INIT_RUNNING instead of starting a second app. The provider waits for the record before
it reports the instance started.

This module also owns the instance directory's layout and the format of the files in it, so the provider
that writes them and the init that reads them cannot drift apart. It must start fast: stdlib, psutil and
the provider contract's value types at import; the guest agent is imported once the init has recorded itself.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import psutil

from scaleset.guest.files import write_file_atomically
from scaleset.providers.base import CustomDataResult, ImageArtifact, InstanceSpec

if TYPE_CHECKING:
    from scaleset.guest.agent import GuestAgent
    from scaleset.guest.goalstate import GoalState

# Exit code of an init that found another init already running its instance (the lock is held).
EXIT_ANOTHER_INIT_RUNNING = 3

# How long the app gets to exit after SIGTERM before it is killed. Shorter than the provider's default
# stop timeout (5 s), so a normal stop ends with this process exiting by itself rather than SIGKILL.
APP_STOP_GRACE_SECONDS = 3.0

# Every process of the instance (app, custom data, handler commands and their daemons) carries this
# variable with the OS disk's absolute path: unique per instance and provider root. The provider sweeps
# by it, so a process that escaped the init's tree still dies with the instance.
ENV_OS_DISK = "SCALESET_OS_DISK"

# Guest timings; each can be overridden by the variable named beside it in the init's environment (the
# provider's), which tests use for short polls.
CUSTOM_DATA_TIMEOUT_SECONDS = 900.0
ENV_CUSTOM_DATA_TIMEOUT = "SCALESET_CUSTOM_DATA_TIMEOUT"
GOAL_STATE_POLL_SECONDS = 0.5
ENV_GOAL_STATE_POLL = "SCALESET_GOAL_STATE_POLL_SECONDS"
GUEST_STATUS_SECONDS = 1.0  # also how often exited orphans are reaped
ENV_GUEST_STATUS_INTERVAL = "SCALESET_GUEST_STATUS_SECONDS"

# An orphan this process adopted is reaped once it has been a zombie this long. The delay leaves a child
# somebody else in this process waits for (a handler command the agent thread runs) to its own waiter,
# which collects it within milliseconds: reaping it first would steal its exit status.
ZOMBIE_GRACE_SECONDS = 1.0

# How much of the custom data script's output its failure message carries.
CUSTOM_DATA_TAIL_LINES = 20
CUSTOM_DATA_TAIL_CHARS = 2000
CUSTOM_DATA_STATES = ("running", "succeeded", "failed")

_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class InstanceLayout:
    """Where each piece of a local instance lives inside its directory."""

    root: Path

    @property
    def os_disk(self) -> Path:
        return self.root / "os"

    def data_disk(self, lun: int) -> Path:
        return self.root / "data" / f"lun{lun}"

    @property
    def instance_json(self) -> Path:
        return self.root / "instance.json"

    @property
    def init_json(self) -> Path:
        return self.root / "init.json"

    @property
    def init_lock(self) -> Path:
        return self.root / "init.lock"

    @property
    def generation(self) -> Path:
        return self.root / "generation"

    @property
    def power(self) -> Path:
        return self.root / "power"

    @property
    def console_log(self) -> Path:
        return self.root / "console.log"

    # -- what the provider hands the guest (beside the OS disk, so a reimage keeps it) ------------------

    @property
    def custom_data(self) -> Path:
        """The decoded `osProfile.customData`; absent when the model has none."""
        return self.root / "custom-data"

    @property
    def goal_state(self) -> Path:
        """The guest agent's goal state (`scaleset.guest.goalstate.GOAL_STATE_FILE`)."""
        return self.root / "goal-state.json"

    @property
    def certificates(self) -> Path:
        """`<THUMBPRINT>.crt` and `.prv` for each certificate the guest needs."""
        return self.root / "certs"

    def certificate_files(self, thumbprint: str) -> tuple[Path, Path]:
        return self.certificates / f"{thumbprint}.crt", self.certificates / f"{thumbprint}.prv"

    # -- what the guest reports ------------------------------------------------------------------------

    @property
    def custom_data_result(self) -> Path:
        return self.root / "custom-data-result.json"

    @property
    def guest_status(self) -> Path:
        """The guest agent's status (`scaleset.guest.goalstate.GUEST_STATUS_FILE`)."""
        return self.root / "guest-status.json"

    # -- on the OS disk: where the guest keeps its own state, as on an Azure Linux VM ------------------

    @property
    def agent_lib_dir(self) -> Path:
        return self.os_disk / "var" / "lib" / "waagent"

    @property
    def agent_log_dir(self) -> Path:
        return self.os_disk / "var" / "log" / "azure"

    @property
    def cloud_instance_dir(self) -> Path:
        return self.os_disk / "var" / "lib" / "cloud" / "instance"

    @property
    def user_data(self) -> Path:
        return self.cloud_instance_dir / "user-data.txt"

    @property
    def boot_finished(self) -> Path:
        """Written once the first boot of this OS disk has run its custom data: a reimage (a new disk)
        runs the custom data again, a restart does not."""
        return self.cloud_instance_dir / "boot-finished"

    @property
    def cloud_init_output_log(self) -> Path:
        return self.os_disk / "var" / "log" / "cloud-init-output.log"


def spec_to_json(spec: InstanceSpec) -> str:
    """instance.json. Custom data, goal state and certificates are not in it: they have files of their own
    (some of them secret, all of them read by the guest on its own schedule)."""
    return json.dumps(
        {
            "key": spec.key,
            "address": spec.address,
            "data_disk_luns": list(spec.data_disk_luns),
            "os_disk_generation": spec.os_disk_generation,
            "environment": dict(spec.environment),
            "image": {
                "path": str(spec.image.path),
                "entrypoint": list(spec.image.entrypoint),
                "ports": list(spec.image.ports),
                "environment": dict(spec.image.environment),
            },
        },
        indent=2,
    )


def spec_from_json(text: str) -> InstanceSpec:
    data = json.loads(text)
    image = data["image"]
    return InstanceSpec(
        key=data["key"],
        address=data["address"],
        data_disk_luns=tuple(data["data_disk_luns"]),
        os_disk_generation=data["os_disk_generation"],
        environment=data["environment"],
        image=ImageArtifact(
            path=Path(image["path"]),
            entrypoint=tuple(image["entrypoint"]),
            ports=tuple(image["ports"]),
            environment=image["environment"],
        ),
    )


def custom_data_result_to_json(result: CustomDataResult) -> str:
    return json.dumps({"state": result.state, "exitCode": result.exit_code, "message": result.message})


def custom_data_result_from_json(text: str) -> CustomDataResult:
    """custom-data-result.json; ValueError for anything that is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("state") not in CUSTOM_DATA_STATES:
        raise ValueError("not a custom data result")
    exit_code = data.get("exitCode")
    message = data.get("message", "")
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
        raise ValueError("exitCode must be an integer or null")
    if not isinstance(message, str):
        raise ValueError("message must be a string")
    return CustomDataResult(state=data["state"], exit_code=exit_code, message=message)


def app_environment(spec: InstanceSpec, layout: InstanceLayout) -> dict[str, str]:
    """The entrypoint's environment (docs/images.md); the instance's own variables win over the rest.

    Custom data and handler commands get it too.
    """
    env = dict(os.environ)
    env.update(spec.image.environment)
    env.update(spec.environment)
    data_disks = {str(lun): str(layout.data_disk(lun)) for lun in spec.data_disk_luns}
    env.update(
        {
            "SCALESET_INSTANCE_ADDRESS": spec.address,
            ENV_OS_DISK: str(layout.os_disk),
            "SCALESET_DATA_DISKS": json.dumps(data_disks),
            "SCALESET_INSTANCE_KEY": spec.key,
        }
    )
    # A PORT inherited from the server's own environment would be a lie about this instance.
    env.pop("PORT", None)
    if spec.image.ports:
        env["PORT"] = str(spec.image.ports[0])
    return env


def resolve_entrypoint(entrypoint: Sequence[str], os_disk: Path, search_path: str | None) -> list[str]:
    """A relative command that exists on the OS disk runs from there (`./run.sh`); others come from PATH."""
    if not entrypoint:
        raise FileNotFoundError("the image has an empty entrypoint")
    command, *arguments = entrypoint
    on_disk = os_disk / command
    if not os.path.isabs(command) and on_disk.exists():
        return [str(on_disk), *arguments]
    found = shutil.which(command, path=search_path)
    if found is None:
        raise FileNotFoundError(f"entrypoint command {command!r} is neither on the OS disk nor on PATH")
    return [found, *arguments]


# -- the guest: custom data and the guest agent ---------------------------------------------------------


def provision_guest(
    spec: InstanceSpec, layout: InstanceLayout, env: dict[str, str], housekeeper: Housekeeper
) -> None:
    """Everything that must happen inside the instance before its app starts; never raises (except when
    the instance is told to stop), because whatever fails here, the app still starts.

    Custom data runs to its end first (cloud-init runs user scripts before the boot finishes); the guest
    agent then starts in the background, so a slow extension never delays the app.
    """
    run_custom_data(
        layout, env, _seconds_from_env(ENV_CUSTOM_DATA_TIMEOUT, CUSTOM_DATA_TIMEOUT_SECONDS), housekeeper
    )
    try:
        agent = GuestAgentRunner(
            layout, env, housekeeper, _seconds_from_env(ENV_GOAL_STATE_POLL, GOAL_STATE_POLL_SECONDS)
        )
    except Exception as exc:  # an agent that cannot start must not keep the app from starting
        _log(f"the guest agent could not start: {type(exc).__name__}: {exc}")
        return
    agent.start()


def custom_data_pending(layout: InstanceLayout) -> bool:
    """Whether this boot is the first of its OS disk and has custom data to run."""
    return layout.custom_data.is_file() and not layout.boot_finished.exists()


def run_custom_data(
    layout: InstanceLayout, env: dict[str, str], timeout: float, housekeeper: Housekeeper
) -> None:
    """Run the custom data script if this is the first boot of the OS disk, then mark the boot finished.

    The mark is written however the script ended (a failed script is not retried at the next boot, as
    cloud-init does not), but not when the instance was stopped while it ran: then the next start runs it
    again, as if the first boot had never finished.
    """
    if layout.boot_finished.exists():
        return
    try:
        data: bytes | None = layout.custom_data.read_bytes()
    except FileNotFoundError:
        data = None
    except OSError as exc:
        data = None
        _write_custom_data_result(
            layout, CustomDataResult("failed", None, f"cannot read the custom data: {exc}")
        )
    if data is not None:
        _run_user_script(layout, env, data, timeout, housekeeper)
    _mark_boot_finished(layout)


def _mark_boot_finished(layout: InstanceLayout) -> None:
    if layout.boot_finished.exists():
        return
    try:
        layout.cloud_instance_dir.mkdir(parents=True, exist_ok=True)
        write_file_atomically(layout.boot_finished, time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    except OSError as exc:
        _log(f"cannot write {layout.boot_finished}: {exc}")


def _run_user_script(
    layout: InstanceLayout, env: dict[str, str], data: bytes, timeout: float, housekeeper: Housekeeper
) -> None:
    _write_custom_data_result(layout, CustomDataResult("running"))
    try:
        layout.cloud_instance_dir.mkdir(parents=True, exist_ok=True)
        write_file_atomically(layout.user_data, data, mode=0o700)
        layout.cloud_init_output_log.parent.mkdir(parents=True, exist_ok=True)
        output = layout.cloud_init_output_log.open("ab")
    except OSError as exc:
        _finish_custom_data(
            layout, CustomDataResult("failed", None, f"cannot prepare the custom data script: {exc}")
        )
        return
    with output:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        output.write(f"[scaleset-init {stamp}] running custom data ({layout.user_data.name})\n".encode())
        output.flush()
        start = output.tell()
        # A script with a "#!" line runs as itself, anything else through the shell (cloud-init runs
        # user-data scripts directly; a shell fallback keeps plain command lists working).
        command = [str(layout.user_data)] if data.startswith(b"#!") else ["/bin/sh", str(layout.user_data)]
        _log(f"running custom data; output in {layout.cloud_init_output_log}")
        try:
            script = subprocess.Popen(
                command,
                cwd=layout.os_disk,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        except OSError as exc:
            _finish_custom_data(
                layout, CustomDataResult("failed", None, f"custom data script could not start: {exc}")
            )
            return
        housekeeper.own(script.pid)
        try:
            returncode = script.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(script)
            tail = _output_tail(layout.cloud_init_output_log, start)
            message = f"custom data script timed out after {timeout:g} s" + (f": {tail}" if tail else "")
            _finish_custom_data(layout, CustomDataResult("failed", None, message))
            return
        finally:
            housekeeper.disown(script.pid)
    tail = _output_tail(layout.cloud_init_output_log, start)
    if returncode == 0:
        result = CustomDataResult("succeeded", 0, "custom data script exited with 0")
    elif returncode > 0:
        message = f"custom data script exited with {returncode}" + (f": {tail}" if tail else "")
        result = CustomDataResult("failed", returncode, message)
    else:
        message = f"custom data script was killed by {_signal_name(-returncode)}" + (
            f": {tail}" if tail else ""
        )
        result = CustomDataResult("failed", 128 - returncode, message)  # the shell's convention
    _finish_custom_data(layout, result)


def _finish_custom_data(layout: InstanceLayout, result: CustomDataResult) -> None:
    # The boot is finished before anyone can read that the script ended: a restart that follows the
    # report at once must find the mark, or it would run the script a second time.
    _mark_boot_finished(layout)
    _write_custom_data_result(layout, result)
    _log(f"custom data {result.state}" + (f" (exit code {result.exit_code})" if result.exit_code else ""))


def _write_custom_data_result(layout: InstanceLayout, result: CustomDataResult) -> None:
    try:
        write_file_atomically(layout.custom_data_result, custom_data_result_to_json(result))
    except OSError as exc:
        _log(f"cannot write {layout.custom_data_result}: {exc}")


def _note_interrupted_custom_data(layout: InstanceLayout) -> None:
    """At a stop: custom data still running was killed with the rest; say so. Its boot never finished,
    so the next start runs it again."""
    try:
        result = custom_data_result_from_json(layout.custom_data_result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if result.state == "running":
        message = (
            "custom data script was interrupted: the instance stopped before it finished; it runs again at "
            "the next start"
        )
        _write_custom_data_result(layout, CustomDataResult("failed", None, message))


def _output_tail(log: Path, start: int) -> str:
    """The last lines the script wrote to `log` after offset `start`."""
    try:
        with log.open("rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            handle.seek(max(start, end - 16 * CUSTOM_DATA_TAIL_CHARS))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.rstrip().splitlines()[-CUSTOM_DATA_TAIL_LINES:])
    return tail[-CUSTOM_DATA_TAIL_CHARS:]


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # The process leads its own session and is our unreaped child, so its pid still names its group.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def install_certificates(source: Path, lib_dir: Path) -> None:
    """Copy `<THUMB>.crt` / `.prv` from the instance's certs dir to the agent's lib dir (keys 0600)."""
    try:
        entries = sorted(source.iterdir())
    except FileNotFoundError:
        return
    lib_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in entries:
        if entry.suffix in (".crt", ".prv") and entry.is_file():
            mode = 0o600 if entry.suffix == ".prv" else 0o644
            write_file_atomically(lib_dir / entry.name, entry.read_bytes(), mode=mode)


class GuestAgentRunner:
    """Runs the guest agent for this boot: the goal state at boot, then each new incarnation.

    One thread applies (an apply can take as long as its handlers' commands); the housekeeper writes the
    status meanwhile, so `incarnationApplying` shows while a goal state is being applied.
    """

    def __init__(
        self, layout: InstanceLayout, env: dict[str, str], housekeeper: Housekeeper, poll_seconds: float
    ) -> None:
        from scaleset.guest.agent import GuestAgent  # here, not at import: the init must record itself fast

        _configure_agent_logging()
        self._layout = layout
        self._housekeeper = housekeeper
        self._poll = poll_seconds
        # Azure's agent looks every 5 s whether an extension that others wait for has finished; here the
        # status is a local file, so looking every second costs nothing and saves seconds per dependency.
        self.agent: GuestAgent = GuestAgent(
            layout.agent_lib_dir, layout.agent_log_dir, extra_env=env, dependency_poll_interval=1.0
        )

    def start(self) -> None:
        self._housekeeper.report_with(self.agent)
        threading.Thread(target=self._run, name="guest-agent", daemon=True).start()

    def _run(self) -> None:
        at_boot = True
        applied: int | None = None
        seen: tuple[int, int, int] | None = None
        while True:
            try:
                signature = _file_signature(self._layout.goal_state)
                if at_boot or signature != seen:
                    seen = signature
                    goal = self._read_goal() if signature is not None else None
                    # At boot the goal state is applied even if this disk applied it before: the agent
                    # re-runs enable after every restart. Afterwards only a new incarnation is applied;
                    # one whose apply raised is not retried until the next boot or incarnation.
                    due = goal is not None and (at_boot or goal.incarnation != applied)
                    at_boot = False
                    if goal is not None and due:
                        applied = goal.incarnation
                        self._apply(goal)
            except Exception as exc:  # the loop must survive anything one goal state does
                _log(f"guest agent: {type(exc).__name__}: {exc}")
            time.sleep(self._poll)

    def _read_goal(self) -> GoalState | None:
        from scaleset.guest.goalstate import GoalState

        try:
            return GoalState.from_json(self._layout.goal_state.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log(f"guest agent: ignoring {self._layout.goal_state.name}: {exc}")
            return None

    def _apply(self, goal: GoalState) -> None:
        _log(f"guest agent: applying goal state incarnation {goal.incarnation}")
        install_certificates(self._layout.certificates, self._layout.agent_lib_dir)
        self.agent.apply(goal)
        self._housekeeper.write_status()
        _log(f"guest agent: goal state incarnation {goal.incarnation} applied")


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    """Changes whenever the provider replaces the file (a rename gives it a new inode)."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _configure_agent_logging() -> None:
    # The agent logs failures through `logging`; they belong in console.log with the init's own lines.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[scaleset-agent %(asctime)s] %(levelname)s %(message)s"))
    agent_logger = logging.getLogger("scaleset.guest")
    agent_logger.addHandler(handler)
    agent_logger.setLevel(logging.INFO)
    agent_logger.propagate = False


class Housekeeper:
    """A background thread: reaps orphans this init adopted, and writes the guest agent's status.

    Children this process waits for itself (the app, the custom data script) are `own`ed and never
    reaped here. Other zombies are orphans (daemons whose parent died and that then exited) or handler
    commands the agent thread is about to collect; `ZOMBIE_GRACE_SECONDS` lets the latter go to their
    waiter. Never a blind `waitpid(-1)`: that would steal the exit status of whichever child ended first.
    """

    def __init__(self, status_path: Path, interval: float) -> None:
        self._status_path = status_path
        self._interval = interval
        self._lock = threading.Lock()
        self._owned: set[int] = set()
        self._zombie_since: dict[int, float] = {}
        self._agent: GuestAgent | None = None
        self._last_status_error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="housekeeper", daemon=True).start()

    def own(self, pid: int) -> None:
        with self._lock:
            self._owned.add(pid)

    def disown(self, pid: int) -> None:
        with self._lock:
            self._owned.discard(pid)

    def report_with(self, agent: GuestAgent) -> None:
        """From now on, write `agent`'s status periodically; the first at once."""
        with self._lock:
            self._agent = agent
        self.write_status()

    def write_status(self) -> None:
        with self._lock:
            agent = self._agent
        if agent is None:
            return
        try:
            agent.write_status(self._status_path)
            self._last_status_error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._last_status_error:  # once per distinct error, not every second
                _log(f"cannot write the guest status: {error}")
            self._last_status_error = error

    def reap(self) -> None:
        """Reap the zombie children nobody else will, oldest first; O(1) while there are none.

        `waitid(WNOWAIT)` only peeks at the first exited child, leaving it waitable. One that is owned, or
        not yet a zombie for ZOMBIE_GRACE_SECONDS, ends this round (its waiter takes it, or the next
        round does); so does an error.
        """
        now = time.monotonic()
        for _ in range(64):  # bounded, in case something keeps exiting under us
            try:
                peeked = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # no children at all
                peeked = None
            if peeked is None:
                self._zombie_since.clear()
                return
            pid = peeked.si_pid
            with self._lock:
                owned = pid in self._owned
            since = self._zombie_since.setdefault(pid, now)
            # Forget the zombies seen before that are no longer first: their waiters took them.
            self._zombie_since = {pid: since}
            if owned or now - since < ZOMBIE_GRACE_SECONDS:
                return
            with suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            self._zombie_since.clear()

    def _run(self) -> None:
        while True:
            try:
                self.reap()
                self.write_status()
            except Exception as exc:
                _log(f"housekeeping: {type(exc).__name__}: {exc}")
            time.sleep(self._interval)


def become_child_subreaper() -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are re-parented here, not to pid 1 (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        _log(f"ignoring {name}={raw!r}: not a positive number of seconds")
        return default
    return value


# -- the init itself ------------------------------------------------------------------------------------


class _StopRequested(BaseException):
    """Raised by the SIGTERM handler, to unwind whatever the init is waiting on.

    A BaseException, so that no `except Exception` on the way (a guard around the guest agent) eats it.
    """


def _request_stop(signum: int, frame: FrameType | None) -> None:
    # Further signals while the app is being stopped must not interrupt that cleanup.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _StopRequested


def _log(message: str) -> None:
    # stderr is console.log (the provider opens it for us), so these lines sit between the app's own.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"[scaleset-init {stamp}] {message}", file=sys.stderr, flush=True)


def _lock_instance(layout: InstanceLayout) -> IO[Any] | None:
    """Hold the instance's init lock for this process's life; None when another init holds it."""
    lock_file = layout.init_lock.open("a")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        return None
    return lock_file


def _record_self(layout: InstanceLayout) -> None:
    me = psutil.Process()
    record = {"pid": me.pid, "start_ticks": start_ticks_of(me.pid), "create_time": me.create_time()}
    write_file_atomically(layout.init_json, json.dumps(record))


def start_ticks_of(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (`starttime`, field 22 of /proc/<pid>/stat);
    None when it is gone.

    This, with the pid, is what tells a live init from a later process that reuses its pid. psutil's
    `create_time()` is not fit for it: it adds the boot time as the wall clock sees it now, so a step of the
    wall clock (NTP, a VM resumed from a snapshot) moves every process's create time by the step, and
    every running instance would look dead at once.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # Field 2, the command name, is in parentheses and may itself hold spaces and parentheses.
    after_name = stat[stat.rindex(b")") + 1 :].split()
    return int(after_name[19])  # after_name[0] is field 3


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {_signal_name(-returncode)}"
    return f"exited with code {returncode}"


def _boot(layout: InstanceLayout, housekeeper: Housekeeper) -> None:
    """Provision the guest, start the app, wait for it to end and log how it ended.

    Whatever fails, the instance stays up, as a VM whose app will not boot still runs.
    """
    try:
        spec = spec_from_json(layout.instance_json.read_text())
        env = app_environment(spec, layout)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log(f"the instance cannot boot: {exc}")
        return
    provision_guest(spec, layout, env, housekeeper)
    try:
        command = resolve_entrypoint(spec.image.entrypoint, layout.os_disk, env.get("PATH"))
        with layout.console_log.open("ab") as console:
            app = subprocess.Popen(
                command, cwd=layout.os_disk, env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=console
            )
    except (OSError, ValueError) as exc:
        _log(f"the app could not start: {exc}")
        return
    housekeeper.own(app.pid)
    _log(f"app started (pid {app.pid}): {' '.join(command)}")
    _log(f"app {_describe_exit(app.wait())}; the instance keeps running")
    housekeeper.disown(app.pid)


def wait_until_gone(processes: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait for processes to end; return those still alive at the timeout.

    A zombie counts as gone: it runs nothing, and an orphan stays one until whoever adopted it (pid 1,
    which in some containers reaps only now and then) gets round to it, which psutil.wait_procs would
    wait out.
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = [process for process in processes if _is_alive(process)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.01)


def _is_alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _live_descendants() -> list[psutil.Process]:
    try:
        return [process for process in psutil.Process().children(recursive=True) if _is_alive(process)]
    except psutil.Error:
        return []


def _stop_app_tree() -> None:
    """End every process of the instance: the app, custom data, handler commands and daemons (which the
    subreaper made descendants). SIGTERM first, SIGKILL after the grace period."""
    tree = _live_descendants()
    for process in tree:
        with suppress(psutil.NoSuchProcess):
            process.terminate()
    for process in wait_until_gone(tree, APP_STOP_GRACE_SECONDS):
        with suppress(psutil.NoSuchProcess):
            process.kill()
    # The guest agent thread may have started a command meanwhile (the one it ran was killed, so it went
    # on to the next): whatever appeared since dies at once. The provider sweeps for any that slip by.
    for _ in range(5):
        late = _live_descendants()
        if not late:
            return
        for process in late:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        wait_until_gone(late, 1.0)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if len(arguments) != 1:
        print("usage: python -m scaleset.guest.init <instance dir>", file=sys.stderr)
        return 2
    layout = InstanceLayout(Path(arguments[0]).absolute())
    lock = _lock_instance(layout)
    if lock is None:
        _log("another init process already runs this instance; exiting")
        return EXIT_ANOTHER_INIT_RUNNING
    # Handlers first: once the record below exists the provider may send SIGTERM at any moment.
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    try:
        if not become_child_subreaper():
            _log("cannot become a child subreaper: daemons that handlers start may escape the instance")
        # Before the record, so that once the provider says "started" the report already says "running".
        with suppress(OSError):
            if custom_data_pending(layout):
                _write_custom_data_result(layout, CustomDataResult("running"))
        _record_self(layout)
        _log("instance started")
        housekeeper = Housekeeper(
            layout.guest_status, _seconds_from_env(ENV_GUEST_STATUS_INTERVAL, GUEST_STATUS_SECONDS)
        )
        housekeeper.start()
        _boot(layout, housekeeper)
        while True:
            signal.pause()
    except _StopRequested:
        _log("stop requested")
        _stop_app_tree()
        _note_interrupted_custom_data(layout)
        _log("instance stopped")
        return 0
    finally:
        lock.close()


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Without interpreter shutdown: the guest agent's daemon threads may be in the middle of anything.
    os._exit(exit_code)
