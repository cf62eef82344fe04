"""The guest agent: drives extension handler packages inside one instance the way Azure's Linux agent does.

Given a goal state (`scaleset.guest.goalstate.GoalState`), `GuestAgent.apply` installs, updates, enables,
disables and uninstalls handler packages following spec/extension-protocol.md §1-§2, so an unmodified
Linux handler package finds the same files, variables and command sequences it finds on Azure:

    <lib>/<Publisher.Type>-<Version>/          the handler directory (a copy of the package)
        HandlerManifest.json                   copied to the root if the package nests it
        HandlerEnvironment.json                written by the agent
        config/<seq>.settings                  written by the agent before install/enable
        config/HandlerState, HandlerStatus     the agent's own record of the handler
        status/<seq>.status, heartbeat.log     written by the handler, read by `status()`
    <lib>/<THUMBPRINT>.crt/.prv                the instance certificate (`scaleset.guest.protected`)
    <log>/<Publisher.Type>/                    the handler's log folder, with CommandExecution.log

`status()` reads all of that back into a `GuestStatus` for the control plane; it only reads files, so it
may run in another thread while `apply` works.

Each `apply` processes the whole goal state: like the real agent on every new goal state and after every
restart, it runs enable again for every enabled extension even when nothing changed (install is not
rerun). Handlers expect that and stay idempotent through their `mrseq` file (spec §1.6). Deciding *when*
to apply (at boot, on a new incarnation) is the caller's job.

What differs from WALinuxAgent, on purpose: no download (the package is a local directory), no cgroups or
systemd-run, no telemetry, no 1-second sleep after each command, and the wire-server address is loopback
(see WIRE_PROTOCOL_ADDRESS). Multi-config handlers are not supported (one extension per handler).
This module must stay cheap to import (stdlib only, plus this package): the instance's init process runs it.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from scaleset.domain.versions import ExtensionVersion
from scaleset.guest.files import write_file_atomically
from scaleset.guest.goalstate import (
    CODE_UNKNOWN_FAILURE,
    TERMINAL_STATUSES,
    ExtensionGoal,
    ExtensionStatus,
    GoalState,
    GuestStatus,
    SettingsStatus,
    StatusFileInvalidJson,
    StatusFileMalformed,
    missing_status,
    parse_heartbeat,
    parse_status_file,
    status_for_unparsable,
    unreadable_status,
)
from scaleset.guest.handler_manifest import (
    CODE_MANIFEST_NOT_FOUND,
    MANIFEST_FILE,
    HandlerManifest,
    ManifestError,
    find_manifest,
    load_manifest,
)

logger = logging.getLogger(__name__)

# Error codes (spec §2.1, WALinuxAgent `ExtensionErrorCodes`).
CODE_PROCESSING_ERROR = 1000  # also what a failing uninstall command reports
CODE_PACKAGE_NOT_FOUND = 1004  # stands in for "package download failed"
CODE_PACKAGE_COPY_FAILED = 1005  # stands in for "package extraction failed"
CODE_INSTALL_FAILED = 1007
CODE_UPDATE_FAILED = 1008
CODE_ENABLE_FAILED = 1009
CODE_DISABLE_FAILED = 1010
CODE_COMMAND_TIMED_OUT = 1011

COMMAND_ERROR_CODES = {
    "install": CODE_INSTALL_FAILED,
    "enable": CODE_ENABLE_FAILED,
    "disable": CODE_DISABLE_FAILED,
    "update": CODE_UPDATE_FAILED,
    "uninstall": CODE_PROCESSING_ERROR,
}

# There is no wire server here. A handler that talks to it (telemetry, the HostGAPlugin) gets a loopback
# address: nothing listens, so it fails at once with "connection refused" instead of hanging on Azure's
# unroutable 168.63.129.16 until the command times out.
WIRE_PROTOCOL_ADDRESS = "127.0.0.1"
# What today's agent advertises. We accept the handler's event files in eventsFolder but read none; a
# handler that sees the feature writes events there instead of its own log, which is harmless.
SUPPORTED_FEATURES = json.dumps([{"Key": "ExtensionTelemetryPipeline", "Value": "1.0"}])
NOT_RUN = "NOT_RUN"
# How much of a command's output goes into an error message (the agent's telemetry limit).
MAX_OUTPUT_CHARS = 3200

# The agent's own variables (spec §1.3). Inherited copies are dropped, so each command sees exactly the
# ones the agent set for it, as on Azure where waagent runs from a clean systemd environment.
ENV_PATH = "AZURE_GUEST_AGENT_EXTENSION_PATH"
ENV_VERSION = "AZURE_GUEST_AGENT_EXTENSION_VERSION"
ENV_WIRE_ADDRESS = "AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS"
ENV_SEQ_NO = "ConfigSequenceNumber"
ENV_SUPPORTED_FEATURES = "AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES"
ENV_UNINSTALL_EXIT_CODE = "AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE"
ENV_DISABLE_EXIT_CODE = "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE"
ENV_UPDATING_FROM = "AZURE_GUEST_AGENT_UPDATING_FROM_VERSION"
ENV_UPDATE_VERSION = "VERSION"
_AGENT_VARIABLES = frozenset(
    {
        ENV_PATH,
        ENV_VERSION,
        ENV_WIRE_ADDRESS,
        ENV_SEQ_NO,
        "ConfigExtensionName",
        ENV_SUPPORTED_FEATURES,
        ENV_UNINSTALL_EXIT_CODE,
        ENV_DISABLE_EXIT_CODE,
        "AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODES_MULTIPLE_EXTENSIONS",
        ENV_UPDATING_FROM,
        ENV_UPDATE_VERSION,
    }
)

# The agent's record of what it was asked to do, for `status()` (also after a restart).
APPLIED_GOAL_FILE = "scaleset-applied-goal-state.json"
COMMAND_LOG_FILE = "CommandExecution.log"


class HandlerState(StrEnum):
    """config/HandlerState (spec §1.1)."""

    NOT_INSTALLED = "NotInstalled"
    INSTALLED = "Installed"
    ENABLED = "Enabled"
    FAILED_UPGRADE = "FailedUpgrade"


@dataclass(frozen=True)
class CommandTimeouts:
    """Seconds each handler command may run before its process group is killed (spec §2.1)."""

    install: float = 900.0
    enable: float = 300.0
    disable: float = 900.0
    update: float = 900.0
    uninstall: float = 300.0

    def for_verb(self, verb: str) -> float:
        return float(getattr(self, verb))


class ExtensionError(Exception):
    """A handler-level failure: reported as the handler status (NotReady, `code`, message)."""

    def __init__(self, message: str, code: int, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code


# -- commands --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None  # None when the command timed out
    timed_out: bool
    output: str  # "[stdout]\n…\n\n[stderr]\n…", at most MAX_OUTPUT_CHARS
    seconds: float


def command_line(handler_dir: Path, command: str) -> str:
    """The shell line for a manifest command: the handler dir joined with the command, arguments and all.

    A leading "/" is stripped, as the agent does ("some extensions erroneously begin cmd with a slash").
    Unlike the agent we quote the directory, so a lib dir with a space in its path still works.
    """
    return f"{shlex.quote(str(handler_dir))}/{command.lstrip('/')}"


def command_environment(
    inherited: Mapping[str, str], extra: Mapping[str, str], agent: Mapping[str, str]
) -> dict[str, str]:
    """The environment of a handler command: inherited, then the caller's extras, then the agent's own.

    The agent's variables win. (WALinuxAgent merges os.environ over them, but its environment never
    holds these names; ours might, so letting ours win gives the behaviour handlers meet on Azure.)
    """
    env = {name: value for name, value in inherited.items() if name not in _AGENT_VARIABLES}
    env.update(extra)
    env.update(agent)
    return env


def format_output(stdout: str, stderr: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    """Both streams in the agent's "[stdout]/[stderr]" layout, within `limit` characters.

    When they do not fit, each keeps its end (errors come last), and a short stream lends the space it
    does not need to the other.

    >>> format_output("ok", "boom")
    '[stdout]\\nok\\n\\n[stderr]\\nboom'
    >>> len(format_output("o" * 5000, "e" * 10, limit=100))
    100
    """
    template = "[stdout]\n{0}\n\n[stderr]\n{1}"
    budget = max(0, limit - len(template.format("", "")))
    if len(stdout) + len(stderr) > budget:
        half = budget // 2
        if len(stdout) <= half:
            stderr = _tail(stderr, budget - len(stdout))
        elif len(stderr) <= half:
            stdout = _tail(stdout, budget - len(stderr))
        else:
            stdout, stderr = _tail(stdout, half), _tail(stderr, budget - half)
    return template.format(stdout, stderr)


def _tail(text: str, keep: int) -> str:
    return text[len(text) - keep :] if 0 <= keep < len(text) else text


def run_command(line: str, cwd: Path, env: Mapping[str, str], timeout: float) -> CommandResult:
    """Run one handler command as the agent does (spec §1.3) and return how it ended.

    The shell runs in a session of its own, its output goes to unlinked temporary files in the handler
    dir (never pipes: a daemon the command leaves behind would hold a pipe open and block us). Only the
    shell itself is awaited, so `nohup daemon &` in enable outlives the command; the group is killed only
    on timeout, or if we are interrupted while waiting (the instance is being stopped).

    Popen.wait(timeout) polls for us, more finely than the agent's once a second. The agent also sleeps
    1 s after every command exits ("process completed or forked"), to let a forked daemon start before
    it reads the output; nothing here depends on that, so we do not pay a second per command.
    """
    started = time.monotonic()
    with tempfile.TemporaryFile(dir=cwd) as stdout, tempfile.TemporaryFile(dir=cwd) as stderr:
        process = subprocess.Popen(
            line,
            shell=True,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            exit_code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            exit_code = None
            _kill_group(process)
        except BaseException:
            _kill_group(process)
            raise
        output = format_output(_read_tail(stdout), _read_tail(stderr))
    return CommandResult(exit_code, exit_code is None, output, time.monotonic() - started)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # The shell leads its own session, so its pid names the group; it is our unreaped child, so the pid
    # cannot have been reused. Everything it started and did not move elsewhere dies with it.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _read_tail(handle: IO[bytes], chars: int = MAX_OUTPUT_CHARS) -> str:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - 4 * chars))  # 4 bytes per character at most in UTF-8
    return handle.read().decode("utf-8", errors="backslashreplace")[-chars:]


# -- the handler directory -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HandlerDir:
    """One `<lib>/<Publisher.Type>-<Version>` directory and the agent-owned files in it."""

    lib_dir: Path
    handler_name: str
    version: str

    @property
    def root(self) -> Path:
        return self.lib_dir / f"{self.handler_name}-{self.version}"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def status_dir(self) -> Path:
        return self.root / "status"

    @property
    def heartbeat_file(self) -> Path:
        return self.root / "heartbeat.log"

    def settings_file(self, seq_no: int) -> Path:
        return self.config / f"{seq_no}.settings"

    def status_file(self, seq_no: int) -> Path:
        return self.status_dir / f"{seq_no}.status"

    def exists(self) -> bool:
        return self.root.is_dir()

    def state(self) -> HandlerState:
        try:
            return HandlerState(_read_text(self.config / "HandlerState").strip())
        except (OSError, ValueError):
            return HandlerState.NOT_INSTALLED

    def set_state(self, state: HandlerState) -> None:
        self._ensure_config()
        write_file_atomically(self.config / "HandlerState", state.value)

    def handler_status(self) -> dict[str, Any] | None:
        try:
            data = json.loads(_read_text(self.config / "HandlerStatus"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def set_handler_status(self, status: str, code: int, message: str) -> None:
        """config/HandlerStatus; writing it makes config/ if need be, so a handler that failed before it
        was ever unpacked still has somewhere to report from (the agent does the same)."""
        self._ensure_config()
        record = {
            "handlerName": self.handler_name,
            "handlerVersion": self.version,
            "status": status,
            "code": code,
            "message": message,
        }
        write_file_atomically(self.config / "HandlerStatus", json.dumps(record))

    def _ensure_config(self) -> None:
        _make_private_dir(self.config)


def _make_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode is filtered by the umask, and the directory may be older


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def parse_handler_dir_name(name: str) -> tuple[str, str] | None:
    """("Publisher.Type", "1.2.3") from "Publisher.Type-1.2.3"; None for anything else in the lib dir."""
    handler, separator, version = name.rpartition("-")
    if not separator or not handler:
        return None
    try:
        ExtensionVersion.parse(version)
    except ValueError:
        return None
    return handler, version


def _version(text: str) -> ExtensionVersion:
    return ExtensionVersion.parse(text)


# -- ordering --------------------------------------------------------------------------------------------


def dependency_levels(extensions: Sequence[ExtensionGoal]) -> tuple[dict[str, int], dict[str, str]]:
    """Each extension's dependency level, and why the others have none.

    Level 0 has no `provision_after`, otherwise one more than its deepest dependency (the level the
    platform computes and sends the agent). Names not in the goal state are ignored: refusing them is
    the control plane's job. Extensions on a cycle, or after one, get an explanation instead of a level.

    >>> from scaleset.guest.goalstate import ExtensionGoal as E
    >>> def ext(name, *after):
    ...     return E(name, "P", name, "1.0", "/pkg", 0, provision_after=after)
    >>> dependency_levels([ext("a"), ext("b", "a"), ext("c", "b", "a")])
    ({'a': 0, 'b': 1, 'c': 2}, {})
    >>> dependency_levels([ext("a", "b"), ext("b", "a")])[1]["a"]
    'provisionAfterExtensions forms a cycle: a -> b -> a'
    """
    by_name = {extension.name: extension for extension in extensions}
    levels: dict[str, int] = {}
    unresolvable: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> int | None:
        if name in levels:
            return levels[name]
        if name in unresolvable:
            return None
        if name in path:
            cycle = [*path[path.index(name) :], name]
            for member in cycle[:-1]:
                unresolvable[member] = f"provisionAfterExtensions forms a cycle: {' -> '.join(cycle)}"
            return None
        path.append(name)
        deepest = -1
        for dependency in by_name[name].provision_after:
            if dependency not in by_name:
                continue
            level = visit(dependency, path)
            if level is None:
                unresolvable.setdefault(
                    name, f"it is to be provisioned after {dependency}, which cannot be provisioned"
                )
            else:
                deepest = max(deepest, level)
        path.pop()
        if name in unresolvable:
            return None
        levels[name] = deepest + 1
        return levels[name]

    for extension in extensions:
        visit(extension.name, [])
    return levels, unresolvable


def processing_order(
    extensions: Sequence[ExtensionGoal], levels: Mapping[str, int]
) -> list[tuple[ExtensionGoal, int]]:
    """(extension, sort key) in the order the agent handles them (spec §2.2).

    Enables sort by ascending level; disable and uninstall requests come first with negative keys, the
    deepest dependents first. The sort is stable, so one level keeps the goal state's order.
    """
    keyed = [(extension, _sort_key(extension, levels.get(extension.name, 0))) for extension in extensions]
    return sorted(keyed, key=lambda pair: pair[1])


def _sort_key(extension: ExtensionGoal, level: int) -> int:
    return level if extension.state == "enabled" else -level - 1


# -- the agent -------------------------------------------------------------------------------------------


class GuestAgent:
    """Applies goal states to the handler directories under `lib_dir` and reports their status.

    `timeouts` bound each command; `dependency_timeout` bounds, for one apply, the wait for extensions
    others are provisioned after to report a terminal status (the agent's 90 minutes), polled every
    `dependency_poll_interval` seconds. `extra_env` is added to every command's environment (the
    instance's own variables). `wall_clock`, `monotonic` and `sleep` are injectable for tests.
    """

    def __init__(
        self,
        lib_dir: Path,
        log_dir: Path,
        *,
        timeouts: CommandTimeouts | None = None,
        extra_env: Mapping[str, str] | None = None,
        wire_address: str = WIRE_PROTOCOL_ADDRESS,
        dependency_timeout: float = 90 * 60.0,
        dependency_poll_interval: float = 5.0,
        heartbeat_timeout: float = 600.0,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.lib_dir = Path(lib_dir).absolute()
        self.log_dir = Path(log_dir).absolute()
        self.timeouts = timeouts or CommandTimeouts()
        self._extra_env = dict(extra_env or {})
        self._wire_address = wire_address
        self._dependency_timeout = dependency_timeout
        self._dependency_poll = dependency_poll_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._apply_lock = threading.Lock()

    # -- applying --------------------------------------------------------------------------------------

    def apply(self, goal: GoalState) -> None:
        """Bring the handlers in line with `goal` (spec §2.2-§2.6); failures land in the status, not here.

        Handlers the goal state does not mention are deleted without running any of their commands.
        """
        with self._apply_lock:
            self.lib_dir.mkdir(parents=True, exist_ok=True)
            self._record_goal(goal, done=False)
            levels, unresolvable = dependency_levels(goal.extensions)
            for extension in goal.extensions:
                if extension.name in unresolvable and extension.state == "enabled":
                    self._report_error(extension, CODE_UNKNOWN_FAILURE, unresolvable[extension.name])
            runnable = [e for e in goal.extensions if not (e.name in unresolvable and e.state == "enabled")]
            self._process_in_order(processing_order(runnable, levels))
            self._remove_absent_handlers({extension.handler_name for extension in goal.extensions})
            self._record_goal(goal, done=True)

    def _process_in_order(self, ordered: Sequence[tuple[ExtensionGoal, int]]) -> None:
        """Handle each extension; once one that others wait for fails, skip all that follow.

        That is the agent's rule, coarser than "skip its dependents": an extension whose level is below
        the highest is awaited (success needed) and its failure skips *every* later extension, related or
        not, each reported with code -1 and the reason.
        """
        highest = max((key for _, key in ordered), default=0)
        deadline = self._monotonic() + self._dependency_timeout
        skip_reason: str | None = None
        for extension, key in ordered:
            if skip_reason is not None:
                self._report_error(extension, CODE_UNKNOWN_FAILURE, skip_reason)
                continue
            succeeded = self._process(extension)
            if 0 <= key < highest:
                if not succeeded:
                    skip_reason = (
                        "Skipping processing of extensions since execution of dependent extension "
                        f"{extension.handler_name} failed"
                    )
                else:
                    skip_reason = self._wait_for_terminal_status(extension, deadline)

    def _process(self, extension: ExtensionGoal) -> bool:
        try:
            if extension.state == "enabled":
                self._handle_enable(extension)
            elif extension.state == "disabled":
                self._handle_disable(extension)
            else:
                self._handle_uninstall(extension)
            return True
        except ExtensionError as error:
            self._report_error(extension, error.code, str(error))
        except ManifestError as error:
            self._report_error(extension, error.code, str(error))
        except Exception as error:  # the agent reports anything else as -1 and carries on
            logger.exception("unexpected error processing extension %s", extension.name)
            self._report_error(extension, CODE_UNKNOWN_FAILURE, f"{type(error).__name__}: {error}")
        return False

    def _report_error(self, extension: ExtensionGoal, code: int, message: str) -> None:
        logger.warning("extension %s (%s): %s", extension.name, extension.handler_name, message)
        self._reporting_dir(extension).set_handler_status("NotReady", code, message)

    def _handle_enable(self, extension: ExtensionGoal) -> None:
        """Spec §2.3/§2.4: set up the version asked for unless it is installed, install or update, enable."""
        target = self._dir(extension.handler_name, extension.version)
        installed = self.installed_version(extension.handler_name)  # before target is touched, as the agent
        uninstall_exit_code = NOT_RUN
        if target.state() in (HandlerState.NOT_INSTALLED, HandlerState.FAILED_UPGRADE):
            target.set_state(HandlerState.NOT_INSTALLED)
            self._set_up(extension, target)
            if installed is None:
                self._install(extension, target, NOT_RUN)
            else:
                old = self._dir(extension.handler_name, installed)
                uninstall_exit_code = self._update(extension, old, target)
        else:
            self._write_settings(extension, target)
        self._run(extension, target, "enable", {ENV_UNINSTALL_EXIT_CODE: uninstall_exit_code})
        target.set_state(HandlerState.ENABLED)
        target.set_handler_status("Ready", 0, "Plugin enabled")

    def _handle_disable(self, extension: ExtensionGoal) -> None:
        """Spec §2.5 (legacy): disable the installed version if it is enabled."""
        installed = self.installed_version(extension.handler_name)
        if installed is not None:
            handler_dir = self._dir(extension.handler_name, installed)
            if handler_dir.state() == HandlerState.ENABLED:
                self._disable(extension, handler_dir)

    def _handle_uninstall(self, extension: ExtensionGoal) -> None:
        """Spec §2.6: disable if enabled (a failure stops here), uninstall (failure ignored), delete."""
        installed = self.installed_version(extension.handler_name)
        handler_dir = self._dir(extension.handler_name, installed or extension.version)
        if installed is not None:
            if handler_dir.state() == HandlerState.ENABLED:
                self._disable(extension, handler_dir)
            try:
                self._run(extension, handler_dir, "uninstall", {})
            except ExtensionError as error:
                logger.warning("uninstall of %s failed, ignored: %s", handler_dir.root.name, error)
        self._remove(handler_dir)

    def _update(self, extension: ExtensionGoal, old: HandlerDir, new: HandlerDir) -> str:
        """Spec §2.4, from `old` (installed) to `new` (set up); returns old's uninstall exit code."""
        tolerate = load_manifest(new.root).continue_on_update_failure
        disable_exit_code = NOT_RUN
        if old.state() == HandlerState.ENABLED:
            disable_exit_code = self._tolerated(lambda: self._disable(extension, old), tolerate)
        _copy_status_files(old, new)
        if _version(new.version) > _version(old.version):
            self._run_update(extension, new, new.version, old.version, disable_exit_code)
        else:
            # A downgrade runs the *old* handler's update command. Both VERSION and UPDATING_FROM_VERSION
            # then name the target version: that is what the agent sets, odd as it reads.
            self._run_update(extension, old, new.version, new.version, disable_exit_code)
        uninstall_exit_code = self._tolerated(lambda: self._run(extension, old, "uninstall", {}), tolerate)
        self._remove(old)
        if load_manifest(new.root).install_after_update:
            self._install(extension, new, uninstall_exit_code)
        new.set_state(HandlerState.INSTALLED)
        return uninstall_exit_code

    def _run_update(
        self,
        extension: ExtensionGoal,
        runner: HandlerDir,
        version: str,
        from_version: str,
        disable_exit_code: str,
    ) -> None:
        variables = {
            ENV_UPDATE_VERSION: version,
            ENV_UPDATING_FROM: from_version,
            ENV_DISABLE_EXIT_CODE: disable_exit_code,
        }
        try:
            self._run(extension, runner, "update", variables)
        except ExtensionError:
            # Never tolerated. The mark keeps the directory from counting as installed, so the next goal
            # state redoes the whole update instead of enabling a half-updated handler.
            runner.set_state(HandlerState.FAILED_UPGRADE)
            raise

    @staticmethod
    def _tolerated(action: Callable[[], None], tolerate: bool) -> str:
        """Run an old-version step of an update: its exit code as text, or the update fails (1008)."""
        try:
            action()
        except ExtensionError as error:
            message = f"{error}; ContinueOnUpdate: {tolerate}"
            if not tolerate:
                raise ExtensionError(message, CODE_UPDATE_FAILED, error.exit_code) from error
            logger.info("continueOnUpdateFailure is set, the update goes on: %s", message)
            return str(error.exit_code if error.exit_code is not None else error.code)
        return "0"

    def _install(self, extension: ExtensionGoal, target: HandlerDir, uninstall_exit_code: str) -> None:
        self._run(extension, target, "install", {ENV_UNINSTALL_EXIT_CODE: uninstall_exit_code})
        target.set_state(HandlerState.INSTALLED)
        target.set_handler_status("NotReady", 0, "Plugin installed but not enabled")

    def _disable(self, extension: ExtensionGoal, handler_dir: HandlerDir) -> None:
        self._run(extension, handler_dir, "disable", {})
        handler_dir.set_state(HandlerState.INSTALLED)
        handler_dir.set_handler_status("NotReady", 0, "Plugin disabled")

    # -- setting a version up ---------------------------------------------------------------------------

    def _set_up(self, extension: ExtensionGoal, target: HandlerDir) -> None:
        """Spec §2.3 steps 2-4: copy the package in, make it runnable, write its environment and settings."""
        source = Path(extension.package_dir)
        if not source.is_dir():
            raise ExtensionError(f"Handler package {source} not found", CODE_PACKAGE_NOT_FOUND)
        try:
            # Over whatever a failed attempt left: the agent unzips over it too, keeping config/ and status/.
            shutil.copytree(source, target.root, dirs_exist_ok=True)
        except (OSError, shutil.Error) as error:
            raise ExtensionError(
                f"Failed to copy handler package {source}: {error}", CODE_PACKAGE_COPY_FAILED
            ) from error
        _add_user_execute(target.root)
        manifest = find_manifest(target.root)
        if manifest is None:
            raise ManifestError("HandlerManifest.json not found", CODE_MANIFEST_NOT_FOUND)
        if manifest != target.root / MANIFEST_FILE:
            shutil.copyfile(manifest, target.root / MANIFEST_FILE)
        load_manifest(target.root)  # a broken manifest fails here (1003), before any command
        _make_private_dir(target.status_dir)
        _make_private_dir(target.config)
        log_folder = self._log_folder(extension.handler_name)
        log_folder.mkdir(parents=True, exist_ok=True)
        _make_private_dir(log_folder / "events")
        write_file_atomically(target.root / "HandlerEnvironment.json", self._handler_environment(target))
        self._write_settings(extension, target)

    def _handler_environment(self, target: HandlerDir) -> str:
        log_folder = self._log_folder(target.handler_name)
        events = str(log_folder / "events")
        environment = {
            "logFolder": str(log_folder),
            "configFolder": str(target.config),
            "statusFolder": str(target.status_dir),
            "heartbeatFile": str(target.heartbeat_file),
            "eventsFolder": events,
            "eventsFolder_preview": events,
        }
        return json.dumps([{"name": target.handler_name, "version": 1.0, "handlerEnvironment": environment}])

    def _write_settings(self, extension: ExtensionGoal, target: HandlerDir) -> None:
        """config/<seq>.settings, nulls kept (spec §1.5); an empty 0.settings for an extension without."""
        _make_private_dir(target.config)
        if not extension.has_settings:
            write_file_atomically(target.settings_file(0), "", mode=0o600)
            return
        handler_settings = {
            "publicSettings": extension.public_settings,
            "protectedSettings": extension.protected_settings,
            "protectedSettingsCertThumbprint": extension.thumbprint,
        }
        document = {"runtimeSettings": [{"handlerSettings": handler_settings}]}
        write_file_atomically(target.settings_file(extension.seq_no), json.dumps(document), mode=0o600)

    # -- running commands -------------------------------------------------------------------------------

    def _run(
        self, extension: ExtensionGoal, handler_dir: HandlerDir, verb: str, variables: Mapping[str, str]
    ) -> None:
        """Run one manifest command of `handler_dir`; ExtensionError if it fails or times out."""
        try:
            manifest: HandlerManifest = load_manifest(handler_dir.root)
        except ManifestError as error:
            raise ExtensionError(str(error), error.code) from error
        line = command_line(handler_dir.root, manifest.command(verb))
        agent_variables = {
            ENV_PATH: str(handler_dir.root),
            ENV_VERSION: handler_dir.version,
            ENV_WIRE_ADDRESS: self._wire_address,
            ENV_SEQ_NO: str(extension.effective_seq_no),
            ENV_SUPPORTED_FEATURES: SUPPORTED_FEATURES,
            **variables,
        }
        env = command_environment(os.environ, self._extra_env, agent_variables)
        timeout = self.timeouts.for_verb(verb)
        try:
            result = run_command(line, handler_dir.root, env, timeout)
        except OSError as error:
            raise ExtensionError(f"Failed to launch: {line}, {error}", COMMAND_ERROR_CODES[verb]) from error
        self._log_command(handler_dir, verb, line, agent_variables, result)
        if result.timed_out:
            raise ExtensionError(f"Timeout({timeout:g}): {line}\n{result.output}", CODE_COMMAND_TIMED_OUT)
        if result.exit_code != 0:
            raise ExtensionError(
                f"Non-zero exit code: {result.exit_code}, {line}\n{result.output}",
                COMMAND_ERROR_CODES[verb],
                result.exit_code,
            )

    def _log_command(
        self,
        handler_dir: HandlerDir,
        verb: str,
        line: str,
        variables: Mapping[str, str],
        result: CommandResult,
    ) -> None:
        """Append the run to `<log>/<Handler>/CommandExecution.log`; the log is a courtesy, never fatal."""
        ended = "timed out" if result.timed_out else f"exit code {result.exit_code}"
        entry = (
            f"{self._timestamp()} [{handler_dir.root.name}] {verb}: {line}\n"
            f"    environment: {json.dumps(dict(variables))}\n"
            f"    {ended} after {result.seconds:.3f} s\n"
            + "".join(f"    {output_line}\n" for output_line in result.output.splitlines())
        )
        folder = self._log_folder(handler_dir.handler_name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / COMMAND_LOG_FILE).open("a", encoding="utf-8") as log:
                log.write(entry)
        except OSError as error:
            logger.warning("cannot write %s: %s", folder / COMMAND_LOG_FILE, error)

    # -- dependencies -----------------------------------------------------------------------------------

    def _wait_for_terminal_status(self, extension: ExtensionGoal, deadline: float) -> str | None:
        """Wait until the extension reports success or error; None on success, else why the rest is skipped.

        An extension without settings has no status file to wait for and counts as done at once.
        """
        if not extension.has_settings:
            return None
        handler_dir = self._dir(extension.handler_name, extension.version)
        while True:
            status = self._status_value_for_waiting(extension, handler_dir)
            if status in TERMINAL_STATUSES:
                break
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return (
                    f"Dependent Extension {extension.handler_name} did not reach a terminal state within the "
                    f"allowed timeout. Last status was {status}"
                )
            self._sleep(min(self._dependency_poll, remaining))
        if status != "success":
            return f"Dependent Extension {extension.handler_name} did not succeed. Status was {status}"
        return None

    def _status_value_for_waiting(self, extension: ExtensionGoal, handler_dir: HandlerDir) -> str:
        # A missing file reads as "warning" here, as in the agent: not terminal, so the wait goes on.
        if not handler_dir.status_file(extension.effective_seq_no).exists():
            return "warning"
        return self._settings_status(extension, handler_dir).status

    # -- status -----------------------------------------------------------------------------------------

    def status(self) -> GuestStatus:
        """The status of every extension of the goal state last given to `apply` (read from files)."""
        record = self._read_goal_record()
        timestamp = self._timestamp()
        if record is None:
            return GuestStatus(None, None, (), timestamp)
        goal, applied, applying = record
        reports = (self._extension_status(extension) for extension in goal.extensions)
        return GuestStatus(applied, applying, tuple(r for r in reports if r is not None), timestamp)

    def write_status(self, path: Path) -> GuestStatus:
        """Write `status()` to `path` atomically (for the control plane to read) and return it."""
        status = self.status()
        write_file_atomically(path, status.to_json())
        return status

    def _extension_status(self, extension: ExtensionGoal) -> ExtensionStatus | None:
        """One extension's report, or None when there is nothing to say (never handled, or uninstalled).

        An uninstalled extension disappearing from the status is the signal the platform waits for.
        """
        handler_dir = self._reporting_dir(extension)
        record = handler_dir.handler_status()
        if record is None:
            return None
        state = handler_dir.state()
        handler_status = str(record.get("status", "NotReady"))
        code = _int(record.get("code"), CODE_UNKNOWN_FAILURE)
        message = record.get("message")
        settings_status: SettingsStatus | None = None
        if state != HandlerState.NOT_INSTALLED:
            handler_status, code, message = self._apply_heartbeat(handler_dir, handler_status, code, message)
            if extension.has_settings:
                settings_status = self._settings_status(extension, handler_dir)
        return ExtensionStatus(
            name=extension.name,
            handler_name=extension.handler_name,
            version=handler_dir.version,
            sequence_number=extension.effective_seq_no,
            handler_state=state.value,
            handler_status=handler_status,
            handler_code=code,
            handler_message=None if message is None else str(message),
            settings_status=settings_status,
        )

    def _apply_heartbeat(
        self, handler_dir: HandlerDir, status: str, code: int, message: Any
    ) -> tuple[str, int, Any]:
        """Spec §1.8: with reportHeartbeat, heartbeat.log overrides the handler status."""
        try:
            if not load_manifest(handler_dir.root).report_heartbeat:
                return status, code, message
        except ManifestError as error:
            return "NotReady", error.code, str(error)
        try:
            modified = handler_dir.heartbeat_file.stat().st_mtime
        except OSError:
            return "NotReady", CODE_UNKNOWN_FAILURE, "Failed to get heart beat file"
        if self._wall_clock() - modified > self._heartbeat_timeout:
            return "Unresponsive", CODE_UNKNOWN_FAILURE, "Extension heartbeat is not responsive"
        try:
            heartbeat = parse_heartbeat(_read_text(handler_dir.heartbeat_file))
        except OSError as error:
            return "NotReady", CODE_UNKNOWN_FAILURE, f"Failed to get heartbeat file:{error}"
        except ValueError as error:
            return "NotReady", CODE_UNKNOWN_FAILURE, f"Malformed heartbeat file: {error}"
        return heartbeat.status, code, message if heartbeat.message is None else heartbeat.message

    def _settings_status(self, extension: ExtensionGoal, handler_dir: HandlerDir) -> SettingsStatus:
        """The handler's `status/<seq>.status` for the goal's sequence number, or the agent's stand-in.

        No retries: the agent retries a read five times two seconds apart, but `status()` is called again
        and again anyway, so a half-written file shows for one read at most.
        """
        seq_no = extension.effective_seq_no
        path = handler_dir.status_file(seq_no)
        try:
            text = _read_text(path)
        except FileNotFoundError:
            return missing_status(extension.handler_name, path, seq_no)
        except OSError as error:
            return unreadable_status(extension.handler_name, seq_no, error)
        try:
            parsed = parse_status_file(text, seq_no)
        except (StatusFileInvalidJson, StatusFileMalformed) as error:
            return status_for_unparsable(extension.handler_name, seq_no, error)
        return parsed if parsed is not None else missing_status(extension.handler_name, path, seq_no)

    # -- bookkeeping ------------------------------------------------------------------------------------

    def installed_version(self, handler_name: str) -> str | None:
        """The highest version of a handler that counts as installed (spec §1.1).

        A directory whose HandlerState is missing, NotInstalled or FailedUpgrade does not count.
        """
        versions = [
            version
            for version in self._versions_on_disk(handler_name)
            if self._dir(handler_name, version).state()
            not in (HandlerState.NOT_INSTALLED, HandlerState.FAILED_UPGRADE)
        ]
        return max(versions, key=lambda v: (_version(v), v), default=None)

    def _versions_on_disk(self, handler_name: str) -> Iterable[str]:
        for path in self._handler_dirs():
            parsed = parse_handler_dir_name(path.name)
            if parsed is not None and parsed[0] == handler_name:
                yield parsed[1]

    def _handler_dirs(self) -> list[Path]:
        """Directories of the lib dir that look like handler directories (name-version, with config/)."""
        try:
            entries = list(self.lib_dir.iterdir())
        except FileNotFoundError:
            return []
        return [
            path
            for path in entries
            if path.is_dir() and parse_handler_dir_name(path.name) is not None and (path / "config").is_dir()
        ]

    def _remove_absent_handlers(self, wanted: set[str]) -> None:
        for path in self._handler_dirs():
            parsed = parse_handler_dir_name(path.name)
            if parsed is not None and parsed[0] not in wanted:
                self._remove(HandlerDir(self.lib_dir, *parsed))

    @staticmethod
    def _remove(handler_dir: HandlerDir) -> None:
        # Files vanishing under us are fine (some handlers clean up asynchronously); other errors are
        # logged and leave the directory, which is reported again on the next status.
        try:
            shutil.rmtree(handler_dir.root)
        except FileNotFoundError:
            pass
        except OSError as error:
            logger.warning("cannot remove %s: %s", handler_dir.root, error)

    def _dir(self, handler_name: str, version: str) -> HandlerDir:
        return HandlerDir(self.lib_dir, handler_name, version)

    def _reporting_dir(self, extension: ExtensionGoal) -> HandlerDir:
        """Where an extension's handler status lives: the version asked for when enabling; the installed
        one for disable and uninstall, which act on whatever is there."""
        if extension.state != "enabled":
            installed = self.installed_version(extension.handler_name)
            if installed is not None:
                return self._dir(extension.handler_name, installed)
        return self._dir(extension.handler_name, extension.version)

    def _log_folder(self, handler_name: str) -> Path:
        return self.log_dir / handler_name

    def _timestamp(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall_clock()))

    def _record_goal(self, goal: GoalState, *, done: bool) -> None:
        previous = self._read_goal_record()
        applied = goal.incarnation if done else (previous[1] if previous else None)
        record = {
            "incarnationApplied": applied,
            "incarnationApplying": None if done else goal.incarnation,
            "goalState": json.loads(goal.to_json()),
        }
        write_file_atomically(self.lib_dir / APPLIED_GOAL_FILE, json.dumps(record), mode=0o600)

    def _read_goal_record(self) -> tuple[GoalState, int | None, int | None] | None:
        try:
            record = json.loads(_read_text(self.lib_dir / APPLIED_GOAL_FILE))
            goal = GoalState.from_json(json.dumps(record["goalState"]))
            return goal, record.get("incarnationApplied"), record.get("incarnationApplying")
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _copy_status_files(old: HandlerDir, new: HandlerDir) -> None:
    """Spec §2.4 step 3: the new version inherits `mrseq` and the status files, so it knows what ran."""
    mrseq = old.root / "mrseq"
    if mrseq.is_file():
        shutil.copy2(mrseq, new.root / "mrseq")
    if old.status_dir.is_dir():
        _make_private_dir(new.status_dir)
        for item in old.status_dir.iterdir():
            if item.is_file():
                shutil.copy2(item, new.status_dir / item.name)


def _add_user_execute(root: Path) -> None:
    """chmod u+x every file of the package, as the agent does after unzipping (zips lose the bit)."""
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
