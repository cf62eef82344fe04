"""The local provider's guest: custom data and the guest agent inside real instance processes.

Handler packages are small shell scripts written by each test (`write_handler_package`): every command
appends "<verb> <seq no>" to a log outside the instance, so the tests see what ran and how often.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import signal
import stat
import time
from pathlib import Path

import psutil
import pytest

from scaleset.guest import goalstate
from scaleset.guest.agent import CODE_ENABLE_FAILED
from scaleset.guest.goalstate import GoalState
from scaleset.guest.init import ENV_CUSTOM_DATA_TIMEOUT, InstanceLayout
from scaleset.guest.protected import certificate_paths, encrypt_protected_settings, make_instance_certificate
from scaleset.providers.base import CustomDataResult, InstanceState, ProviderError
from scaleset.providers.local import LocalProvider
from tests.providers.conformance import (
    PROBE_PUBLISHER,
    SpecFactory,
    eventually,
    guest_status,
    probe_extension,
    wait_for_custom_data,
    wait_for_goal,
    with_guest,
    write_handler_package,
)
from tests.providers.test_local import alive, init_process, poll, request

KEY = "guest-set/0"
OPENSSL = shutil.which("openssl")


class Handler:
    """One handler package and the log its commands append to."""

    def __init__(self, root: Path, *, enable: str = "", type_: str = "Probe") -> None:
        self.log = root / f"{type_}.log"
        self.package = write_handler_package(root / type_, self.log, enable=enable)
        self.type = type_

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def goal(self, incarnation: int, **fields: object) -> GoalState:
        return GoalState(incarnation, (probe_extension(self.package, type_=self.type, **fields),))  # type: ignore[arg-type]


def daemons(tag: str) -> list[psutil.Process]:
    """Live processes whose command line carries `tag` (a `sleep <tag>` a handler started)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and tag in (process.info["cmdline"] or []):
            found.append(process)
    return found


def unique_sleep() -> str:
    """A sleep duration no other process on the host uses, to find the daemon again."""
    return f"{random.randrange(100_000, 999_999)}.{random.randrange(1000)}"


def layout(provider: LocalProvider) -> InstanceLayout:
    return provider.instance_layout(KEY)


# -- the files between provider and guest ---------------------------------------------------------------


def test_layout_uses_the_guest_agents_file_names(tmp_path: Path) -> None:
    files = InstanceLayout(tmp_path)
    assert files.goal_state.name == goalstate.GOAL_STATE_FILE
    assert files.guest_status.name == goalstate.GUEST_STATUS_FILE


def test_guest_inputs_are_files_beside_the_os_disk(
    local_provider: LocalProvider, spec_for: SpecFactory, tmp_path: Path
) -> None:
    handler = Handler(tmp_path)
    thumbprint = make_instance_certificate(tmp_path / "made")
    crt, prv = certificate_paths(tmp_path / "made", thumbprint)
    spec = dataclasses.replace(
        with_guest(spec_for(KEY), goal=handler.goal(1), custom_data=b"echo hi\n"),
        certificates=((thumbprint, crt.read_bytes(), prv.read_bytes()),),
    )

    local_provider.create_instance(spec)

    files = layout(local_provider)
    assert files.custom_data.read_bytes() == b"echo hi\n"
    assert GoalState.from_json(files.goal_state.read_text()) == handler.goal(1)
    cert_copy, key_copy = files.certificate_files(thumbprint)
    assert cert_copy.read_bytes() == crt.read_bytes()
    assert stat.S_IMODE(key_copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.custom_data.stat().st_mode) == 0o600
    # The guest copies the certificate where handlers look for it (spec §1.5).
    lib_key = files.agent_lib_dir / f"{thumbprint}.prv"
    eventually(lib_key.exists, what="certificate installed")
    assert stat.S_IMODE(lib_key.stat().st_mode) == 0o600

    # A spec without them removes them, and stale certificates go.
    local_provider.restart_instance(spec_for(KEY))
    assert not files.custom_data.exists()
    assert not files.goal_state.exists()
    assert list(files.certificates.iterdir()) == []


def test_invalid_thumbprint_is_a_provider_error(local_provider: LocalProvider, spec_for: SpecFactory) -> None:
    spec = dataclasses.replace(spec_for(KEY), certificates=(("../evil", b"crt", b"key"),))

    with pytest.raises(ProviderError, match="thumbprint"):
        local_provider.create_instance(spec)
    assert local_provider.describe_instance(KEY).state is InstanceState.MISSING


def test_guest_report_tolerates_partial_files(local_provider: LocalProvider, spec_for: SpecFactory) -> None:
    local_provider.create_instance(spec_for(KEY))
    local_provider.stop_instance(KEY)  # nothing writes reports any more
    files = layout(local_provider)

    files.custom_data_result.write_text('{"state": "succ')
    files.guest_status.write_text('{"incarnationApplied": ')
    report = local_provider.read_guest_report(KEY)

    assert (report.custom_data, report.guest_status) == (None, None)


# -- extensions ------------------------------------------------------------------------------------------


def test_extension_status_after_create_and_enable_after_every_boot(
    local_provider: LocalProvider, spec_for: SpecFactory, tmp_path: Path
) -> None:
    handler = Handler(tmp_path)
    spec = with_guest(spec_for(KEY), goal=handler.goal(1))

    local_provider.create_instance(spec)

    status = wait_for_goal(local_provider, 1, KEY)
    extension = status.extension("probe")
    assert extension is not None and extension.settings_status is not None
    assert (extension.handler_name, extension.handler_state) == (f"{PROBE_PUBLISHER}.Probe", "Enabled")
    assert extension.settings_status.status == "success"
    on_disk = json.loads(layout(local_provider).guest_status.read_text())
    assert on_disk["incarnationApplied"] == 1
    assert (layout(local_provider).agent_lib_dir / f"{PROBE_PUBLISHER}.Probe-1.0.0" / "config").is_dir()
    assert handler.calls() == ["install 1", "enable 1"]

    # A restart keeps the OS disk, so the handler stays installed; the agent enables it again.
    local_provider.restart_instance(spec)
    eventually(lambda: len(handler.calls()) == 3, what="enable after restart")
    assert handler.calls() == ["install 1", "enable 1", "enable 1"]

    # A reimage is a new OS disk: install again, then enable (M-9).
    local_provider.reimage_instance(with_guest(spec_for(KEY, generation=2), goal=handler.goal(1)))
    wait_for_goal(local_provider, 1, KEY)
    eventually(lambda: len(handler.calls()) == 5, what="install and enable after reimage")
    assert handler.calls() == ["install 1", "enable 1", "enable 1", "install 1", "enable 1"]


def test_a_goal_state_applied_while_stopped_runs_at_the_next_start(
    local_provider: LocalProvider, spec_for: SpecFactory, tmp_path: Path
) -> None:
    handler = Handler(tmp_path)
    local_provider.create_instance(spec_for(KEY))
    local_provider.stop_instance(KEY)

    local_provider.apply_goal_state(with_guest(spec_for(KEY), goal=handler.goal(4)))
    assert handler.calls() == []
    local_provider.start_instance(with_guest(spec_for(KEY), goal=handler.goal(4)))

    wait_for_goal(local_provider, 4, KEY)
    assert handler.calls() == ["install 1", "enable 1"]


def test_a_slow_extension_does_not_delay_the_app(
    local_provider: LocalProvider, spec_for: SpecFactory, tmp_path: Path
) -> None:
    handler = Handler(tmp_path, enable="sleep 30")
    spec = with_guest(spec_for(KEY), goal=handler.goal(1))

    started = time.monotonic()
    local_provider.create_instance(spec)
    assert request("GET", spec, "/").status_code == 200

    assert time.monotonic() - started < 10
    status = eventually(
        lambda: (s := guest_status(local_provider, KEY)) is not None and s.incarnation_applying == 1 and s,
        what="goal state being applied",
    )
    assert status.incarnation_applied is None


def test_a_daemon_started_by_enable_dies_with_the_instance(
    local_provider: LocalProvider, spec_for: SpecFactory, tmp_path: Path
) -> None:
    tag = unique_sleep()
    # As CustomScript's and AppHealth's shims: nohup, in the background, and the command exits.
    handler = Handler(tmp_path, enable=f"nohup sleep {tag} >/dev/null 2>&1 &")
    spec = with_guest(spec_for(KEY), goal=handler.goal(1))
    local_provider.create_instance(spec)
    wait_for_goal(local_provider, 1, KEY)
    (first,) = eventually(lambda: daemons(tag), what="daemon started")

    local_provider.restart_instance(spec)
    eventually(lambda: len(handler.calls()) == 3, what="enable after restart")
    (second,) = eventually(lambda: daemons(tag), what="daemon started again")
    assert not alive(first)

    local_provider.delete_instance(KEY)
    assert not alive(second)
    assert daemons(tag) == []


def test_a_daemon_in_its_own_session_dies_even_when_the_init_was_killed(
    local_provider: LocalProvider, spec_for: SpecFactory, tmp_path: Path
) -> None:
    tag = unique_sleep()
    handler = Handler(tmp_path, enable=f"setsid nohup sleep {tag} >/dev/null 2>&1 &")
    local_provider.create_instance(with_guest(spec_for(KEY), goal=handler.goal(1)))
    wait_for_goal(local_provider, 1, KEY)
    (daemon,) = eventually(lambda: daemons(tag), what="daemon started")
    assert daemon.pid in {child.pid for child in init_process(local_provider, KEY).children(recursive=True)}

    init_process(local_provider, KEY).send_signal(signal.SIGKILL)  # nothing is left to stop the tree
    poll(lambda: local_provider.describe_instance(KEY).state is InstanceState.STOPPED)
    assert alive(daemon)

    local_provider.delete_instance(KEY)
    assert not alive(daemon)


def test_daemons_that_exit_are_reaped(
    local_provider: LocalProvider, spec_for: SpecFactory, tmp_path: Path
) -> None:
    handler = Handler(tmp_path, enable="nohup sleep 0.2 >/dev/null 2>&1 &")
    local_provider.create_instance(with_guest(spec_for(KEY), goal=handler.goal(1)))
    wait_for_goal(local_provider, 1, KEY)
    init = init_process(local_provider, KEY)

    def no_zombies() -> bool:
        return not [child for child in init.children() if child.status() == psutil.STATUS_ZOMBIE]

    time.sleep(0.5)  # the daemon has exited by now
    eventually(no_zombies, timeout=5, what="orphans reaped")


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_a_handler_decrypts_protected_settings_with_the_instance_certificate(
    local_provider: LocalProvider, spec_for: SpecFactory, tmp_path: Path
) -> None:
    thumbprint = make_instance_certificate(tmp_path / "control-plane")
    crt, prv = certificate_paths(tmp_path / "control-plane", thumbprint)
    protected = encrypt_protected_settings({"token": "s3cret"}, crt.read_bytes())
    out = tmp_path / "decrypted.json"
    # What real handlers do: the thumbprint from the settings file, the files in the agent's lib dir
    # (the handler directory's parent).
    decrypt = (
        "settings=config/$ConfigSequenceNumber.settings\n"
        'python3 -c \'import json, sys; s = json.load(open(sys.argv[1]))["runtimeSettings"][0]'
        '["handlerSettings"]; print(s["protectedSettingsCertThumbprint"]); '
        'print(s["protectedSettings"], file=open("protected.b64", "w"))\' "$settings" > thumb.txt\n'
        "thumb=$(cat thumb.txt)\n"
        "base64 -d protected.b64 | openssl smime -inform DER -decrypt "
        f'-recip "../$thumb.crt" -inkey "../$thumb.prv" > "{out}"\n'
    )
    handler = Handler(tmp_path, enable=decrypt)
    goal = handler.goal(1, protected_settings=protected, thumbprint=thumbprint)
    spec = dataclasses.replace(
        with_guest(spec_for(KEY), goal=goal), certificates=((thumbprint, crt.read_bytes(), prv.read_bytes()),)
    )

    local_provider.create_instance(spec)

    wait_for_goal(local_provider, 1, KEY)
    assert json.loads(out.read_text()) == {"token": "s3cret"}


# -- custom data -----------------------------------------------------------------------------------------


def test_custom_data_runs_before_the_app_with_its_environment(
    local_provider: LocalProvider, spec_for: SpecFactory
) -> None:
    # No "#!": run through /bin/sh, from the OS disk. The sleep shows the app waits for it.
    script = (
        b"sleep 0.3\nmkdir files\n"
        b'echo "$SCALESET_INSTANCE_KEY at $SCALESET_INSTANCE_ADDRESS" > files/from-custom-data\n'
    )
    spec = with_guest(spec_for(KEY), custom_data=script)

    local_provider.create_instance(spec)

    assert local_provider.read_guest_report(KEY).custom_data == CustomDataResult("running")
    served = request("GET", spec, "/files/os/from-custom-data")
    assert served.status_code == 200  # the app started after the script ended
    assert served.text == f"{KEY} at {spec.address}\n"
    assert wait_for_custom_data(local_provider, KEY).state == "succeeded"
    files = layout(local_provider)
    assert files.user_data.read_bytes() == script
    assert stat.S_IMODE(files.user_data.stat().st_mode) == 0o700
    assert files.boot_finished.exists()


def test_custom_data_failure_is_reported_and_the_app_starts_anyway(
    local_provider: LocalProvider, spec_for: SpecFactory
) -> None:
    script = b"#!/bin/sh\necho preparing\necho 'no such package: frobnicate' >&2\nexit 7\n"
    spec = with_guest(spec_for(KEY), custom_data=script)

    local_provider.create_instance(spec)

    result = wait_for_custom_data(local_provider, KEY)
    assert result == CustomDataResult(
        "failed", 7, "custom data script exited with 7: preparing\nno such package: frobnicate"
    )
    assert request("GET", spec, "/").status_code == 200
    log = layout(local_provider).cloud_init_output_log.read_text()
    assert "preparing\nno such package: frobnicate\n" in log
    # A failed script is not retried at the next boot, as cloud-init does not.
    local_provider.restart_instance(spec)
    assert local_provider.read_guest_report(KEY).custom_data == result


def test_custom_data_that_runs_too_long_is_killed(
    local_provider: LocalProvider, spec_for: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_CUSTOM_DATA_TIMEOUT, "0.5")
    spec = with_guest(spec_for(KEY), custom_data=b"#!/bin/sh\necho waiting\nexec sleep 30\n")

    local_provider.create_instance(spec)

    result = wait_for_custom_data(local_provider, KEY)
    assert (result.state, result.exit_code) == ("failed", None)
    assert result.message == "custom data script timed out after 0.5 s: waiting"
    assert request("GET", spec, "/").status_code == 200


def test_custom_data_interrupted_by_a_stop_runs_again_at_the_next_start(
    local_provider: LocalProvider, spec_for: SpecFactory
) -> None:
    spec = with_guest(spec_for(KEY), custom_data=b"#!/bin/sh\nsleep 30\n")
    local_provider.create_instance(spec)
    eventually(lambda: init_process(local_provider, KEY).children(), what="custom data started")

    local_provider.stop_instance(KEY)

    result = local_provider.read_guest_report(KEY).custom_data
    assert result is not None and result.state == "failed"
    assert "interrupted" in result.message
    local_provider.start_instance(spec)
    assert local_provider.read_guest_report(KEY).custom_data == CustomDataResult("running")


def test_reimage_forgets_the_old_disks_reports(
    local_provider: LocalProvider, spec_for: SpecFactory, tmp_path: Path
) -> None:
    handler = Handler(tmp_path)
    local_provider.create_instance(with_guest(spec_for(KEY), goal=handler.goal(1), custom_data=b"exit 0\n"))
    wait_for_custom_data(local_provider, KEY)
    wait_for_goal(local_provider, 1, KEY)

    # The new disk's custom data runs for a while, and the guest agent starts only after it.
    local_provider.reimage_instance(
        with_guest(spec_for(KEY, generation=2), goal=handler.goal(1), custom_data=b"sleep 30\n")
    )

    report = local_provider.read_guest_report(KEY)
    assert report.custom_data == CustomDataResult("running")
    assert report.guest_status is None


def test_a_failing_enable_keeps_its_exit_code_while_orphans_are_reaped(
    local_provider: LocalProvider, spec_for: SpecFactory, tmp_path: Path
) -> None:
    # Orphans exit around the command's own exit: the reaper must leave the command to the agent.
    handler = Handler(tmp_path, enable="for i in 1 2 3; do nohup sleep 0.0$i >/dev/null 2>&1 & done\nexit 5")
    local_provider.create_instance(with_guest(spec_for(KEY), goal=handler.goal(1)))

    extension = wait_for_goal(local_provider, 1, KEY).extension("probe")

    assert extension is not None
    assert (extension.handler_status, extension.handler_code) == ("NotReady", CODE_ENABLE_FAILED)
    assert extension.handler_message is not None
    assert extension.handler_message.startswith("Non-zero exit code: 5,")
