"""The sim provider: a simulated fleet on virtual time, with seeded, injectable faults.

It honours the whole provider contract (the conformance suite holds it to it) while running nothing: every
action returns at once in wall time, and time only passes when the injected clock says so, so an engine
test waits out a 5-minute health window in milliseconds and a benchmark drives 100 000 instances in one
process. See docs/sim-provider.md.

The model of one instance:

- A boot (create, start, restart, reimage, restore) makes it RUNNING at once, but it is *up* only
  `boot_seconds` of virtual time later. Before that `probe_health` answers False and the guest says
  nothing new; from then on the guest has run the OS disk's custom data (once per disk) and applied the
  goal state, and `probe_health` answers True. Being up is worked out lazily, when the instance is next
  looked at, so a waiting instance costs nothing.
- The OS disk carries its generation, image, files and guest progress; a reimage keeps the disk it
  replaces, which `restore_os_disk` swaps back as it was (custom data done stays done).
- At every boot each registered `Fault` whose selectors match may strike: a seeded draw decides, from
  (seed, instance key, that instance's boot count, the fault's place in the list), so the same run
  faults the same instances whatever order a thread pool boots them in. What struck sticks to the
  instance until its next boot.

Per-instance memory is kept small (slotted records, disk files made on first write, the image artifact
and goal-state strings shared by reference), and `probe_health` is O(1) with no allocation on the
common path: a benchmark calls it hundreds of thousands of times.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, get_args

from scaleset.engine.clock import Clock
from scaleset.guest.agent import CODE_ENABLE_FAILED
from scaleset.guest.goalstate import (
    ExtensionGoal,
    ExtensionStatus,
    GoalState,
    GuestStatus,
    SettingsStatus,
    SubStatus,
)
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

FaultKind = Literal[
    "boot_failure", "hang", "slow_boot", "flapping", "crash_after_healthy", "extension_failure"
]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
Disk = Literal["os"] | int  # the OS disk, or the data disk with this LUN

_RUNNING = InstanceState.RUNNING
_STOPPED = InstanceState.STOPPED
_DEALLOCATED = InstanceState.DEALLOCATED

# The guest's progress on one OS disk.
_NEVER_BOOTED = 0
_NO_CUSTOM_DATA = 1
_CUSTOM_DATA_RUNNING = 2
_CUSTOM_DATA_DONE = 3
# Shared: one object for every instance, as GuestReport and CustomDataResult are frozen.
_CUSTOM_DATA_RESULTS: dict[int, CustomDataResult] = {
    _CUSTOM_DATA_RUNNING: CustomDataResult("running"),
    _CUSTOM_DATA_DONE: CustomDataResult("succeeded", 0, "custom data script exited with 0"),
}
_EMPTY_REPORT = GuestReport()


@dataclass(frozen=True, slots=True)
class Fault:
    """Something that goes wrong at boot, for the instances the selectors pick.

    kind:
      boot_failure         the booting action raises ProviderError; the instance is left STOPPED (on the
                           new disk, for a reimage) with the message, so a retry boots it again
      hang                 RUNNING but never up: never healthy, its guest never reports
      slow_boot            up after `seconds` instead of the provider's boot_seconds
      flapping             once up, healthy for `seconds`, unhealthy for `seconds`, and so on
      crash_after_healthy  stops by itself `seconds` after it came up (STOPPED, with a message)
      extension_failure    the extension named `extension` (None: every one) reports its enable failed,
                           at handler version `version` only when one is given (a bad release)

    Selectors (all must match; None matches everything): `image`, the image version's directory name
    (a published version's artifact lives in `.../<sku>/<version>`, so "2.0.0") or the whole path;
    `keys`, a collection of instance keys. `rate` is the chance that a matching boot is struck.
    `message` (default "simulated <kind> fault") goes into the error, the instance's message or the
    failed extension's status.
    """

    kind: FaultKind
    seconds: float = 0.0
    image: str | None = None
    keys: Collection[str] | None = None
    rate: float = 1.0
    extension: str | None = None
    version: str | None = None
    message: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; the kinds are {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be from 0 to 1, not {self.rate}")
        if not math.isfinite(self.seconds) or self.seconds < 0:
            raise ValueError(f"fault seconds must be a finite number >= 0, not {self.seconds}")
        if self.kind == "flapping" and self.seconds <= 0:
            raise ValueError("a flapping fault needs seconds > 0: the length of each spell")
        if isinstance(self.keys, str):
            raise ValueError("fault keys is a collection of instance keys, not one string")
        if self.keys is not None:
            object.__setattr__(self, "keys", frozenset(self.keys))
        if not self.message:
            object.__setattr__(self, "message", f"simulated {self.kind} fault")

    def matches(self, key: str, image: ImageArtifact) -> bool:
        if self.keys is not None and key not in self.keys:
            return False
        return self.image is None or self.image in (image.path.name, str(image.path))


@dataclass(slots=True, eq=False)
class _OsDisk:
    generation: int
    image: ImageArtifact
    files: dict[str, str] | None = None  # made on the first write
    guest: int = _NEVER_BOOTED
    applied: str | None = None  # the goal state (JSON, shared) the guest applied on this disk


@dataclass(slots=True, eq=False)
class _Instance:
    disk: _OsDisk
    luns: tuple[int, ...]
    state: InstanceState = _STOPPED
    previous: _OsDisk | None = None  # the disk before the last reimage, for restore_os_disk
    data: dict[int, dict[str, str]] | None = None  # data disk files, made on the first write
    goal: str | None = None  # the goal state last handed over (shared, never copied)
    ready_at: float = 0.0  # virtual time (epoch seconds) the current boot is up; inf: never
    faults: tuple[Fault, ...] | None = None  # what struck at the last boot
    boots: int = 0
    message: str = ""


class SimProvider(Provider):
    """A simulated fleet on `clock`'s virtual time (`boot_seconds` per boot) with seeded `faults`."""

    name = "sim"
    acts_at_once = True  # every action is a change to the in-memory model, on virtual time

    def __init__(
        self, clock: Clock, *, seed: int = 0, boot_seconds: float = 30.0, faults: Iterable[Fault] = ()
    ) -> None:
        if not math.isfinite(boot_seconds) or boot_seconds < 0:
            raise ValueError(f"boot_seconds must be a finite number >= 0, not {boot_seconds}")
        self._clock = clock
        self._seed = seed
        self._boot_seconds = float(boot_seconds)
        self._faults: list[Fault] = list(faults)
        self._instances: dict[str, _Instance] = {}
        self._lock = threading.Lock()

    # -- faults --------------------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        """Register `fault` for every boot from now on; instances already up keep what they drew."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget every registered fault; what struck an instance lasts until its next boot."""
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> tuple[Fault, ...]:
        with self._lock:
            return tuple(self._faults)

    def faults_of(self, key: str) -> tuple[Fault, ...]:
        """The faults that struck the instance at its last boot (empty for a missing instance)."""
        with self._lock:
            instance = self._instances.get(key)
            return () if instance is None or instance.faults is None else instance.faults

    # -- disks, from outside (the conformance suite's DiskAccess) ------------------------------------

    def write_file(self, key: str, disk: Disk, name: str, text: str) -> None:
        with self._lock:
            instance = self._require(key)
            if disk == "os":
                if instance.disk.files is None:
                    instance.disk.files = {}
                instance.disk.files[name] = text
                return
            self._check_lun(key, instance, disk)
            if instance.data is None:
                instance.data = {}
            instance.data.setdefault(disk, {})[name] = text

    def read_file(self, key: str, disk: Disk, name: str) -> str | None:
        with self._lock:
            instance = self._require(key)
            if disk == "os":
                files = instance.disk.files
            else:
                self._check_lun(key, instance, disk)
                files = None if instance.data is None else instance.data.get(disk)
            return None if files is None else files.get(name)

    # -- the contract --------------------------------------------------------------------------------

    def create_instance(self, spec: InstanceSpec) -> None:
        _check_goal_state(spec)
        now = self._now()
        with self._lock:
            instance = self._instances.get(spec.key)
            if instance is None:
                instance = _Instance(_OsDisk(spec.os_disk_generation, spec.image), spec.data_disk_luns)
                self._instances[spec.key] = instance
            self._start(spec, instance, now)

    def start_instance(self, spec: InstanceSpec) -> None:
        _check_goal_state(spec)
        now = self._now()
        with self._lock:
            self._start(spec, self._require(spec.key), now)

    def stop_instance(self, key: str) -> None:
        self._halt(key, _STOPPED)

    def deallocate_instance(self, key: str) -> None:
        self._halt(key, _DEALLOCATED)

    def restart_instance(self, spec: InstanceSpec) -> None:
        _check_goal_state(spec)
        now = self._now()
        with self._lock:
            instance = self._require(spec.key)
            self._hand_over(spec, instance, now)
            instance.state = _STOPPED
            self._boot(spec, instance, now)

    def reimage_instance(self, spec: InstanceSpec) -> None:
        _check_goal_state(spec)
        now = self._now()
        with self._lock:
            instance = self._settled(spec.key, now)  # the disk it keeps, as it is now
            if instance.disk.generation != spec.os_disk_generation:
                instance.previous = instance.disk
                instance.disk = _OsDisk(spec.os_disk_generation, spec.image)
                instance.state = _STOPPED
            self._start(spec, instance, now)

    def restore_os_disk(self, spec: InstanceSpec) -> None:
        _check_goal_state(spec)
        now = self._now()
        with self._lock:
            instance = self._settled(spec.key, now)
            if instance.disk.generation != spec.os_disk_generation:
                kept = instance.previous
                if kept is None or kept.generation != spec.os_disk_generation:
                    raise ProviderError(
                        f"instance {spec.key!r} kept no OS disk of generation {spec.os_disk_generation}"
                    )
                instance.previous, instance.disk = instance.disk, kept
                instance.state = _STOPPED
            self._start(spec, instance, now)

    def delete_instance(self, key: str) -> None:
        with self._lock:
            self._instances.pop(key, None)

    def describe_instance(self, key: str) -> InstanceObservation:
        now = self._now()
        with self._lock:
            instance = self._instances.get(key)
            if instance is None:
                return InstanceObservation(InstanceState.MISSING)
            self._settle(instance, now)
            return InstanceObservation(instance.state, instance.disk.generation, instance.message)

    def list_instance_keys(self) -> Sequence[str]:
        with self._lock:
            return sorted(self._instances)

    def apply_goal_state(self, spec: InstanceSpec) -> None:
        """Hand over the goal state; an instance that is up applies it at once, any other when it is."""
        _check_goal_state(spec)
        now = self._now()
        with self._lock:
            self._hand_over(spec, self._require(spec.key), now)

    def read_guest_report(self, key: str) -> GuestReport:
        now = self._now()
        with self._lock:
            instance = self._instances.get(key)
            if instance is None:
                return _EMPTY_REPORT
            self._settle(instance, now)
            disk = instance.disk
            custom_data = _CUSTOM_DATA_RESULTS.get(disk.guest)
            if disk.applied is None:
                return _EMPTY_REPORT if custom_data is None else GuestReport(custom_data)
            health = self._application_health(instance, now)
            failing = _failing_extensions(instance.faults)
            goal = disk.applied
        return GuestReport(custom_data, _guest_status_json(goal, health, failing))

    def probe_health(self, key: str, address: str, probe: HealthProbe) -> bool:
        """Answered from the simulation, never the network: healthy iff running, up, and no fault says
        otherwise. The probe's protocol, port and path are not checked."""
        now = self._now()
        with self._lock:
            instance = self._instances.get(key)
            return instance is not None and _healthy(instance, now)

    def probe_health_many(self, targets: Sequence[tuple[str, str]], probe: HealthProbe) -> list[bool]:
        """`probe_health` of many instances under one clock reading and one lock."""
        now = self._now()
        with self._lock:
            instances = self._instances
            return [
                # `_healthy`, its common case (up, no faults) answered here without a call.
                instance is not None
                and (
                    (instance.faults is None and instance.state is _RUNNING and now >= instance.ready_at)
                    or _healthy(instance, now)
                )
                for instance in [instances.get(key) for key, _ in targets]
            ]

    # -- machinery -----------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _require(self, key: str) -> _Instance:
        instance = self._instances.get(key)
        if instance is None:
            raise ProviderError(f"no instance {key!r} in the sim provider")
        return instance

    def _settled(self, key: str, now: float) -> _Instance:
        instance = self._require(key)
        self._settle(instance, now)
        return instance

    @staticmethod
    def _check_lun(key: str, instance: _Instance, lun: int) -> None:
        if lun not in instance.luns and (instance.data is None or lun not in instance.data):
            raise ProviderError(f"instance {key!r} has no data disk with LUN {lun}")

    def _start(self, spec: InstanceSpec, instance: _Instance, now: float) -> None:
        self._hand_over(spec, instance, now)
        if instance.state is not _RUNNING:
            self._boot(spec, instance, now)

    def _halt(self, key: str, state: InstanceState) -> None:
        now = self._now()
        with self._lock:
            instance = self._settled(key, now)
            # Stopping a deallocated instance leaves it deallocated, as in Azure.
            if instance.state is _RUNNING or state is _DEALLOCATED:
                instance.state = state
            instance.message = ""

    def _hand_over(self, spec: InstanceSpec, instance: _Instance, now: float) -> None:
        """The guest's inputs as the action gives them; an instance that is up applies the goal at once."""
        self._settle(instance, now)  # first what happened before (a crash), then the new inputs
        instance.goal = spec.goal_state
        luns = spec.data_disk_luns
        if luns != instance.luns and not set(luns) <= set(instance.luns):
            # A LUN new to the model starts empty; existing data disks stay.
            instance.luns = tuple(sorted({*instance.luns, *luns}))
        self._settle(instance, now)

    def _boot(self, spec: InstanceSpec, instance: _Instance, now: float) -> None:
        """Start a stopped instance: draw its faults, then it runs and is up after its boot time."""
        instance.boots += 1
        faults = self._draw(spec.key, instance)
        instance.faults = faults
        instance.message = ""
        if faults is not None:
            failure = next((f for f in faults if f.kind == "boot_failure"), None)
            if failure is not None:
                instance.message = f"instance {spec.key!r} failed to boot: {failure.message}"
                raise ProviderError(instance.message)
        instance.state = _RUNNING
        instance.ready_at = now + self._boot_time(faults)
        disk = instance.disk
        if disk.guest == _NEVER_BOOTED:  # custom data runs at the first boot of each OS disk
            disk.guest = _NO_CUSTOM_DATA if spec.custom_data is None else _CUSTOM_DATA_RUNNING
        self._settle(instance, now)

    def _boot_time(self, faults: tuple[Fault, ...] | None) -> float:
        if faults is None:
            return self._boot_seconds
        if any(f.kind == "hang" for f in faults):
            return math.inf
        slow = [f.seconds for f in faults if f.kind == "slow_boot"]
        return max(slow) if slow else self._boot_seconds

    def _draw(self, key: str, instance: _Instance) -> tuple[Fault, ...] | None:
        if not self._faults:
            return None
        image = instance.disk.image
        struck = tuple(
            fault
            for index, fault in enumerate(self._faults)
            if fault.matches(key, image) and self._strikes(fault.rate, key, instance.boots, index)
        )
        return struck or None

    def _strikes(self, rate: float, key: str, boot: int, index: int) -> bool:
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        return _uniform(self._seed, key, boot, index) < rate

    @staticmethod
    def _settle(instance: _Instance, now: float) -> None:
        """Catch up with virtual time: once up, the guest has done its work; a crash stops the instance."""
        if instance.state is not _RUNNING or now < instance.ready_at:
            return
        disk = instance.disk
        if instance.goal is not None:
            disk.applied = instance.goal
        if disk.guest == _CUSTOM_DATA_RUNNING:
            disk.guest = _CUSTOM_DATA_DONE
        if instance.faults is not None:
            for fault in instance.faults:
                if fault.kind == "crash_after_healthy" and now >= instance.ready_at + fault.seconds:
                    instance.state = _STOPPED
                    instance.message = f"instance stopped unexpectedly: {fault.message}"
                    return

    @staticmethod
    def _application_health(instance: _Instance, now: float) -> str:
        """What the Application Health handler reports now, in its own words (consistent with probes)."""
        if instance.state is not _RUNNING:
            return _UNKNOWN  # nothing probes a stopped instance
        if now < instance.ready_at:
            return _INITIALIZING
        return _HEALTHY if _healthy(instance, now) else _UNHEALTHY


def _healthy(instance: _Instance, now: float) -> bool:
    if instance.state is not _RUNNING or now < instance.ready_at:
        return False
    faults = instance.faults
    if faults is None:
        return True
    for fault in faults:
        since_up = now - instance.ready_at
        if fault.kind == "crash_after_healthy" and since_up >= fault.seconds:
            return False
        if fault.kind == "flapping" and int(since_up // fault.seconds) % 2 == 1:
            return False
    return True


def _uniform(seed: int, key: str, boot: int, index: int) -> float:
    """A draw in [0, 1) that depends only on its inputs (not on Python's per-process hash seed)."""
    digest = hashlib.blake2b(f"{seed}\0{key}\0{boot}\0{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# (extension name, handler version, message) for each extension_failure fault that struck; None means any.
_Failures = tuple[tuple[str | None, str | None, str], ...]


def _failing_extensions(faults: tuple[Fault, ...] | None) -> _Failures | None:
    if faults is None:
        return None
    failures = tuple((f.extension, f.version, f.message) for f in faults if f.kind == "extension_failure")
    return failures or None


def _check_goal_state(spec: InstanceSpec) -> None:
    # As the local provider: a goal state the guest agent could not read is refused before anything.
    if spec.goal_state is not None:
        try:
            _parse_goal(spec.goal_state)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"instance {spec.key!r}: invalid goal state: {exc}") from exc


# A fleet shares a handful of goal-state documents: parse and render each once, not once per instance.
@lru_cache(maxsize=1024)
def _parse_goal(text: str) -> GoalState:
    return GoalState.from_json(text)


@lru_cache(maxsize=1024)
def _guest_status_json(goal_json: str, health: str, failing: _Failures | None) -> str:
    goal = _parse_goal(goal_json)
    reports = (_extension_status(extension, health, failing) for extension in goal.extensions)
    return GuestStatus(goal.incarnation, None, tuple(r for r in reports if r is not None)).to_json()


def _extension_status(
    extension: ExtensionGoal, health: str, failing: _Failures | None
) -> ExtensionStatus | None:
    """What the guest agent reports for one extension of the applied goal state (None: uninstalled)."""
    if extension.state == "uninstall":
        return None  # an uninstalled extension leaves the status
    seq_no = extension.effective_seq_no
    failure = next(
        (
            message
            for name, version, message in failing or ()
            if name in (None, extension.name) and version in (None, extension.version)
        ),
        None,
    )
    settings: SettingsStatus | None
    if extension.state == "disabled":
        state, status, code, message = "Installed", "NotReady", 0, "Plugin disabled"
        settings = SettingsStatus(seq_no, "success", operation="Disable")
    elif failure is not None:
        state, status, code = "Installed", "NotReady", CODE_ENABLE_FAILED
        message = f"Enable failed: {failure}"
        settings = SettingsStatus(seq_no, "error", code, message, "Enable")
    else:
        state, status, code, message = "Enabled", "Ready", 0, "Plugin enabled"
        if _is_application_health(extension):
            settings = _application_health_status(seq_no, health, _rich_states(extension.version))
        else:
            settings = SettingsStatus(seq_no, "success", operation="Enable")
    return ExtensionStatus(
        name=extension.name,
        handler_name=extension.handler_name,
        version=extension.version,
        sequence_number=seq_no,
        handler_state=state,
        handler_status=status,
        handler_code=code,
        handler_message=message,
        settings_status=settings if extension.has_settings else None,
    )


# -- the Application Health handler's status file (guest/builtin/ApplicationHealthLinux-*/bin/apphealth.py)

_HEALTHY = "Healthy"
_UNHEALTHY = "Unhealthy"
_UNKNOWN = "Unknown"
_INITIALIZING = "Initializing"
_APPLICATION_HEALTH_MESSAGE = "Successfully polling for application health"


def _is_application_health(extension: ExtensionGoal) -> bool:
    return extension.type.lower().startswith("applicationhealth")


def _rich_states(version: str) -> bool:
    """typeHandlerVersion 1.x reports Healthy/Unhealthy only; 2.x adds Initializing and Unknown."""
    major = version.split(".", 1)[0]
    return not major.isdigit() or int(major) >= 2


def _application_health_status(seq_no: int, health: str, rich: bool) -> SettingsStatus:
    if not rich:
        if health == _INITIALIZING:  # before its first probe: the handler's placeholder
            return SettingsStatus(seq_no, "transitioning", 0, "Enable in progress", "enable")
        health = _HEALTHY if health == _HEALTHY else _UNHEALTHY
    bad = health in (_UNHEALTHY, _UNKNOWN)
    substatuses = (
        SubStatus(
            "AppHealthStatus",
            "error" if bad else "success",
            0,
            "Application found to be unhealthy" if bad else "Application found to be healthy",
        ),
        SubStatus(
            "ApplicationHealthState",
            {_INITIALIZING: "transitioning", _UNKNOWN: "error"}.get(health, "success"),
            0,
            health,
        ),
    )
    return SettingsStatus(seq_no, "success", 0, _APPLICATION_HEALTH_MESSAGE, "enable", substatuses)
