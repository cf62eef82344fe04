"""The guest agent against real handler packages: small shell scripts written by each test.

Every command of a test package appends one line to a shared log, `<verb> <version> key=value …`, with
the variables the agent set for it; the tests assert on the order of those lines and on the files the
agent leaves behind (spec/extension-protocol.md §1-§2).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from scaleset.guest.agent import (
    APPLIED_GOAL_FILE,
    CommandTimeouts,
    GuestAgent,
    command_environment,
    dependency_levels,
    format_output,
    parse_handler_dir_name,
)
from scaleset.guest.goalstate import (
    ExtensionGoal,
    ExtensionState,
    ExtensionStatus,
    GoalState,
    GuestStatus,
    SettingsStatus,
    StatusFileInvalidJson,
    StatusFileMalformed,
    SubStatus,
    parse_heartbeat,
    parse_status_file,
)
from scaleset.guest.handler_manifest import ManifestError, find_manifest, load_manifest, parse_manifest
from scaleset.guest.protected import (
    certificate_paths,
    decrypt_protected_settings,
    decrypt_with_lib,
    encrypt_protected_settings,
    make_instance_certificate,
    thumbprint_of,
)

PUBLISHER = "Test.Pub"
VERBS = ("install", "enable", "disable", "update", "uninstall")
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")

# What each command logs: its verb and package version, then the variables of spec §1.3.
LOG_LINE = (
    "printf '%s %s seq=%s ver=%s VERSION=%s from=%s disable_rc=%s uninstall_rc=%s "
    "wire=%s path=%s extra=%s\\n' "
    '{verb} {version} "$ConfigSequenceNumber" "$AZURE_GUEST_AGENT_EXTENSION_VERSION" "${{VERSION-unset}}" '
    '"${{AZURE_GUEST_AGENT_UPDATING_FROM_VERSION-unset}}" '
    '"${{AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE-unset}}" '
    '"${{AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE-unset}}" "$AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS" '
    '"$AZURE_GUEST_AGENT_EXTENSION_PATH" "${{SCALESET_TEST_EXTRA-unset}}" >> {log}\n'
)

# A status file the handler writes for its sequence number (cwd is the handler dir).
WRITE_SUCCESS = (
    'printf \'[{"version": 1.0, "status": {"status": "success", "operation": "Enable", "code": 0}}]\' '
    '> "status/$ConfigSequenceNumber.status"'
)
WRITE_ERROR = (
    'printf \'[{"version": 1.0, "status": {"status": "error", "operation": "Enable", "code": 9}}]\' '
    '> "status/$ConfigSequenceNumber.status"'
)


@dataclass
class Workspace:
    """Packages, a shared call log and an agent, all under one temporary directory."""

    root: Path
    agent: GuestAgent
    log: Path
    pids: list[int] = field(default_factory=list)

    @property
    def lib(self) -> Path:
        return self.agent.lib_dir

    def package(
        self,
        version: str,
        *,
        type_: str = "Probe",
        bodies: Mapping[str, str] | None = None,
        manifest: Mapping[str, Any] | None = None,
        nested: bool = False,
    ) -> Path:
        """A handler package whose commands are `bin/<verb>.sh`, written without the execute bit (as a
        zip would deliver them), each logging its call and then running `bodies[verb]` (default: exit 0)."""
        package = self.root / "packages" / f"{type_}-{version}"
        top = package / "pkg" if nested else package
        (top / "bin").mkdir(parents=True)
        for verb in VERBS:
            script = top / "bin" / f"{verb}.sh"
            body = (bodies or {}).get(verb, "exit 0")
            log_line = LOG_LINE.format(verb=verb, version=version, log=self.log)
            script.write_text(f"#!/bin/sh\n{log_line}{body}\n")
            script.chmod(0o644)
        # Commands run from the handler root, where the agent copies a nested manifest to.
        prefix = "pkg/" if nested else ""
        handler_manifest = {f"{verb}Command": f"{prefix}bin/{verb}.sh" for verb in VERBS}
        handler_manifest.update(manifest or {})
        (top / "HandlerManifest.json").write_text(
            json.dumps([{"name": type_, "version": 1.0, "handlerManifest": handler_manifest}])
        )
        return package

    def calls(self) -> list[str]:
        """The "<verb> <version>" of every command run so far, in order."""
        if not self.log.exists():
            return []
        return [" ".join(line.split()[:2]) for line in self.log.read_text().splitlines()]

    def call_env(self, index: int) -> dict[str, str]:
        line = self.log.read_text().splitlines()[index]
        return dict(token.split("=", 1) for token in line.split()[2:])

    def reset_calls(self) -> None:
        self.log.unlink(missing_ok=True)

    def handler_dir(self, version: str, type_: str = "Probe") -> Path:
        return self.lib / f"{PUBLISHER}.{type_}-{version}"

    def status_of(self, name: str = "probe") -> ExtensionStatus:
        report = self.agent.status().extension(name)
        assert report is not None, f"no status for {name}"
        return report


def ext(
    package: Path,
    version: str,
    *,
    name: str = "probe",
    type_: str = "Probe",
    seq: int = 1,
    settings: dict[str, Any] | None = None,
    state: ExtensionState = "enabled",
    after: tuple[str, ...] = (),
    protected: str | None = None,
    thumbprint: str | None = None,
) -> ExtensionGoal:
    return ExtensionGoal(
        name=name,
        publisher=PUBLISHER,
        type=type_,
        version=version,
        package_dir=str(package),
        seq_no=seq,
        public_settings={"greeting": "hello"} if settings is None else settings,
        protected_settings=protected,
        thumbprint=thumbprint,
        state=state,
        provision_after=after,
    )


def goal(incarnation: int, *extensions: ExtensionGoal) -> GoalState:
    return GoalState(incarnation, tuple(extensions))


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    agent = GuestAgent(
        tmp_path / "lib",
        tmp_path / "log",
        timeouts=CommandTimeouts(install=5, enable=5, disable=5, update=5, uninstall=5),
        extra_env={"SCALESET_TEST_EXTRA": "from-extra-env"},
        dependency_timeout=1.0,
        dependency_poll_interval=0.02,
    )
    workspace = Workspace(tmp_path, agent, tmp_path / "calls.log")
    yield workspace
    for pid in workspace.pids:  # daemons a test started must not outlive it
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def gone(pid: int, timeout: float = 3.0) -> bool:
    """Whether a process ended within `timeout`; a zombie (dead, waiting for a reaper) counts as ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


# -- first install, re-apply ----------------------------------------------------------------------------


def test_first_install_runs_install_then_enable_with_the_documented_files(ws: Workspace) -> None:
    package = ws.package("1.0.0")
    ws.agent.apply(goal(1, ext(package, "1.0.0", seq=3, settings={"a": 1})))

    assert ws.calls() == ["install 1.0.0", "enable 1.0.0"]
    handler = ws.handler_dir("1.0.0")
    for index in (0, 1):
        env = ws.call_env(index)
        assert env["seq"] == "3"
        assert env["ver"] == "1.0.0"
        assert env["path"] == str(handler)
        assert env["wire"] == "127.0.0.1"
        assert env["uninstall_rc"] == "NOT_RUN"
        assert env["VERSION"] == env["from"] == env["disable_rc"] == "unset"
        assert env["extra"] == "from-extra-env"

    assert (handler / "config" / "HandlerState").read_text() == "Enabled"
    status = json.loads((handler / "config" / "HandlerStatus").read_text())
    assert (status["status"], status["code"], status["message"]) == ("Ready", 0, "Plugin enabled")
    assert stat.S_IMODE((handler / "config").stat().st_mode) == 0o700
    assert stat.S_IMODE((handler / "status").stat().st_mode) == 0o700
    assert (handler / "bin" / "enable.sh").stat().st_mode & stat.S_IXUSR

    settings = json.loads((handler / "config" / "3.settings").read_text())
    assert settings == {
        "runtimeSettings": [
            {
                "handlerSettings": {
                    "publicSettings": {"a": 1},
                    "protectedSettings": None,
                    "protectedSettingsCertThumbprint": None,
                }
            }
        ]
    }
    log_folder = ws.agent.log_dir / f"{PUBLISHER}.Probe"
    environment = json.loads((handler / "HandlerEnvironment.json").read_text())
    assert environment == [
        {
            "name": f"{PUBLISHER}.Probe",
            "version": 1.0,
            "handlerEnvironment": {
                "logFolder": str(log_folder),
                "configFolder": str(handler / "config"),
                "statusFolder": str(handler / "status"),
                "heartbeatFile": str(handler / "heartbeat.log"),
                "eventsFolder": str(log_folder / "events"),
                "eventsFolder_preview": str(log_folder / "events"),
            },
        }
    ]
    assert (log_folder / "events").is_dir()
    command_log = (log_folder / "CommandExecution.log").read_text()
    assert "install: " in command_log and "enable: " in command_log
    assert '"ConfigSequenceNumber": "3"' in command_log and "exit code 0" in command_log
    assert "ExtensionTelemetryPipeline" in command_log

    report = ws.status_of()
    assert (report.handler_state, report.handler_status, report.version) == ("Enabled", "Ready", "1.0.0")
    assert report.settings_status is not None and report.settings_status.status == "transitioning"


def test_nested_manifest_is_copied_to_the_root_and_no_settings_means_an_empty_0_settings(
    ws: Workspace,
) -> None:
    package = ws.package("1.0.0", nested=True)
    extension = ExtensionGoal("probe", PUBLISHER, "Probe", "1.0.0", str(package), seq_no=7)
    ws.agent.apply(goal(1, extension))

    handler = ws.handler_dir("1.0.0")
    assert (handler / "HandlerManifest.json").is_file()
    assert ws.calls() == ["install 1.0.0", "enable 1.0.0"]
    assert ws.call_env(0)["seq"] == "0"
    assert (handler / "config" / "0.settings").read_text() == ""
    assert not (handler / "config" / "7.settings").exists()
    report = ws.status_of()
    assert (report.sequence_number, report.handler_status) == (0, "Ready")
    assert report.settings_status is None  # no settings, so no status file is read


def test_reapplying_the_same_version_runs_only_enable_with_the_new_settings(ws: Workspace) -> None:
    package = ws.package("1.0.0")
    ws.agent.apply(goal(1, ext(package, "1.0.0", seq=1)))
    ws.reset_calls()

    ws.agent.apply(goal(1, ext(package, "1.0.0", seq=1)))
    assert ws.calls() == ["enable 1.0.0"]

    ws.reset_calls()
    ws.agent.apply(goal(2, ext(package, "1.0.0", seq=2, settings={"b": 2})))
    assert ws.calls() == ["enable 1.0.0"]
    assert ws.call_env(0)["seq"] == "2"
    assert (ws.handler_dir("1.0.0") / "config" / "1.settings").exists()  # old settings are kept
    new = json.loads((ws.handler_dir("1.0.0") / "config" / "2.settings").read_text())
    assert new["runtimeSettings"][0]["handlerSettings"]["publicSettings"] == {"b": 2}
    status = ws.agent.status()
    assert (status.incarnation_applied, status.incarnation_applying) == (2, None)


# -- updates ---------------------------------------------------------------------------------------------


def test_update_runs_the_documented_sequence_with_its_variables(ws: Workspace) -> None:
    old = ws.package("1.0.0", bodies={"enable": f"echo 1 > mrseq\n{WRITE_SUCCESS}"})
    new = ws.package("1.1.0")
    ws.agent.apply(goal(1, ext(old, "1.0.0", seq=1)))
    ws.reset_calls()

    ws.agent.apply(goal(2, ext(new, "1.1.0", seq=2)))

    assert ws.calls() == [
        "disable 1.0.0",
        "update 1.1.0",
        "uninstall 1.0.0",
        "install 1.1.0",
        "enable 1.1.0",
    ]
    update = ws.call_env(1)
    assert (update["VERSION"], update["from"], update["disable_rc"]) == ("1.1.0", "1.0.0", "0")
    assert update["path"] == str(ws.handler_dir("1.1.0"))
    assert ws.call_env(3)["uninstall_rc"] == "0"
    assert ws.call_env(4)["uninstall_rc"] == "0"
    assert ws.call_env(0)["seq"] == "2"  # the old handler runs with the new settings' number
    assert not ws.handler_dir("1.0.0").exists()
    # mrseq and the status files travelled to the new version.
    assert (ws.handler_dir("1.1.0") / "mrseq").read_text().strip() == "1"
    assert (ws.handler_dir("1.1.0") / "status" / "1.status").is_file()
    assert ws.status_of().version == "1.1.0"
    assert ws.status_of().handler_state == "Enabled"


def test_update_without_install_skips_the_new_install(ws: Workspace) -> None:
    old = ws.package("1.0.0")
    new = ws.package("1.1.0", manifest={"updateMode": "UpdateWithoutInstall"})
    ws.agent.apply(goal(1, ext(old, "1.0.0")))
    ws.reset_calls()

    ws.agent.apply(goal(2, ext(new, "1.1.0", seq=2)))

    assert ws.calls() == ["disable 1.0.0", "update 1.1.0", "uninstall 1.0.0", "enable 1.1.0"]
    assert (ws.handler_dir("1.1.0") / "config" / "HandlerState").read_text() == "Enabled"


def test_downgrade_runs_the_old_handlers_update_command(ws: Workspace) -> None:
    newer = ws.package("2.0.0")
    older = ws.package("1.5.0")
    ws.agent.apply(goal(1, ext(newer, "2.0.0")))
    ws.reset_calls()

    ws.agent.apply(goal(2, ext(older, "1.5.0", seq=2)))

    assert ws.calls() == [
        "disable 2.0.0",
        "update 2.0.0",
        "uninstall 2.0.0",
        "install 1.5.0",
        "enable 1.5.0",
    ]
    update = ws.call_env(1)
    # The installed (newer) handler updates; the agent names the target version in both variables.
    assert (update["VERSION"], update["from"], update["ver"]) == ("1.5.0", "1.5.0", "2.0.0")
    assert not ws.handler_dir("2.0.0").exists()
    assert ws.status_of().version == "1.5.0"


@pytest.mark.parametrize("tolerate", [False, True])
def test_failing_old_disable_aborts_the_update_unless_continue_on_update_failure(
    ws: Workspace, tolerate: bool
) -> None:
    old = ws.package("1.0.0", bodies={"disable": "exit 7"})
    new = ws.package("1.1.0", manifest={"continueOnUpdateFailure": "true" if tolerate else False})
    ws.agent.apply(goal(1, ext(old, "1.0.0")))
    ws.reset_calls()

    ws.agent.apply(goal(2, ext(new, "1.1.0", seq=2)))

    report = ws.status_of()
    if tolerate:
        assert ws.calls() == [
            "disable 1.0.0",
            "update 1.1.0",
            "uninstall 1.0.0",
            "install 1.1.0",
            "enable 1.1.0",
        ]
        assert ws.call_env(1)["disable_rc"] == "7"
        assert (report.handler_status, report.version) == ("Ready", "1.1.0")
    else:
        assert ws.calls() == ["disable 1.0.0"]
        assert (report.handler_status, report.handler_code) == ("NotReady", 1008)
        assert report.handler_message is not None
        assert "ContinueOnUpdate: False" in report.handler_message
        assert (ws.handler_dir("1.0.0") / "config" / "HandlerState").read_text() == "Enabled"


def test_failing_update_marks_failed_upgrade_and_the_next_goal_state_retries(ws: Workspace) -> None:
    flag = ws.root / "fail-update"
    flag.touch()
    old = ws.package("1.0.0")
    new = ws.package("1.1.0", bodies={"update": f'test -e "{flag}" && exit 5\nexit 0'})
    ws.agent.apply(goal(1, ext(old, "1.0.0")))
    ws.reset_calls()

    ws.agent.apply(goal(2, ext(new, "1.1.0", seq=2)))

    assert ws.calls() == ["disable 1.0.0", "update 1.1.0"]
    assert (ws.handler_dir("1.1.0") / "config" / "HandlerState").read_text() == "FailedUpgrade"
    report = ws.status_of()
    assert (report.handler_status, report.handler_code, report.handler_state) == (
        "NotReady",
        1008,
        "FailedUpgrade",
    )
    assert report.handler_message is not None and "Non-zero exit code: 5" in report.handler_message
    assert ws.agent.installed_version(f"{PUBLISHER}.Probe") == "1.0.0"  # disabled, still installed

    flag.unlink()
    ws.reset_calls()
    ws.agent.apply(goal(3, ext(new, "1.1.0", seq=3)))
    # The old version is no longer enabled, so no disable this time.
    assert ws.calls() == ["update 1.1.0", "uninstall 1.0.0", "install 1.1.0", "enable 1.1.0"]
    assert ws.call_env(0)["disable_rc"] == "NOT_RUN"
    assert ws.status_of().handler_status == "Ready"


# -- disable, uninstall, removal -------------------------------------------------------------------------


def test_disable_runs_disable_once(ws: Workspace) -> None:
    package = ws.package("1.0.0")
    ws.agent.apply(goal(1, ext(package, "1.0.0")))
    ws.reset_calls()

    ws.agent.apply(goal(2, ext(package, "1.0.0", state="disabled")))
    assert ws.calls() == ["disable 1.0.0"]
    report = ws.status_of()
    assert (report.handler_state, report.handler_status, report.handler_message) == (
        "Installed",
        "NotReady",
        "Plugin disabled",
    )
    ws.agent.apply(goal(3, ext(package, "1.0.0", state="disabled")))
    assert ws.calls() == ["disable 1.0.0"]  # not enabled any more: nothing to do


def test_uninstall_disables_uninstalls_and_removes_and_then_reports_nothing(ws: Workspace) -> None:
    package = ws.package("1.0.0", bodies={"uninstall": "echo cannot >&2; exit 4"})
    ws.agent.apply(goal(1, ext(package, "1.0.0")))
    ws.reset_calls()

    ws.agent.apply(goal(2, ext(package, "1.0.0", state="uninstall")))

    assert ws.calls() == ["disable 1.0.0", "uninstall 1.0.0"]
    assert not ws.handler_dir("1.0.0").exists()  # the uninstall failure was swallowed
    assert ws.agent.status().extensions == ()


def test_uninstall_stops_when_disable_fails(ws: Workspace) -> None:
    package = ws.package("1.0.0", bodies={"disable": "exit 2"})
    ws.agent.apply(goal(1, ext(package, "1.0.0")))
    ws.reset_calls()

    ws.agent.apply(goal(2, ext(package, "1.0.0", state="uninstall")))

    assert ws.calls() == ["disable 1.0.0"]
    assert ws.handler_dir("1.0.0").exists()
    report = ws.status_of()
    assert (report.handler_status, report.handler_code) == ("NotReady", 1010)


def test_handlers_absent_from_the_goal_state_are_removed_without_commands(ws: Workspace) -> None:
    keep = ws.package("1.0.0")
    drop = ws.package("1.0.0", type_="Other")
    ws.agent.apply(goal(1, ext(keep, "1.0.0"), ext(drop, "1.0.0", name="other", type_="Other")))
    (ws.lib / "unrelated-1.0").mkdir()  # not a handler directory: no config/
    ws.reset_calls()

    ws.agent.apply(goal(2, ext(keep, "1.0.0")))

    assert ws.calls() == ["enable 1.0.0"]
    assert not ws.handler_dir("1.0.0", "Other").exists()
    assert (ws.lib / "unrelated-1.0").is_dir()
    assert [e.name for e in ws.agent.status().extensions] == ["probe"]


# -- commands: failure, timeout, daemons -----------------------------------------------------------------


def test_failing_enable_reports_error_1009_with_its_stderr(ws: Workspace) -> None:
    package = ws.package("1.0.0", bodies={"enable": "echo to-stdout; echo the-reason-it-failed >&2; exit 3"})
    ws.agent.apply(goal(1, ext(package, "1.0.0")))

    report = ws.status_of()
    assert (report.handler_state, report.handler_status, report.handler_code) == (
        "Installed",
        "NotReady",
        1009,
    )
    message = report.handler_message or ""
    assert message.startswith("Non-zero exit code: 3, ")
    assert "[stdout]\nto-stdout" in message and "[stderr]\nthe-reason-it-failed" in message
    assert "exit code 3" in (ws.agent.log_dir / f"{PUBLISHER}.Probe" / "CommandExecution.log").read_text()


def test_a_hanging_enable_is_killed_with_its_whole_process_group(ws: Workspace) -> None:
    hang = (
        'sleep 60 &\necho $! > "$AZURE_GUEST_AGENT_EXTENSION_PATH/grandchild.pid"\n'
        'echo $$ > "$AZURE_GUEST_AGENT_EXTENSION_PATH/shell.pid"\nsleep 60'
    )
    package = ws.package("1.0.0", bodies={"enable": hang})
    ws.agent.timeouts = CommandTimeouts(install=5, enable=0.5, disable=5, update=5, uninstall=5)

    started = time.monotonic()
    ws.agent.apply(goal(1, ext(package, "1.0.0")))
    elapsed = time.monotonic() - started

    assert elapsed < 5
    handler = ws.handler_dir("1.0.0")
    grandchild = int((handler / "grandchild.pid").read_text())
    shell = int((handler / "shell.pid").read_text())
    ws.pids += [grandchild, shell]
    assert gone(grandchild) and gone(shell)
    report = ws.status_of()
    assert (report.handler_status, report.handler_code) == ("NotReady", 1011)
    assert (report.handler_message or "").startswith("Timeout(0.5): ")


def test_a_daemon_started_by_enable_outlives_the_command(ws: Workspace) -> None:
    daemon = (
        'nohup sleep 30 > /dev/null 2>&1 &\necho $! > "$AZURE_GUEST_AGENT_EXTENSION_PATH/daemon.pid"\nexit 0'
    )
    package = ws.package("1.0.0", bodies={"enable": daemon})

    started = time.monotonic()
    ws.agent.apply(goal(1, ext(package, "1.0.0")))

    assert time.monotonic() - started < 5
    pid = int((ws.handler_dir("1.0.0") / "daemon.pid").read_text())
    ws.pids.append(pid)
    assert not gone(pid, timeout=0.3)
    assert ws.status_of().handler_status == "Ready"


def test_environment_drops_inherited_agent_variables_and_lets_the_agent_win() -> None:
    env = command_environment(
        {"PATH": "/bin", "VERSION": "stale", "ConfigSequenceNumber": "99"},
        {"EXTRA": "1", "ConfigSequenceNumber": "98"},
        {"ConfigSequenceNumber": "3"},
    )
    assert env == {"PATH": "/bin", "EXTRA": "1", "ConfigSequenceNumber": "3"}


def test_format_output_keeps_the_tails_within_the_limit() -> None:
    text = format_output("a" * 5000 + "OUT-END", "b" * 5000 + "ERR-END")
    assert len(text) <= 3200
    assert "OUT-END\n\n[stderr]\n" in text and text.endswith("ERR-END")
    assert format_output("short", "e" * 9000, limit=200).startswith("[stdout]\nshort\n\n[stderr]\n")


# -- provisionAfter --------------------------------------------------------------------------------------


def test_provision_after_orders_enables_and_waits_for_success(ws: Workspace) -> None:
    packages = {name: ws.package("1.0.0", type_=name, bodies={"enable": WRITE_SUCCESS}) for name in "ABC"}
    ws.agent.apply(
        goal(
            1,
            ext(packages["C"], "1.0.0", name="c", type_="C", after=("b",)),
            ext(packages["B"], "1.0.0", name="b", type_="B", after=("a",)),
            ext(packages["A"], "1.0.0", name="a", type_="A"),
        )
    )
    enables = [line for line in ws.log.read_text().splitlines() if line.startswith("enable")]
    assert [line.split("path=")[1].split()[0].rsplit("/", 1)[1] for line in enables] == [
        f"{PUBLISHER}.A-1.0.0",
        f"{PUBLISHER}.B-1.0.0",
        f"{PUBLISHER}.C-1.0.0",
    ]
    assert {e.name: e.handler_status for e in ws.agent.status().extensions} == {
        "a": "Ready",
        "b": "Ready",
        "c": "Ready",
    }


@pytest.mark.parametrize(
    ("enable_body", "reason"),
    [
        (
            "exit 1",
            "Skipping processing of extensions since execution of dependent extension Test.Pub.A failed",
        ),
        (WRITE_ERROR, "Dependent Extension Test.Pub.A did not succeed. Status was error"),
        (
            "exit 0",
            "Dependent Extension Test.Pub.A did not reach a terminal state within the allowed timeout",
        ),
    ],
    ids=["command-fails", "status-error", "no-status"],
)
def test_a_failed_dependency_stops_its_dependent(ws: Workspace, enable_body: str, reason: str) -> None:
    first = ws.package("1.0.0", type_="A", bodies={"enable": enable_body})
    second = ws.package("1.0.0", type_="B", bodies={"enable": WRITE_SUCCESS})
    ws.agent.apply(
        goal(
            1,
            ext(second, "1.0.0", name="b", type_="B", after=("a",)),
            ext(first, "1.0.0", name="a", type_="A"),
        )
    )
    assert f"{PUBLISHER}.B-1.0.0" not in ws.log.read_text()
    dependent = ws.status_of("b")
    assert (dependent.handler_status, dependent.handler_code) == ("NotReady", -1)
    assert (dependent.handler_message or "").startswith(reason)
    assert dependent.handler_state == "NotInstalled" and dependent.settings_status is None


def test_a_failed_dependency_also_skips_unrelated_later_extensions_as_the_agent_does(ws: Workspace) -> None:
    # The agent's rule is coarser than "skip the dependents": after a failure of an extension that others
    # wait for, every extension handled later is skipped. c depends on nothing but sorts after a.
    failing = ws.package("1.0.0", type_="A", bodies={"enable": "exit 1"})
    dependent = ws.package("1.0.0", type_="B")
    unrelated = ws.package("1.0.0", type_="C")
    before = ws.package("1.0.0", type_="D", bodies={"enable": WRITE_SUCCESS})
    ws.agent.apply(
        goal(
            1,
            ext(before, "1.0.0", name="d", type_="D"),
            ext(dependent, "1.0.0", name="b", type_="B", after=("a",)),
            ext(failing, "1.0.0", name="a", type_="A"),
            ext(unrelated, "1.0.0", name="c", type_="C"),
        )
    )
    assert ws.status_of("d").handler_status == "Ready"
    for skipped in ("b", "c"):
        assert (ws.status_of(skipped).handler_message or "").startswith("Skipping processing of extensions")


def test_a_provision_after_cycle_is_an_error_and_does_not_hang(ws: Workspace) -> None:
    a = ws.package("1.0.0", type_="A")
    b = ws.package("1.0.0", type_="B")
    c = ws.package("1.0.0", type_="C")
    ws.agent.apply(
        goal(
            1,
            ext(a, "1.0.0", name="a", type_="A", after=("b",)),
            ext(b, "1.0.0", name="b", type_="B", after=("a",)),
            ext(c, "1.0.0", name="c", type_="C"),
        )
    )
    assert ws.calls() == ["install 1.0.0", "enable 1.0.0"]  # only c ran
    assert "cycle: a -> b -> a" in (ws.status_of("a").handler_message or "")
    assert ws.status_of("b").handler_code == -1
    assert ws.status_of("c").handler_status == "Ready"


def test_dependency_levels_ignore_unknown_names_and_explain_cycles() -> None:
    def e(name: str, *after: str) -> ExtensionGoal:
        return ExtensionGoal(name, "P", name, "1.0", "/p", 0, provision_after=after)

    levels, unresolvable = dependency_levels([e("x", "missing"), e("y", "y"), e("z", "y")])
    assert levels == {"x": 0}
    assert unresolvable["y"] == "provisionAfterExtensions forms a cycle: y -> y"
    assert "after y" in unresolvable["z"]


# -- protected settings ----------------------------------------------------------------------------------


@needs_openssl
def test_openssl_decrypts_protected_settings_with_the_documented_command(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    thumbprint = make_instance_certificate(lib)
    crt, prv = certificate_paths(lib, thumbprint)
    assert len(thumbprint) == 40 and thumbprint == thumbprint.upper()
    assert thumbprint == thumbprint_of(crt.read_bytes())
    assert stat.S_IMODE(prv.stat().st_mode) == 0o600
    assert crt.read_text().startswith("-----BEGIN CERTIFICATE-----")

    secret = {"password": "p@ss\nword", "n": 1}
    protected = encrypt_protected_settings(secret, crt.read_bytes())
    (tmp_path / "blob.der").write_bytes(base64.b64decode(protected))
    result = subprocess.run(
        [OPENSSL or "openssl", "smime", "-inform", "DER", "-decrypt", "-recip", str(crt), "-inkey", str(prv)],
        stdin=(tmp_path / "blob.der").open("rb"),
        capture_output=True,
        check=True,
    )
    assert json.loads(result.stdout) == secret
    assert decrypt_protected_settings(protected, crt.read_bytes(), prv.read_bytes()) == secret
    assert decrypt_with_lib(protected, lib, thumbprint) == secret


@needs_openssl
def test_a_handler_finds_and_decrypts_its_protected_settings_like_real_handlers(ws: Workspace) -> None:
    thumbprint = make_instance_certificate(ws.lib)
    crt, _ = certificate_paths(ws.lib, thumbprint)
    protected = encrypt_protected_settings({"token": "s3cret"}, crt.read_bytes())
    out = ws.root / "decrypted.json"
    python = sys.executable
    # Like the Go helper library: configFolder from HandlerEnvironment.json, the thumbprint from the
    # settings file, the certificate at configFolder/../../<thumbprint>.crt.
    read_settings = (
        f'config=$("{python}" -c \'import json; print(json.load(open("HandlerEnvironment.json"))[0]'
        '["handlerEnvironment"]["configFolder"])\')\n'
        'settings="$config/$ConfigSequenceNumber.settings"\n'
        f'thumb=$("{python}" -c \'import json, sys; print(json.load(open(sys.argv[1]))["runtimeSettings"][0]'
        '["handlerSettings"]["protectedSettingsCertThumbprint"])\' "$settings")\n'
        f'"{python}" -c \'import json, sys; print(json.load(open(sys.argv[1]))["runtimeSettings"][0]'
        '["handlerSettings"]["protectedSettings"])\' "$settings" | base64 -d > protected.der\n'
        'openssl smime -inform DER -decrypt -recip "$config/../../$thumb.crt" '
        f'-inkey "$config/../../$thumb.prv" -in protected.der > "{out}"\n'
    )
    package = ws.package("1.0.0", bodies={"enable": read_settings})
    ws.agent.apply(goal(1, ext(package, "1.0.0", seq=4, protected=protected, thumbprint=thumbprint)))

    assert ws.status_of().handler_status == "Ready", ws.status_of().handler_message
    assert json.loads(out.read_text()) == {"token": "s3cret"}


# -- status files ----------------------------------------------------------------------------------------


VALID_STATUS = [
    {
        "version": 1.0,
        "timestampUTC": "2019-06-06T23:52:59Z",
        "status": {
            "name": "probe",
            "operation": "Enable",
            "configurationAppliedTime": "2019-06-06T23:52:58Z",
            "status": "success",
            "code": 0,
            "formattedMessage": {"lang": "en-US", "message": "all good"},
            "substatus": [
                {
                    "name": "AppHealthStatus",
                    "status": "success",
                    "code": 0,
                    "formattedMessage": {"lang": "en-US", "message": "Application found to be healthy"},
                },
                {
                    "name": "ApplicationHealthState",
                    "status": "transitioning",
                    "formattedMessage": {"lang": "en-US", "message": "Initializing"},
                },
            ],
        },
    },
    {"status": {"status": "error"}},  # only the first element counts
]


def test_a_valid_status_file_is_parsed() -> None:
    parsed = parse_status_file(json.dumps(VALID_STATUS), 5)
    assert parsed == SettingsStatus(
        sequence_number=5,
        status="success",
        code=0,
        message="all good",
        operation="Enable",
        substatuses=(
            SubStatus("AppHealthStatus", "success", 0, "Application found to be healthy"),
            SubStatus("ApplicationHealthState", "transitioning", 0, "Initializing"),
        ),
        timestamp="2019-06-06T23:52:59Z",
        configuration_applied_time="2019-06-06T23:52:58Z",
    )


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ("{not json", StatusFileInvalidJson),
        (json.dumps({"status": {"status": "success"}}), StatusFileMalformed),
        (json.dumps([{"status": {"code": 0}}]), StatusFileMalformed),
        (
            json.dumps([{"status": {"status": "success", "formattedMessage": {"message": "no lang"}}}]),
            StatusFileMalformed,
        ),
        (
            json.dumps([{"status": {"status": "success", "substatus": [{"name": "x", "status": "fine"}]}}]),
            StatusFileMalformed,
        ),
        (json.dumps([{"status": {"status": "success", "code": "abc"}}]), StatusFileMalformed),
    ],
    ids=["not-json", "not-an-array", "no-status", "message-without-lang", "bad-substatus", "bad-code"],
)
def test_malformed_status_files_are_rejected(document: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_status_file(document, 0)


def test_status_file_leniencies() -> None:
    odd = parse_status_file(json.dumps([{"status": {"status": "great", "substatus": None}}]), 1)
    assert odd is not None and (odd.status, odd.code, odd.substatuses) == ("error", 0, ())
    assert parse_status_file("[]", 1) is None
    huge = parse_status_file(
        json.dumps(
            [{"status": {"status": "success", "formattedMessage": {"lang": "en", "message": "m" * 200_000}}}]
        ),
        1,
    )
    assert huge is not None and huge.message == "m" * 1024


def test_agent_reports_status_files_missing_valid_and_malformed(ws: Workspace) -> None:
    package = ws.package("1.0.0")
    ws.agent.apply(goal(1, ext(package, "1.0.0", seq=2)))
    status_file = ws.handler_dir("1.0.0") / "status" / "2.status"

    missing = ws.status_of().settings_status
    assert missing is not None and (missing.status, missing.code) == ("transitioning", 0)
    assert (missing.message or "").startswith(
        "This status is being reported by the Guest Agent since no status file was reported by extension"
    )

    status_file.write_text(json.dumps(VALID_STATUS))
    valid = ws.status_of().settings_status
    assert valid is not None and (valid.status, valid.message, valid.sequence_number) == (
        "success",
        "all good",
        2,
    )

    status_file.write_text("[{")
    broken = ws.status_of().settings_status
    assert broken is not None and (broken.status, broken.code) == ("error", 1012)

    status_file.write_text(json.dumps([{"status": {"status": "success", "substatus": [{"status": "bad"}]}}]))
    bad_substatus = ws.status_of().settings_status
    assert bad_substatus is not None and (bad_substatus.status, bad_substatus.code) == ("error", 1012)
    assert "Could not get a valid status" in (bad_substatus.message or "")


def test_heartbeat_overrides_the_handler_status(ws: Workspace) -> None:
    package = ws.package("1.0.0", manifest={"reportHeartbeat": "True"})
    ws.agent.apply(goal(1, ext(package, "1.0.0")))
    assert (ws.status_of().handler_status, ws.status_of().handler_message) == (
        "NotReady",
        "Failed to get heart beat file",
    )
    beat = {
        "version": 1.0,
        "heartbeat": {
            "status": "Ready",
            "code": 0,
            "formattedMessage": {"lang": "en-US", "message": "alive"},
        },
    }
    (ws.handler_dir("1.0.0") / "heartbeat.log").write_text(json.dumps([beat]))
    assert (ws.status_of().handler_status, ws.status_of().handler_message) == ("Ready", "alive")

    later = GuestAgent(ws.lib, ws.agent.log_dir, wall_clock=lambda: time.time() + 601)
    stale = later.status().extension("probe")
    assert stale is not None and (stale.handler_status, stale.handler_code) == ("Unresponsive", -1)
    assert parse_heartbeat(json.dumps([beat])).message == "alive"


# -- documents and manifests -----------------------------------------------------------------------------


def test_goal_state_and_guest_status_round_trip_through_json(ws: Workspace) -> None:
    package = ws.package("1.0.0", bodies={"enable": WRITE_SUCCESS})
    original = goal(
        7,
        ext(package, "1.0.0", seq=3, protected="QUJD", thumbprint="AB12", after=("other",)),
        ExtensionGoal("other", PUBLISHER, "Other", "2.0", str(package), 0, state="uninstall"),
    )
    assert GoalState.from_json(original.to_json()) == original
    assert ws.agent.status().extensions == () and ws.agent.status().incarnation_applied is None

    ws.agent.apply(original)
    written = ws.root / "guest-status.json"
    status = ws.agent.write_status(written)
    assert GuestStatus.from_json(written.read_text()) == status
    assert status.incarnation_applied == 7 and status.extension("probe") is not None
    assert stat.S_IMODE((ws.lib / APPLIED_GOAL_FILE).stat().st_mode) == 0o600


def test_goal_state_validation() -> None:
    with pytest.raises(ValueError, match="version"):
        ExtensionGoal("x", "P", "T", "latest", "/p", 0)
    with pytest.raises(ValueError, match="publisher"):
        ExtensionGoal("x", "../etc", "T", "1.0", "/p", 0)
    one = ExtensionGoal("x", "P", "T", "1.0", "/p", 0)
    with pytest.raises(ValueError, match="one extension per handler"):
        GoalState(1, (one, ExtensionGoal("y", "P", "T", "1.0", "/p", 0)))
    assert parse_handler_dir_name("Microsoft.Azure.Foo-Bar-1.2.3") == ("Microsoft.Azure.Foo-Bar", "1.2.3")
    assert parse_handler_dir_name("apphealth") is None


def test_handler_manifest_parsing(tmp_path: Path) -> None:
    commands = {f"{verb}Command": f"bin/{verb}" for verb in VERBS}
    plain = parse_manifest(json.dumps([{"handlerManifest": commands}]))
    assert plain.install_after_update and not plain.report_heartbeat and not plain.continue_on_update_failure
    assert plain.command("enable") == "bin/enable"

    options = {
        "reportHeartbeat": "TRUE",
        "continueOnUpdateFailure": True,
        "updateMode": "UpdateWithoutInstall",
    }
    tuned = parse_manifest("\ufeff" + json.dumps([{"handlerManifest": {**commands, **options}}]))
    assert tuned.report_heartbeat and tuned.continue_on_update_failure and not tuned.install_after_update
    assert parse_manifest(
        json.dumps([{"handlerManifest": {**commands, "updateMode": "updatewithinstall"}}])
    ).install_after_update

    for broken in ("{", json.dumps({"handlerManifest": commands}), json.dumps([{"handlerManifest": {}}])):
        with pytest.raises(ManifestError) as caught:
            parse_manifest(broken)
        assert caught.value.code == 1003
    with pytest.raises(ManifestError) as missing:
        load_manifest(tmp_path)
    assert missing.value.code == 1002

    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "deep" / "HandlerManifest.json").write_text("[]")
    (tmp_path / "a" / "HandlerManifest.json").write_text("[]")
    assert find_manifest(tmp_path) == tmp_path / "a" / "HandlerManifest.json"


def test_a_bad_manifest_or_missing_package_is_reported_before_any_command(ws: Workspace) -> None:
    package = ws.package("1.0.0")
    (package / "HandlerManifest.json").write_text(json.dumps([{"handlerManifest": {"installCommand": "x"}}]))
    ws.agent.apply(
        goal(1, ext(package, "1.0.0"), ext(ws.root / "nowhere", "1.0.0", name="lost", type_="Lost"))
    )
    assert ws.calls() == []
    assert ws.status_of().handler_code == 1003
    assert ws.status_of("lost").handler_code == 1004
