"""The conformance suite every provider passes (the contract is `scaleset.providers.base`).

A provider's test module subclasses `ProviderConformance` and supplies its fixtures:

- `provider`: the Provider under test; its finaliser deletes every instance the test left behind.
- `make_spec`: a `SpecFactory`, `make_spec(key, generation=1)`, giving specs with at least data disk
  LUN 0. The factory picks the address: the same key always gets the same one, and no two keys share
  one, because two instances on one address would fight over their ports.
- `disks` (optional): a `DiskAccess` that reads and writes files on an instance's disks from outside,
  for the tests of what survives a restart or reimage. A provider without one leaves the default (None)
  and those tests are skipped.
- `custom_data_runs` (optional): how often an instance really ran `CUSTOM_DATA` (a provider that runs it
  counts what the script leaves on data disk 0, see `count_custom_data_runs`); without it the custom data
  tests check the guest's report only.
- `serving_probe` (optional): a `HealthProbe` that an instance made by `make_spec` answers healthy once it
  runs (an Http probe of the image's health path, say). A provider whose image serves nothing leaves the
  default (None) and the test of a healthy probe is skipped; the unhealthy probes run for every provider.

Methods block until their action is done, so every test observes right after acting, without waiting.
The app inside a running instance is not: the healthy probe is polled for up to GUEST_TIMEOUT seconds.
The guest is the exception too: it works on its own after boot (custom data, extensions), so the guest tests
poll `read_guest_report` for up to GUEST_TIMEOUT seconds. One thing is synchronous even there: custom data
that is due reads "running" (or already ended) once the action that booted the instance returns.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import pytest

from scaleset.guest.goalstate import ExtensionGoal, GoalState, GuestStatus
from scaleset.providers.base import (
    CustomDataResult,
    GuestReport,
    HealthProbe,
    InstanceSpec,
    InstanceState,
    Provider,
    ProviderError,
)
from tests.support import eventually as support_eventually

Disk = Literal["os"] | int  # the OS disk, or the data disk with this LUN


class SpecFactory(Protocol):
    def __call__(self, key: str, *, generation: int = 1) -> InstanceSpec: ...


class DiskAccess(Protocol):
    def write_file(self, key: str, disk: Disk, name: str, text: str) -> None: ...

    def read_file(self, key: str, disk: Disk, name: str) -> str | None:
        """The file's text, or None when it does not exist."""


class CustomDataRuns(Protocol):
    def __call__(self, key: str) -> int: ...


KEY = "conformance-set/0"
OTHER_KEY = "conformance-set/1"
GUEST_TIMEOUT = 20.0

# Custom data that leaves a trace where a reimage cannot wipe it: one line per run on data disk 0.
CUSTOM_DATA_TRACE = "custom-data-runs"
CUSTOM_DATA = b"""#!/usr/bin/env python3
import json, os, pathlib
disk = pathlib.Path(json.loads(os.environ["SCALESET_DATA_DISKS"])["0"])
with (disk / "custom-data-runs").open("a") as trace:
    trace.write("ran\\n")
print("custom data ran")
"""

HANDLER_VERBS = ("install", "enable", "disable", "update", "uninstall")
PROBE_PUBLISHER = "Conformance.Test"
# What `enable` writes for its sequence number (its working directory is the handler directory).
WRITE_SUCCESS_STATUS = (
    'printf \'[{"version": 1.0, "status": {"status": "success", "operation": "Enable", '
    '"code": 0}}]\' > "status/$ConfigSequenceNumber.status"'
)

T = TypeVar("T")


def write_handler_package(directory: Path, log: Path, *, enable: str = "") -> Path:
    """A handler package of shell scripts: every command appends "<verb> <seq no>" to `log`; enable then
    writes a success status for its sequence number and runs the extra shell lines `enable`."""
    (directory / "bin").mkdir(parents=True)
    for verb in HANDLER_VERBS:
        body = f'echo "{verb} $ConfigSequenceNumber" >> "{log}"\n'
        if verb == "enable":
            body += f"{WRITE_SUCCESS_STATUS}\n{enable}\n"
        script = directory / "bin" / f"{verb}.sh"
        script.write_text(f"#!/bin/sh\n{body}exit 0\n")
        script.chmod(0o755)
    manifest = {f"{verb}Command": f"bin/{verb}.sh" for verb in HANDLER_VERBS}
    (directory / "HandlerManifest.json").write_text(
        json.dumps([{"name": directory.name, "version": 1.0, "handlerManifest": manifest}])
    )
    return directory


def probe_extension(
    package: Path, *, seq_no: int = 1, name: str = "probe", type_: str = "Probe", **fields: object
) -> ExtensionGoal:
    return ExtensionGoal(
        name=name,
        publisher=PROBE_PUBLISHER,
        type=type_,
        version="1.0.0",
        package_dir=str(package),
        seq_no=seq_no,
        public_settings={"seq": seq_no},
        **fields,  # type: ignore[arg-type]
    )


def with_guest(
    spec: InstanceSpec, *, goal: GoalState | None = None, custom_data: bytes | None = None
) -> InstanceSpec:
    return dataclasses.replace(
        spec, goal_state=None if goal is None else goal.to_json(), custom_data=custom_data
    )


def eventually(probe: Callable[[], T | None], timeout: float = GUEST_TIMEOUT, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy, and return that (`tests/support.eventually` at this
    suite's guest timeout). An empty list is not yet a result: a wait for processes to appear must not
    return before the first one has."""
    result: T = support_eventually(probe, timeout=timeout, interval=0.02, what=what)
    return result


def guest_status(provider: Provider, key: str = KEY) -> GuestStatus | None:
    text = provider.read_guest_report(key).guest_status
    return None if text is None else GuestStatus.from_json(text)


def wait_for_goal(provider: Provider, incarnation: int, key: str = KEY) -> GuestStatus:
    """The guest status once goal state `incarnation` is applied and no apply is under way."""

    def applied() -> GuestStatus | None:
        status = guest_status(provider, key)
        if status is None or status.incarnation_applied != incarnation or status.incarnation_applying:
            return None
        return status

    return eventually(applied, what=f"goal state incarnation {incarnation} applied")


def wait_for_custom_data(provider: Provider, key: str = KEY) -> CustomDataResult:
    """The custom data result once the script has ended."""

    def ended() -> CustomDataResult | None:
        result = provider.read_guest_report(key).custom_data
        return result if result is not None and result.state != "running" else None

    return eventually(ended, what="custom data ended")


def count_custom_data_runs(disks: DiskAccess, key: str) -> int:
    """How often `CUSTOM_DATA` ran on an instance, for providers that run it."""
    return (disks.read_file(key, 0, CUSTOM_DATA_TRACE) or "").count("ran")


def _state(provider: Provider, key: str = KEY) -> InstanceState:
    return provider.describe_instance(key).state


def _require(disks: DiskAccess | None) -> DiskAccess:
    if disks is None:
        pytest.skip("this provider offers no access to instance disks")
    return disks


class ProviderConformance:
    @pytest.fixture
    def provider(self) -> Provider:
        raise NotImplementedError("a conformance subclass supplies the `provider` fixture")

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        raise NotImplementedError("a conformance subclass supplies the `make_spec` fixture")

    @pytest.fixture
    def disks(self) -> DiskAccess | None:
        return None

    @pytest.fixture
    def custom_data_runs(self) -> CustomDataRuns | None:
        return None

    @pytest.fixture
    def serving_probe(self) -> HealthProbe | None:
        return None

    @pytest.fixture
    def extension_package(self, tmp_path: Path) -> Path:
        return write_handler_package(tmp_path / "conformance-probe", tmp_path / "conformance-probe.log")

    # -- create and describe -------------------------------------------------------------------------

    def test_describe_of_unknown_key_is_missing(self, provider: Provider) -> None:
        assert provider.describe_instance("no-such-set/7").state is InstanceState.MISSING

    def test_create_then_describe_is_running(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.RUNNING
        assert observation.os_disk_generation == 1

    def test_create_twice_is_idempotent(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        provider.create_instance(make_spec(KEY))
        if disks is not None:
            disks.write_file(KEY, "os", "marker", "first create")

        provider.create_instance(make_spec(KEY))

        assert _state(provider) is InstanceState.RUNNING
        assert list(provider.list_instance_keys()) == [KEY]
        if disks is not None:  # the second create did not build a new OS disk
            assert disks.read_file(KEY, "os", "marker") == "first create"

    def test_create_of_stopped_instance_starts_it(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))
        provider.stop_instance(KEY)

        provider.create_instance(make_spec(KEY))

        assert _state(provider) is InstanceState.RUNNING

    # -- power ---------------------------------------------------------------------------------------

    def test_stop_then_start(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        provider.stop_instance(KEY)
        assert _state(provider) is InstanceState.STOPPED

        provider.start_instance(make_spec(KEY))
        assert _state(provider) is InstanceState.RUNNING

    def test_stop_of_stopped_instance_is_noop(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))
        provider.stop_instance(KEY)

        provider.stop_instance(KEY)

        assert _state(provider) is InstanceState.STOPPED

    def test_start_of_running_instance_is_noop(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        provider.start_instance(make_spec(KEY))

        assert _state(provider) is InstanceState.RUNNING

    def test_deallocate_then_start(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        provider.deallocate_instance(KEY)
        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.DEALLOCATED
        assert observation.os_disk_generation == 1

        provider.start_instance(make_spec(KEY))
        assert _state(provider) is InstanceState.RUNNING

    def test_restart_keeps_instance_running_on_same_disk(
        self, provider: Provider, make_spec: SpecFactory
    ) -> None:
        provider.create_instance(make_spec(KEY))

        provider.restart_instance(make_spec(KEY))

        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.RUNNING
        assert observation.os_disk_generation == 1

    def test_restart_keeps_every_disk(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        files = _require(disks)
        provider.create_instance(make_spec(KEY))
        files.write_file(KEY, "os", "marker", "os disk")
        files.write_file(KEY, 0, "marker", "data disk")

        provider.restart_instance(make_spec(KEY))

        assert files.read_file(KEY, "os", "marker") == "os disk"
        assert files.read_file(KEY, 0, "marker") == "data disk"

    # -- reimage -------------------------------------------------------------------------------------

    def test_reimage_to_new_generation(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        provider.reimage_instance(make_spec(KEY, generation=2))

        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.RUNNING
        assert observation.os_disk_generation == 2

    def test_reimage_of_stopped_instance_starts_it(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))
        provider.stop_instance(KEY)

        provider.reimage_instance(make_spec(KEY, generation=2))

        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.RUNNING
        assert observation.os_disk_generation == 2

    def test_reimage_replaces_os_disk_and_keeps_data_disks(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        files = _require(disks)
        provider.create_instance(make_spec(KEY))
        files.write_file(KEY, "os", "marker", "old os disk")
        files.write_file(KEY, 0, "marker", "data disk")

        provider.reimage_instance(make_spec(KEY, generation=2))

        assert files.read_file(KEY, "os", "marker") is None
        assert files.read_file(KEY, 0, "marker") == "data disk"

    def test_reimage_to_same_generation_while_running_is_noop(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        provider.create_instance(make_spec(KEY))
        provider.reimage_instance(make_spec(KEY, generation=2))
        if disks is not None:
            disks.write_file(KEY, "os", "marker", "written after the reimage")

        provider.reimage_instance(make_spec(KEY, generation=2))

        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.RUNNING
        assert observation.os_disk_generation == 2
        if disks is not None:
            assert disks.read_file(KEY, "os", "marker") == "written after the reimage"

    # -- restore (rollback) ---------------------------------------------------------------------------

    def test_restore_brings_back_the_os_disk_of_before_the_last_reimage(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        provider.create_instance(make_spec(KEY))
        if disks is not None:
            disks.write_file(KEY, "os", "marker", "written on generation 1")
            disks.write_file(KEY, 0, "marker", "data disk")
        provider.reimage_instance(make_spec(KEY, generation=2))
        if disks is not None:
            disks.write_file(KEY, "os", "marker", "written on generation 2")

        provider.restore_os_disk(make_spec(KEY))

        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.RUNNING
        assert observation.os_disk_generation == 1
        if disks is not None:
            assert disks.read_file(KEY, "os", "marker") == "written on generation 1"
            assert disks.read_file(KEY, 0, "marker") == "data disk"

    def test_restore_of_a_stopped_instance_starts_it(
        self, provider: Provider, make_spec: SpecFactory
    ) -> None:
        provider.create_instance(make_spec(KEY))
        provider.reimage_instance(make_spec(KEY, generation=2))
        provider.stop_instance(KEY)

        provider.restore_os_disk(make_spec(KEY))

        observation = provider.describe_instance(KEY)
        assert (observation.state, observation.os_disk_generation) == (InstanceState.RUNNING, 1)

    def test_restore_twice_is_once(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        provider.create_instance(make_spec(KEY))
        provider.reimage_instance(make_spec(KEY, generation=2))
        provider.restore_os_disk(make_spec(KEY))
        if disks is not None:
            disks.write_file(KEY, "os", "marker", "written after the restore")

        provider.restore_os_disk(make_spec(KEY))
        provider.stop_instance(KEY)
        provider.restore_os_disk(make_spec(KEY))  # only starts it

        observation = provider.describe_instance(KEY)
        assert (observation.state, observation.os_disk_generation) == (InstanceState.RUNNING, 1)
        if disks is not None:
            assert disks.read_file(KEY, "os", "marker") == "written after the restore"

    def test_restore_of_a_generation_not_kept_is_a_provider_error_and_changes_nothing(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        with pytest.raises(ProviderError):
            provider.restore_os_disk(make_spec(KEY))  # no such instance
        provider.create_instance(make_spec(KEY))
        with pytest.raises(ProviderError):
            provider.restore_os_disk(make_spec(KEY, generation=7))  # never reimaged: nothing kept
        provider.reimage_instance(make_spec(KEY, generation=2))
        if disks is not None:
            disks.write_file(KEY, "os", "marker", "generation 2")

        with pytest.raises(ProviderError):
            provider.restore_os_disk(make_spec(KEY, generation=3))

        observation = provider.describe_instance(KEY)
        assert (observation.state, observation.os_disk_generation) == (InstanceState.RUNNING, 2)
        if disks is not None:
            assert disks.read_file(KEY, "os", "marker") == "generation 2"

    def test_restore_does_not_run_custom_data_again(
        self, provider: Provider, make_spec: SpecFactory, custom_data_runs: CustomDataRuns | None
    ) -> None:
        def spec(generation: int = 1) -> InstanceSpec:
            return with_guest(make_spec(KEY, generation=generation), custom_data=CUSTOM_DATA)

        provider.create_instance(spec())
        assert _outcome(wait_for_custom_data(provider)) == ("succeeded", 0)
        provider.reimage_instance(spec(generation=2))
        assert _outcome(wait_for_custom_data(provider)) == ("succeeded", 0)

        provider.restore_os_disk(spec())

        # The restored disk's own report: had its custom data been due again, it would read "running".
        assert _outcome(provider.read_guest_report(KEY).custom_data) == ("succeeded", 0)
        if custom_data_runs is not None:
            assert custom_data_runs(KEY) == 2
        provider.restart_instance(spec())
        assert _outcome(provider.read_guest_report(KEY).custom_data) == ("succeeded", 0)
        if custom_data_runs is not None:
            assert custom_data_runs(KEY) == 2

    def test_goal_state_is_applied_to_a_restored_os_disk(
        self, provider: Provider, make_spec: SpecFactory, extension_package: Path
    ) -> None:
        first = GoalState(1, (probe_extension(extension_package),))
        provider.create_instance(with_guest(make_spec(KEY), goal=first))
        wait_for_goal(provider, 1)
        second = GoalState(2, (probe_extension(extension_package, seq_no=2),))
        provider.reimage_instance(with_guest(make_spec(KEY, generation=2), goal=second))
        wait_for_goal(provider, 2)

        provider.restore_os_disk(with_guest(make_spec(KEY), goal=first))

        extension = wait_for_goal(provider, 1).extension("probe")
        assert extension is not None and extension.handler_status == "Ready"
        assert extension.sequence_number == 1

    # -- health probes -------------------------------------------------------------------------------

    def test_missing_or_stopped_instance_probes_unhealthy(
        self, provider: Provider, make_spec: SpecFactory
    ) -> None:
        spec = make_spec(KEY)
        probe = HealthProbe("Http", 8080, "/health", timeout_seconds=1.0)
        assert provider.probe_health(KEY, spec.address, probe) is False

        provider.create_instance(spec)
        provider.stop_instance(KEY)

        assert provider.probe_health(KEY, spec.address, probe) is False
        assert provider.probe_health(KEY, spec.address, dataclasses.replace(probe, protocol="Tcp")) is False
        # Many at once answers as one at a time, in order.
        assert provider.probe_health_many([(KEY, spec.address), (KEY, spec.address)], probe) == [False, False]
        assert provider.probe_health_many([], probe) == []

    def test_running_instance_that_serves_the_probe_is_healthy(
        self, provider: Provider, make_spec: SpecFactory, serving_probe: HealthProbe | None
    ) -> None:
        if serving_probe is None:
            pytest.skip("this provider's conformance image serves no health probe")
        spec = make_spec(KEY)
        provider.create_instance(spec)

        # The app starts after the instance does: poll until it answers.
        eventually(lambda: provider.probe_health(KEY, spec.address, serving_probe), what="a healthy probe")
        assert provider.probe_health_many([(KEY, spec.address)], serving_probe) == [True]

        provider.stop_instance(KEY)
        assert provider.probe_health(KEY, spec.address, serving_probe) is False

    # -- delete and list -----------------------------------------------------------------------------

    def test_delete_then_missing_and_unlisted(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        provider.delete_instance(KEY)

        assert _state(provider) is InstanceState.MISSING
        assert KEY not in provider.list_instance_keys()

    def test_delete_of_stopped_instance(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))
        provider.deallocate_instance(KEY)

        provider.delete_instance(KEY)

        assert _state(provider) is InstanceState.MISSING

    def test_delete_twice_is_ok(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))
        provider.delete_instance(KEY)

        provider.delete_instance(KEY)
        provider.delete_instance("never-created/0")

        assert _state(provider) is InstanceState.MISSING

    def test_delete_then_create_gives_fresh_disks(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        files = _require(disks)
        provider.create_instance(make_spec(KEY))
        files.write_file(KEY, 0, "marker", "data disk")
        provider.delete_instance(KEY)

        provider.create_instance(make_spec(KEY))

        assert files.read_file(KEY, 0, "marker") is None

    def test_list_instance_keys(self, provider: Provider, make_spec: SpecFactory) -> None:
        assert list(provider.list_instance_keys()) == []
        provider.create_instance(make_spec(KEY))
        provider.create_instance(make_spec(OTHER_KEY))
        provider.stop_instance(OTHER_KEY)

        assert sorted(provider.list_instance_keys()) == [KEY, OTHER_KEY]

        provider.delete_instance(KEY)
        assert list(provider.list_instance_keys()) == [OTHER_KEY]

    # -- the guest -----------------------------------------------------------------------------------

    def test_guest_report_of_unknown_key_is_empty(self, provider: Provider) -> None:
        assert provider.read_guest_report("no-such-set/7") == GuestReport()

    def test_goal_state_given_at_create_is_applied(
        self, provider: Provider, make_spec: SpecFactory, extension_package: Path
    ) -> None:
        goal = GoalState(1, (probe_extension(extension_package, seq_no=3),))

        provider.create_instance(with_guest(make_spec(KEY), goal=goal))

        extension = wait_for_goal(provider, 1).extension("probe")
        assert extension is not None
        assert (extension.handler_status, extension.sequence_number) == ("Ready", 3)
        assert extension.settings_status is not None
        assert extension.settings_status.status == "success"

    def test_new_goal_state_is_applied_to_a_running_instance(
        self, provider: Provider, make_spec: SpecFactory, extension_package: Path
    ) -> None:
        spec = with_guest(make_spec(KEY), goal=GoalState(1, (probe_extension(extension_package),)))
        provider.create_instance(spec)
        wait_for_goal(provider, 1)

        second = GoalState(2, (probe_extension(extension_package, seq_no=2),))
        provider.apply_goal_state(with_guest(spec, goal=second))
        provider.apply_goal_state(with_guest(spec, goal=second))  # idempotent

        extension = wait_for_goal(provider, 2).extension("probe")
        assert extension is not None and extension.settings_status is not None
        assert (extension.sequence_number, extension.settings_status.status) == (2, "success")
        assert _state(provider) is InstanceState.RUNNING

    def test_goal_state_is_applied_again_on_a_new_os_disk(
        self, provider: Provider, make_spec: SpecFactory, extension_package: Path
    ) -> None:
        goal = GoalState(1, (probe_extension(extension_package),))
        provider.create_instance(with_guest(make_spec(KEY), goal=goal))
        wait_for_goal(provider, 1)

        provider.reimage_instance(with_guest(make_spec(KEY, generation=2), goal=goal))

        extension = wait_for_goal(provider, 1).extension("probe")
        assert extension is not None and extension.handler_status == "Ready"

    def test_apply_goal_state_to_an_unknown_instance_is_a_provider_error(
        self, provider: Provider, make_spec: SpecFactory, extension_package: Path
    ) -> None:
        goal = GoalState(1, (probe_extension(extension_package),))

        with pytest.raises(ProviderError):
            provider.apply_goal_state(with_guest(make_spec(KEY), goal=goal))

    def test_invalid_goal_state_is_a_provider_error(self, provider: Provider, make_spec: SpecFactory) -> None:
        with pytest.raises(ProviderError, match="goal state"):
            provider.create_instance(dataclasses.replace(make_spec(KEY), goal_state='{"extensions": 1}'))

    def test_without_custom_data_there_is_no_custom_data_result(
        self, provider: Provider, make_spec: SpecFactory
    ) -> None:
        provider.create_instance(make_spec(KEY))
        provider.restart_instance(make_spec(KEY))

        assert provider.read_guest_report(KEY).custom_data is None

    def test_custom_data_runs_at_the_first_boot_of_each_os_disk(
        self, provider: Provider, make_spec: SpecFactory, custom_data_runs: CustomDataRuns | None
    ) -> None:
        def spec(generation: int = 1) -> InstanceSpec:
            return with_guest(make_spec(KEY, generation=generation), custom_data=CUSTOM_DATA)

        provider.create_instance(spec())
        assert provider.read_guest_report(KEY).custom_data is not None  # due, so running or ended
        assert _outcome(wait_for_custom_data(provider)) == ("succeeded", 0)

        provider.restart_instance(spec())
        provider.stop_instance(KEY)
        provider.start_instance(spec())
        # Had it been due again, it would read "running" now.
        assert _outcome(provider.read_guest_report(KEY).custom_data) == ("succeeded", 0)
        if custom_data_runs is not None:
            assert custom_data_runs(KEY) == 1

        provider.reimage_instance(spec(generation=2))
        assert _outcome(wait_for_custom_data(provider)) == ("succeeded", 0)
        if custom_data_runs is not None:
            assert custom_data_runs(KEY) == 2


def _outcome(result: CustomDataResult | None) -> tuple[str, int | None] | None:
    return None if result is None else (result.state, result.exit_code)
