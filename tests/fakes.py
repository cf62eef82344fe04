"""Hand-written fakes for the engine's ports (DESIGN.md: fakes subclass the real port).

`FakeProvider` keeps its instances in memory and honours the whole provider contract: power states, the
OS-disk generation, idempotent create/reimage/delete, and disks whose files survive what they should. It is
held to the same conformance suite as the real providers (`tests/providers/test_fake.py`), so that a test
of the engine against it says something about the engine against a real provider.

On top of the contract it lets a test watch and steer:

- `calls`: every action in the order it was asked, as `(verb, key)`; verbs are the engine's task names
  (`create`, `start`, `stop`, `deallocate`, `restart`, `reimage`, `delete`). Observation is not recorded.
- `created`, `reimaged`, `deleted`: how often the work was really done (not a no-op), per key; a repeated
  create of an instance that exists counts once.
- `fail_next(verb, key, message)` / `fail_always(...)`: the action raises `ProviderError(message)` and
  changes nothing.
- `gate`: a `threading.Event`; while it is clear, actions wait (before acting, or after acting and before
  returning: `gate_point`). `wait_blocked(n)` returns once n actions wait there, so a test can freeze the
  engine mid-task and "crash" it.
- `overlaps`: keys that saw two actions at once (the engine must never do that).
- `crash(key, message)`: the instance stops on its own, as an instance whose init process died.
- `snapshot()` / `FakeProvider(initial=...)`: the instances a restarted control plane finds again.

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

from scaleset.providers.base import (
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
class FakeInstance:
    """One instance as the fake holds it: power state, the OS disk's generation, and disk contents."""

    state: InstanceState
    generation: int
    image: ImageArtifact
    address: str
    os_disk: dict[str, str] = field(default_factory=dict)
    data_disks: dict[int, dict[str, str]] = field(default_factory=dict)
    message: str = ""


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
        self.deleted: Counter[str] = Counter()
        self.overlaps: list[str] = []
        self.closed = False

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
                self._instances[spec.key] = FakeInstance(
                    state=InstanceState.RUNNING,
                    generation=spec.os_disk_generation,
                    image=spec.image,
                    address=spec.address,
                    data_disks={lun: {} for lun in spec.data_disk_luns},
                )
                self.created[spec.key] += 1
            else:
                self._run(instance, spec)

        self._action("create", spec.key, act, spec)

    def start_instance(self, spec: InstanceSpec) -> None:
        self._action("start", spec.key, lambda: self._run(self._require(spec.key), spec), spec)

    def stop_instance(self, key: str) -> None:
        self._action("stop", key, lambda: self._halt(self._require(key), InstanceState.STOPPED))

    def deallocate_instance(self, key: str) -> None:
        self._action("deallocate", key, lambda: self._halt(self._require(key), InstanceState.DEALLOCATED))

    def restart_instance(self, spec: InstanceSpec) -> None:
        def act() -> None:
            instance = self._require(spec.key)
            instance.state = InstanceState.STOPPED
            self._run(instance, spec)

        self._action("restart", spec.key, act, spec)

    def reimage_instance(self, spec: InstanceSpec) -> None:
        def act() -> None:
            instance = self._require(spec.key)
            if instance.generation != spec.os_disk_generation:
                _check_image(spec.image)
                instance.os_disk = {}
                instance.image = spec.image
                instance.generation = spec.os_disk_generation
                for lun in spec.data_disk_luns:  # data disks stay; a LUN new to the model starts empty
                    instance.data_disks.setdefault(lun, {})
                self.reimaged[spec.key] += 1
                instance.state = InstanceState.STOPPED
            self._run(instance, spec)

        self._action("reimage", spec.key, act, spec)

    def delete_instance(self, key: str) -> None:
        def act() -> None:
            if self._instances.pop(key, None) is not None:
                self.deleted[key] += 1

        self._action("delete", key, act)

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

    @staticmethod
    def _run(instance: FakeInstance, spec: InstanceSpec) -> None:
        instance.state = InstanceState.RUNNING
        instance.address = spec.address
        instance.message = ""

    @staticmethod
    def _halt(instance: FakeInstance, state: InstanceState) -> None:
        if instance.state is InstanceState.RUNNING or state is InstanceState.DEALLOCATED:
            instance.state = state
        instance.message = ""


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
