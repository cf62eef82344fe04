"""Hand-written fakes for the engine's ports (DESIGN.md: fakes subclass the real port).

`FakeProvider` keeps its instances in memory and honours the whole provider contract: power states, the
OS-disk generation, idempotent create/reimage/restore/delete, and disks whose files survive what they
should. It is held to the same conformance suite as the real providers (`tests/providers/test_fake.py`),
so that a test of the engine against it says something about the engine against a real provider.

On top of the contract it lets a test watch and steer:

- `calls`: every action in the order it was asked, as `(verb, key)`; verbs are the engine's task names
  (`create`, `start`, `stop`, `deallocate`, `restart`, `reimage`, `restore`, `delete`). Observation is
  not recorded (nor are health probes).
- `created`, `reimaged`, `restored`, `deleted`: how often the work was really done (not a no-op), per key;
  a repeated create of an instance that exists counts once.
- `fail_next(verb, key, message)` / `fail_always(...)`: the action raises `ProviderError(message)` and
  changes nothing.
- `gate`: a `threading.Event`; while it is clear, actions wait (before acting, or after acting and before
  returning: `gate_point`). `wait_blocked(n)` returns once n actions wait there, so a test can freeze the
  engine mid-task and "crash" it.
- `overlaps`: keys that saw two actions at once (the engine must never do that).
- `crash(key, message)`: the instance stops on its own, as an instance whose init process died.
- `set_probe_health(key, healthy)`: what `probe_health` answers for `key`, whatever the probe; None goes
  back to the default (healthy exactly when the instance exists and runs).
- `snapshot()` / `FakeProvider(initial=...)`: the instances a restarted control plane finds again.

A reimage keeps the OS disk it replaces (one, with its generation, image and guest state) for
`restore_os_disk`, which swaps it back and discards the current one; the restored disk has booted before, so
its custom data does not run again and its report reads as after any later boot.

The guest (custom data, the guest agent) works at once and in memory: custom data "runs" at the first boot
of each OS disk (create, reimage; not restart, not restore), counted in `custom_data_runs`; a goal state is
"applied" at every boot and by `apply_goal_state` while the instance runs, recorded in
`goal_states_applied` as `(key, incarnation)`. `read_guest_report` then says what a healthy guest says:
custom data succeeded, every extension of the goal state in status success. To steer it:

- `fail_custom_data(key, exit_code, output)`: the custom data script of `key` fails from now on.
- `fail_extension(key, name, message, code)`: that extension's enable fails from now on.
- `hold_guest(key)` / `release_guest(key)`: while held, the guest has not finished: custom data reads
  "running" and the goal state is being applied (`incarnationApplying`, extensions transitioning).
- `clear_guest_failures()`.

`FakeClock` is a settable, advanceable clock in UTC.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from scaleset.guest.agent import CODE_ENABLE_FAILED
from scaleset.guest.goalstate import ExtensionGoal, ExtensionStatus, GoalState, GuestStatus, SettingsStatus
from scaleset.providers.base import (
    CustomDataResult,
    GuestReport,
    HealthProbe,
    ImageArtifact,
    InstanceObservation,
    InstanceSpec,
    InstanceState,
    Provider,
    ProviderError,
)

GatePoint = Literal["before", "after"]
Disk = Literal["os"] | int


@dataclass
class FakeOsDisk:
    """An OS disk a reimage replaced, kept for `restore_os_disk`: its contents, what it was made from,
    and its guest's state."""

    generation: int
    image: ImageArtifact
    files: dict[str, str]
    booted: bool
    custom_data_ran: bool
    applied_goal: str | None
    previous_incarnation: int | None


@dataclass
class FakeInstance:
    """One instance as the fake holds it: power state, the OS disk's generation, and disk contents."""

    state: InstanceState
    generation: int
    image: ImageArtifact
    address: str
    os_disk: dict[str, str] = field(default_factory=dict)
    data_disks: dict[int, dict[str, str]] = field(default_factory=dict)
    message: str = ""
    # The guest's inputs, as the last action handed them over.
    custom_data: bytes | None = None
    goal_state: str | None = None
    certificates: tuple[tuple[str, bytes, bytes], ...] = ()
    # The guest, on the current OS disk: whether it booted at all (custom data runs at the first boot only),
    # whether it had custom data to run then, and the goal states applied (the latest, the one before).
    booted: bool = False
    custom_data_ran: bool = False
    applied_goal: str | None = None
    previous_incarnation: int | None = None
    # The OS disk before the last reimage, until a restore puts it back.
    previous_os_disk: FakeOsDisk | None = None


class FakeProvider(Provider):
    name = "fake"

    def __init__(
        self,
        *,
        gate: threading.Event | None = None,
        gate_point: GatePoint = "before",
        gate_timeout: float = 10.0,
        initial: Mapping[str, FakeInstance] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._blocked_changed = threading.Condition(self._lock)
        self._instances: dict[str, FakeInstance] = copy.deepcopy(dict(initial or {}))
        self._failures: dict[tuple[str, str], list[str]] = {}
        self._permanent_failures: dict[tuple[str, str], str] = {}
        self._active: Counter[str] = Counter()
        self._blocked = 0
        self.gate = gate
        self.gate_point: GatePoint = gate_point
        self.gate_timeout = gate_timeout
        self.calls: list[tuple[str, str]] = []
        self.specs: dict[str, InstanceSpec] = {}  # the last spec each key was acted on with
        self.created: Counter[str] = Counter()
        self.reimaged: Counter[str] = Counter()
        self.restored: Counter[str] = Counter()
        self.deleted: Counter[str] = Counter()
        self.overlaps: list[str] = []
        self.closed = False
        self.custom_data_runs: Counter[str] = Counter()
        self.goal_states_applied: list[tuple[str, int]] = []
        self._custom_data_failures: dict[str, tuple[int, str]] = {}
        self._extension_failures: dict[tuple[str, str], tuple[int, str]] = {}
        self._held_guests: set[str] = set()
        self._probe_health: dict[str, bool] = {}

    # -- steering ------------------------------------------------------------------------------------

    def fail_next(self, verb: str, key: str, message: str = "injected failure") -> None:
        """The next `verb` on `key` raises ProviderError(message) and changes nothing."""
        with self._lock:
            self._failures.setdefault((verb, key), []).append(message)

    def fail_always(self, verb: str, key: str, message: str = "injected failure") -> None:
        with self._lock:
            self._permanent_failures[(verb, key)] = message

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()
            self._permanent_failures.clear()

    def fail_custom_data(self, key: str, exit_code: int = 1, output: str = "custom data failed") -> None:
        """`key`'s custom data script fails: it exited with `exit_code`, `output` is its tail."""
        with self._lock:
            self._custom_data_failures[key] = (exit_code, output)

    def fail_extension(
        self, key: str, name: str, message: str = "enable failed", code: int = CODE_ENABLE_FAILED
    ) -> None:
        """Extension `name` of `key`'s goal state fails to enable (as the guest agent reports it)."""
        with self._lock:
            self._extension_failures[(key, name)] = (code, message)

    def clear_guest_failures(self) -> None:
        with self._lock:
            self._custom_data_failures.clear()
            self._extension_failures.clear()

    def hold_guest(self, key: str) -> None:
        """The guest of `key` reports work in progress until `release_guest`."""
        with self._lock:
            self._held_guests.add(key)

    def release_guest(self, key: str) -> None:
        with self._lock:
            self._held_guests.discard(key)

    def set_probe_health(self, key: str, healthy: bool | None) -> None:
        """`probe_health` of `key` answers `healthy` for every probe; None: the default again."""
        with self._lock:
            if healthy is None:
                self._probe_health.pop(key, None)
            else:
                self._probe_health[key] = healthy

    def crash(self, key: str, message: str = "instance init process exited unexpectedly") -> None:
        """The instance stops by itself; `describe_instance` reports STOPPED with `message`."""
        with self._lock:
            instance = self._require(key)
            instance.state = InstanceState.STOPPED
            instance.message = message

    def wait_blocked(self, count: int, timeout: float = 5.0) -> None:
        """Return once `count` actions wait at the gate; AssertionError after `timeout` seconds."""
        with self._blocked_changed:
            if not self._blocked_changed.wait_for(lambda: self._blocked >= count, timeout=timeout):
                raise AssertionError(f"{self._blocked} action(s) blocked at the gate, expected {count}")

    @property
    def blocked(self) -> int:
        with self._lock:
            return self._blocked

    def snapshot(self) -> dict[str, FakeInstance]:
        """A deep copy of every instance, for `FakeProvider(initial=...)`."""
        with self._lock:
            return copy.deepcopy(self._instances)

    def calls_on(self, key: str) -> list[str]:
        """The verbs asked of one key, in order."""
        with self._lock:
            return [verb for verb, called in self.calls if called == key]

    def verbs(self) -> list[str]:
        with self._lock:
            return [verb for verb, _ in self.calls]

    # -- disks, from outside (the conformance suite's DiskAccess) ------------------------------------

    def write_file(self, key: str, disk: Disk, name: str, text: str) -> None:
        with self._lock:
            self._disk(key, disk)[name] = text

    def read_file(self, key: str, disk: Disk, name: str) -> str | None:
        with self._lock:
            return self._disk(key, disk).get(name)

    def _disk(self, key: str, disk: Disk) -> dict[str, str]:
        instance = self._require(key)
        if disk == "os":
            return instance.os_disk
        if disk not in instance.data_disks:
            raise ProviderError(f"instance {key!r} has no data disk with LUN {disk}")
        return instance.data_disks[disk]

    # -- the contract --------------------------------------------------------------------------------

    def create_instance(self, spec: InstanceSpec) -> None:
        def act() -> None:
            instance = self._instances.get(spec.key)
            if instance is None:
                _check_image(spec.image)
                instance = FakeInstance(
                    state=InstanceState.STOPPED,
                    generation=spec.os_disk_generation,
                    image=spec.image,
                    address=spec.address,
                    data_disks={lun: {} for lun in spec.data_disk_luns},
                )
                self._instances[spec.key] = instance
                self.created[spec.key] += 1
                self._run(spec.key, instance, spec)
            else:
                self._run(spec.key, instance, spec)

        _check_goal_state(spec)
        self._action("create", spec.key, act, spec)

    def start_instance(self, spec: InstanceSpec) -> None:
        _check_goal_state(spec)
        self._action("start", spec.key, lambda: self._run(spec.key, self._require(spec.key), spec), spec)

    def stop_instance(self, key: str) -> None:
        self._action("stop", key, lambda: self._halt(self._require(key), InstanceState.STOPPED))

    def deallocate_instance(self, key: str) -> None:
        self._action("deallocate", key, lambda: self._halt(self._require(key), InstanceState.DEALLOCATED))

    def restart_instance(self, spec: InstanceSpec) -> None:
        def act() -> None:
            instance = self._require(spec.key)
            instance.state = InstanceState.STOPPED
            self._run(spec.key, instance, spec)

        _check_goal_state(spec)
        self._action("restart", spec.key, act, spec)

    def reimage_instance(self, spec: InstanceSpec) -> None:
        def act() -> None:
            instance = self._require(spec.key)
            if instance.generation != spec.os_disk_generation:
                _check_image(spec.image)
                instance.previous_os_disk = FakeOsDisk(
                    generation=instance.generation,
                    image=instance.image,
                    files=instance.os_disk,
                    booted=instance.booted,
                    custom_data_ran=instance.custom_data_ran,
                    applied_goal=instance.applied_goal,
                    previous_incarnation=instance.previous_incarnation,
                )
                instance.os_disk = {}
                instance.image = spec.image
                instance.generation = spec.os_disk_generation
                for lun in spec.data_disk_luns:  # data disks stay; a LUN new to the model starts empty
                    instance.data_disks.setdefault(lun, {})
                self.reimaged[spec.key] += 1
                instance.state = InstanceState.STOPPED
                # A new OS disk: its guest has never booted, run custom data or applied anything.
                instance.booted = instance.custom_data_ran = False
                instance.applied_goal = instance.previous_incarnation = None
            self._run(spec.key, instance, spec)

        _check_goal_state(spec)
        self._action("reimage", spec.key, act, spec)

    def restore_os_disk(self, spec: InstanceSpec) -> None:
        def act() -> None:
            instance = self._require(spec.key)
            if instance.generation != spec.os_disk_generation:
                kept = instance.previous_os_disk
                if kept is None or kept.generation != spec.os_disk_generation:
                    have = "none" if kept is None else f"generation {kept.generation}"
                    raise ProviderError(
                        f"instance {spec.key!r} kept no OS disk of generation {spec.os_disk_generation} "
                        f"to restore (it keeps {have})"
                    )
                # The current disk is discarded; the kept one comes back as it was, guest state and all.
                instance.previous_os_disk = None
                instance.os_disk = kept.files
                instance.image = kept.image
                instance.generation = kept.generation
                instance.booted, instance.custom_data_ran = kept.booted, kept.custom_data_ran
                instance.applied_goal, instance.previous_incarnation = (
                    kept.applied_goal,
                    kept.previous_incarnation,
                )
                for lun in spec.data_disk_luns:
                    instance.data_disks.setdefault(lun, {})
                self.restored[spec.key] += 1
                instance.state = InstanceState.STOPPED
            self._run(spec.key, instance, spec)

        _check_goal_state(spec)
        self._action("restore", spec.key, act, spec)

    def delete_instance(self, key: str) -> None:
        def act() -> None:
            if self._instances.pop(key, None) is not None:
                self.deleted[key] += 1

        self._action("delete", key, act)

    def apply_goal_state(self, spec: InstanceSpec) -> None:
        def act() -> None:
            instance = self._require(spec.key)
            instance.goal_state = spec.goal_state
            instance.certificates = spec.certificates
            if instance.state is InstanceState.RUNNING:
                self._apply_goal(spec.key, instance, at_boot=False)

        _check_goal_state(spec)
        self._action("apply_goal_state", spec.key, act, spec)

    def read_guest_report(self, key: str) -> GuestReport:
        with self._lock:
            instance = self._instances.get(key)
            if instance is None or not instance.booted:
                return GuestReport()
            held = key in self._held_guests
            return GuestReport(
                custom_data=self._custom_data_result(key, instance, held),
                guest_status=self._guest_status(key, instance, held).to_json(),
            )

    def probe_health(self, key: str, address: str, probe: HealthProbe) -> bool:
        """Healthy exactly when the instance exists and runs, unless `set_probe_health` says otherwise;
        nothing is sent over the network."""
        with self._lock:
            steered = self._probe_health.get(key)
            if steered is not None:
                return steered
            instance = self._instances.get(key)
            return instance is not None and instance.state is InstanceState.RUNNING

    def describe_instance(self, key: str) -> InstanceObservation:
        with self._lock:
            instance = self._instances.get(key)
            if instance is None:
                return InstanceObservation(InstanceState.MISSING)
            return InstanceObservation(instance.state, instance.generation, instance.message)

    def list_instance_keys(self) -> Sequence[str]:
        with self._lock:
            return sorted(self._instances)

    def close(self) -> None:
        self.closed = True

    # -- machinery -----------------------------------------------------------------------------------

    def _boot(self, key: str, instance: FakeInstance, spec: InstanceSpec) -> None:
        """What the guest does when the instance starts: first custom data (once per OS disk), then the
        goal state (at every boot, as the agent re-runs enable)."""
        instance.custom_data = spec.custom_data
        instance.goal_state = spec.goal_state
        instance.certificates = spec.certificates
        if not instance.booted:  # the first boot of this OS disk
            instance.booted = True
            if instance.custom_data is not None:
                instance.custom_data_ran = True
                self.custom_data_runs[key] += 1
        self._apply_goal(key, instance, at_boot=True)

    def _apply_goal(self, key: str, instance: FakeInstance, *, at_boot: bool) -> None:
        if instance.goal_state is None:
            return
        goal = GoalState.from_json(instance.goal_state)
        applied = None if instance.applied_goal is None else GoalState.from_json(instance.applied_goal)
        if not at_boot and applied is not None and applied.incarnation == goal.incarnation:
            return  # the agent applies a new incarnation only
        if applied is not None and applied.incarnation != goal.incarnation:
            instance.previous_incarnation = applied.incarnation
        instance.applied_goal = instance.goal_state
        self.goal_states_applied.append((key, goal.incarnation))

    def _custom_data_result(self, key: str, instance: FakeInstance, held: bool) -> CustomDataResult | None:
        if not instance.custom_data_ran:
            return None
        if held:
            return CustomDataResult("running")
        failure = self._custom_data_failures.get(key)
        if failure is None:
            return CustomDataResult("succeeded", 0, "custom data script exited with 0")
        exit_code, output = failure
        return CustomDataResult("failed", exit_code, f"custom data script exited with {exit_code}: {output}")

    def _guest_status(self, key: str, instance: FakeInstance, held: bool) -> GuestStatus:
        if instance.applied_goal is None:
            return GuestStatus(None, None, ())
        goal = GoalState.from_json(instance.applied_goal)
        if held:
            extensions = tuple(_transitioning(extension) for extension in goal.extensions)
            return GuestStatus(instance.previous_incarnation, goal.incarnation, extensions)
        reports = (
            _extension_status(extension, self._extension_failures.get((key, extension.name)))
            for extension in goal.extensions
        )
        return GuestStatus(goal.incarnation, None, tuple(r for r in reports if r is not None))

    def _action(self, verb: str, key: str, act: Callable[[], None], spec: InstanceSpec | None = None) -> None:
        with self._lock:
            self.calls.append((verb, key))
            if spec is not None:
                self.specs[key] = spec
            self._active[key] += 1
            if self._active[key] > 1:
                self.overlaps.append(key)
        try:
            if self.gate_point == "before":
                self._pass_gate(verb, key)
            with self._lock:
                self._raise_injected(verb, key)
                act()
            if self.gate_point == "after":
                self._pass_gate(verb, key)
        finally:
            with self._lock:
                self._active[key] -= 1

    def _pass_gate(self, verb: str, key: str) -> None:
        gate = self.gate
        if gate is None or gate.is_set():
            return
        with self._blocked_changed:
            self._blocked += 1
            self._blocked_changed.notify_all()
        try:
            if not gate.wait(self.gate_timeout):
                raise ProviderError(f"fake provider: {verb} {key} waited {self.gate_timeout}s at the gate")
        finally:
            with self._blocked_changed:
                self._blocked -= 1
                self._blocked_changed.notify_all()

    def _raise_injected(self, verb: str, key: str) -> None:
        queued = self._failures.get((verb, key))
        if queued:
            raise ProviderError(queued.pop(0))
        permanent = self._permanent_failures.get((verb, key))
        if permanent is not None:
            raise ProviderError(permanent)

    def _require(self, key: str) -> FakeInstance:
        instance = self._instances.get(key)
        if instance is None:
            raise ProviderError(f"no instance {key!r} in the fake provider")
        return instance

    def _run(self, key: str, instance: FakeInstance, spec: InstanceSpec) -> None:
        was_running = instance.state is InstanceState.RUNNING
        instance.state = InstanceState.RUNNING
        instance.address = spec.address
        instance.message = ""
        if not was_running:
            self._boot(key, instance, spec)
        else:  # as the local provider: the inputs are handed over, a new goal state is picked up
            instance.custom_data = spec.custom_data
            instance.goal_state = spec.goal_state
            instance.certificates = spec.certificates
            self._apply_goal(key, instance, at_boot=False)

    @staticmethod
    def _halt(instance: FakeInstance, state: InstanceState) -> None:
        if instance.state is InstanceState.RUNNING or state is InstanceState.DEALLOCATED:
            instance.state = state
        instance.message = ""


def _check_goal_state(spec: InstanceSpec) -> None:
    # As the local provider: a goal state the guest agent could not read is refused before anything.
    if spec.goal_state is not None:
        try:
            GoalState.from_json(spec.goal_state)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"instance {spec.key!r}: invalid goal state: {exc}") from exc


def _extension_status(extension: ExtensionGoal, failure: tuple[int, str] | None) -> ExtensionStatus | None:
    """What the guest agent reports for one extension of an applied goal state (None: uninstalled)."""
    if extension.state == "uninstall":
        return None  # an uninstalled extension leaves the status
    seq_no = extension.effective_seq_no
    if extension.state == "disabled":
        state, status, code, message, operation = "Installed", "NotReady", 0, "Plugin disabled", "Disable"
        settings_status = "success"
    elif failure is None:
        state, status, code, message, operation = "Enabled", "Ready", 0, "Plugin enabled", "Enable"
        settings_status = "success"
    else:
        code, message = failure
        state, status, operation, settings_status = "Installed", "NotReady", "Enable", "error"
    return ExtensionStatus(
        name=extension.name,
        handler_name=extension.handler_name,
        version=extension.version,
        sequence_number=seq_no,
        handler_state=state,
        handler_status=status,
        handler_code=code,
        handler_message=message,
        settings_status=(
            SettingsStatus(seq_no, settings_status, code, None if failure is None else message, operation)
            if extension.has_settings
            else None
        ),
    )


def _transitioning(extension: ExtensionGoal) -> ExtensionStatus:
    seq_no = extension.effective_seq_no
    return ExtensionStatus(
        name=extension.name,
        handler_name=extension.handler_name,
        version=extension.version,
        sequence_number=seq_no,
        handler_state="Installed",
        handler_status="NotReady",
        handler_code=0,
        handler_message="Plugin installed but not enabled",
        settings_status=SettingsStatus(seq_no, "transitioning", operation="Enable")
        if extension.has_settings
        else None,
    )


def _check_image(image: ImageArtifact) -> None:
    # As a real provider would: an OS disk cannot be made from an image that is not there.
    if not image.path.is_dir():
        raise ProviderError(f"image directory {image.path} does not exist")
    if not image.entrypoint:
        raise ProviderError(f"image {image.path} has no entrypoint")


class FakeClock:
    """A clock that moves only when told; always timezone-aware UTC."""

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._now = _utc(start or datetime(2024, 1, 1, 12, 0, tzinfo=UTC))

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = _utc(when)

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by `seconds` plus any timedelta keywords (`minutes=5`); returns the new now."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += step
            return self._now


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("FakeClock needs a timezone-aware datetime")
    return when.astimezone(UTC)
