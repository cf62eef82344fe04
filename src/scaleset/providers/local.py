"""The local provider: every instance is a real process tree on this host.

An instance is a directory under the provider's root (layout in `scaleset.guest.init.InstanceLayout`):
its OS disk `os/` copied fresh from the image, data disks `data/lun<N>/` that nothing but delete removes,
and the spec in `instance.json`. Its power state is its own init process (`scaleset.guest.init`), started
in a session of its own so that it outlives this server; a restarted server re-adopts it through the
`init.json` record the init writes, checked against pid reuse by the process's create time.

The guest's inputs (custom data, the guest agent's goal state, certificates) are files in the instance
directory beside the OS disk, written before the init starts so that it finds them at boot; the guest's
reports (how custom data ended, the agent's status) are files the init writes there. Both survive a reimage,
except the reports, which describe the OS disk they came from and go with it.

A reimage keeps the OS disk it replaces, for a rollback (`restore_os_disk`): `os-previous/` beside `os/`,
with the generation it was made for and the custom data report of its first boot. One disk is kept, the
one before the last reimage; a restore swaps it back and discards the disk it replaces, so afterwards
none is kept until the next reimage. The kept disk carries its own cloud-init mark (`boot-finished`), so
the custom data that ran on it does not run again when it comes back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

import scaleset
from scaleset.guest.files import write_file_atomically
from scaleset.guest.goalstate import GoalState
from scaleset.guest.init import (
    ENV_OS_DISK,
    EXIT_ANOTHER_INIT_RUNNING,
    InstanceLayout,
    custom_data_result_from_json,
    spec_to_json,
    start_ticks_of,
    wait_until_gone,
)
from scaleset.providers.base import (
    CustomDataResult,
    GuestReport,
    ImageArtifact,
    InstanceObservation,
    InstanceSpec,
    InstanceState,
    Provider,
    ProviderError,
)

PowerMarker = Literal["stopped", "deallocated"]

# How long start waits for a new init process to record itself; it normally takes about 0.1 s.
INIT_START_TIMEOUT_SECONDS = 10.0
_POLL_SECONDS = 0.01

# Only for init records without start ticks (written by an older init): two reads of one process's
# create time can differ a little, as psutil derives it from the boot time, which the kernel recomputes
# when the wall clock is adjusted. A reused pid is a different process started at a different moment.
_CREATE_TIME_TOLERANCE_SECONDS = 1.0

# `python -m` puts its working directory first on sys.path; starting the init from the directory that
# holds the `scaleset` package makes it import the same package as this server, installed or not,
# without a PYTHONPATH that the app would inherit.
_PACKAGE_PARENT = Path(scaleset.__file__).resolve().parent.parent

# A key is segments joined by "/"; each segment is letters, digits and "-", with single "." or "_"
# inside. So "/" <-> "__" is reversible and a directory name can never be ".", ".." or hidden.
_KEY_SEGMENT = r"[A-Za-z0-9-]+(?:[._][A-Za-z0-9-]+)*"
_KEY_PATTERN = re.compile(rf"{_KEY_SEGMENT}(?:/{_KEY_SEGMENT})*")

# A thumbprint names two files (`<THUMB>.crt`, `.prv`); Azure's are 40 hex digits (SHA-1).
_THUMBPRINT_PATTERN = re.compile(r"[0-9A-Fa-f]{1,128}")


@dataclass(frozen=True)
class _InitRecord:
    """What init.json says: which process is (or was) the instance's init."""

    pid: int
    create_time: float
    # Clock ticks since boot (`start_ticks_of`); None in a record written by an init from before it was
    # recorded, which is then matched by its wall-clock create time.
    start_ticks: int | None


class LocalProvider(Provider):
    """Instances as process trees under `root`; `stop_timeout` bounds a graceful stop before SIGKILL."""

    name = "local"

    def __init__(self, root: Path, *, stop_timeout: float = 5.0) -> None:
        self._root = Path(root).absolute()
        self._root.mkdir(parents=True, exist_ok=True)
        for interrupted in self._root.glob(".deleting-*"):  # deletes a crash cut short
            shutil.rmtree(interrupted, ignore_errors=True)
        self._stop_timeout = stop_timeout
        self._guard = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        # Inits this object spawned, by pid, polled so that none stays a zombie after it exits.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- the contract -------------------------------------------------------------------------------

    def create_instance(self, spec: InstanceSpec) -> None:
        _check_guest_inputs(spec)
        with self._locked(spec.key):
            layout = self._layout(spec.key)
            if not layout.os_disk.is_dir():
                _check_image(spec.image)
                layout.root.mkdir(parents=True, exist_ok=True)
                self._replace_os_disk(layout, spec)
            elif _read_generation(layout) is None:
                # A create that crashed between installing the disk and recording its generation.
                write_file_atomically(layout.generation, str(spec.os_disk_generation))
            self._start(layout, spec)

    def start_instance(self, spec: InstanceSpec) -> None:
        _check_guest_inputs(spec)
        with self._locked(spec.key):
            self._start(self._existing_layout(spec.key), spec)

    def stop_instance(self, key: str) -> None:
        with self._locked(key):
            self._stop(self._existing_layout(key), "stopped")

    def deallocate_instance(self, key: str) -> None:
        with self._locked(key):
            self._stop(self._existing_layout(key), "deallocated")

    def restart_instance(self, spec: InstanceSpec) -> None:
        _check_guest_inputs(spec)
        with self._locked(spec.key):
            layout = self._existing_layout(spec.key)
            self._stop(layout, "stopped")
            self._start(layout, spec)

    def reimage_instance(self, spec: InstanceSpec) -> None:
        _check_guest_inputs(spec)
        with self._locked(spec.key):
            layout = self._existing_layout(spec.key)
            # The same generation means this reimage already happened (the engine repeats an intent after
            # a crash): rebuilding would wipe what the instance wrote since. Only make sure it runs.
            already_done = layout.os_disk.is_dir() and _read_generation(layout) == spec.os_disk_generation
            if not already_done:
                _check_image(spec.image)
                self._stop(layout, "stopped")
                self._replace_os_disk(layout, spec)
            self._start(layout, spec)

    def restore_os_disk(self, spec: InstanceSpec) -> None:
        _check_guest_inputs(spec)
        with self._locked(spec.key):
            layout = self._existing_layout(spec.key)
            kept = _KeptDisk(layout)
            # As with reimage: the OS disk already of that generation means the restore happened (or the
            # instance was never reimaged away from it); only make sure it runs.
            already_done = layout.os_disk.is_dir() and _read_generation(layout) == spec.os_disk_generation
            if not already_done:
                if not (kept.disk.is_dir() and kept.read_generation() == spec.os_disk_generation):
                    raise ProviderError(
                        f"instance {spec.key!r} kept no OS disk of generation {spec.os_disk_generation} "
                        f"to restore ({kept.describe()})"
                    )
                if not spec.image.entrypoint:
                    raise ProviderError(f"image {spec.image.path} has no entrypoint")
                self._stop(layout, "stopped")
                self._restore_kept_disk(layout, kept, spec)
            self._start(layout, spec)

    def delete_instance(self, key: str) -> None:
        with self._locked(key):
            layout = self._layout(key)
            if not layout.root.is_dir():
                return
            self._stop(layout, "stopped")
            # Rename first so the instance leaves the listing at once, even if the removal is interrupted.
            doomed = Path(tempfile.mkdtemp(prefix=".deleting-", dir=self._root))
            os.replace(layout.root, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def describe_instance(self, key: str) -> InstanceObservation:
        layout = self._layout(key)
        self._reap_children()
        if not layout.root.is_dir():
            return InstanceObservation(InstanceState.MISSING)
        generation = _read_generation(layout)
        if self._live_init(layout) is not None:
            return InstanceObservation(InstanceState.RUNNING, generation)
        marker = _read_power_marker(layout)
        if marker == "deallocated":
            return InstanceObservation(InstanceState.DEALLOCATED, generation)
        if marker == "stopped":
            return InstanceObservation(InstanceState.STOPPED, generation)
        if not layout.os_disk.is_dir():
            return InstanceObservation(InstanceState.STOPPED, generation, "instance has no OS disk yet")
        return InstanceObservation(
            InstanceState.STOPPED,
            generation,
            f"instance init process exited unexpectedly; see {layout.console_log}",
        )

    def apply_goal_state(self, spec: InstanceSpec) -> None:
        """Write the goal state and certificates for the instance's init, which polls for a new incarnation
        (`scaleset.guest.init.GOAL_STATE_POLL_SECONDS`) and applies it; a stopped instance applies it at
        its next start. Certificates are written first, so a goal state never names a missing one."""
        _check_guest_inputs(spec)
        with self._locked(spec.key):
            layout = self._existing_layout(spec.key)
            _write_guest_inputs(layout, spec, with_custom_data=False)

    def read_guest_report(self, key: str) -> GuestReport:
        layout = self._layout(key)
        return GuestReport(
            custom_data=_read_custom_data_result(layout.custom_data_result),
            guest_status=_read_json_text(layout.guest_status),
        )

    def list_instance_keys(self) -> Sequence[str]:
        keys = (entry.name.replace("__", "/") for entry in self._root.iterdir() if entry.is_dir())
        return sorted(key for key in keys if _is_valid_key(key))

    def close(self) -> None:
        self._reap_children()

    def instance_layout(self, key: str) -> InstanceLayout:
        """Where an instance's files are (its console.log, its disks), whether or not it exists."""
        return self._layout(key)

    # -- power ---------------------------------------------------------------------------------------

    def _start(self, layout: InstanceLayout, spec: InstanceSpec) -> None:
        if not layout.os_disk.is_dir():
            raise ProviderError(f"instance {spec.key!r} has no OS disk; create or reimage it first")
        for lun in spec.data_disk_luns:
            layout.data_disk(lun).mkdir(parents=True, exist_ok=True)
        write_file_atomically(layout.instance_json, spec_to_json(spec))
        # Before the init starts, so that the guest finds them at boot; a running init picks up a new
        # goal state the same way as from apply_goal_state.
        _write_guest_inputs(layout, spec, with_custom_data=True)
        # Cleared before spawning: from here on, an init that is not alive died by itself.
        layout.power.unlink(missing_ok=True)
        if self._live_init(layout) is None:
            self._sweep_dead_init(layout)
            self._spawn_init(layout, spec.key)

    def _spawn_init(self, layout: InstanceLayout, key: str) -> None:
        command = [sys.executable, "-m", "scaleset.guest.init", str(layout.root)]
        try:
            with layout.console_log.open("ab") as console:
                child = subprocess.Popen(
                    command,
                    cwd=_PACKAGE_PARENT,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=console,
                    close_fds=True,
                    start_new_session=True,
                )
        except OSError as exc:
            raise ProviderError(f"cannot start the init process of instance {key!r}: {exc}") from exc
        with self._guard:
            self._children[child.pid] = child
        self._wait_for_init_record(layout, key, child)

    def _wait_for_init_record(self, layout: InstanceLayout, key: str, child: subprocess.Popen[bytes]) -> None:
        """Return once a live init has recorded itself: ours, or one that was already booting."""
        deadline = time.monotonic() + INIT_START_TIMEOUT_SECONDS
        while self._live_init(layout) is None:
            returncode = child.poll()
            if returncode not in (None, EXIT_ANOTHER_INIT_RUNNING):
                raise ProviderError(
                    f"the init process of instance {key!r} exited with code {returncode} before it "
                    f"started; see {layout.console_log}"
                )
            if time.monotonic() > deadline:
                _signal_group(child.pid, signal.SIGKILL)  # a late init would run unrecorded
                raise ProviderError(
                    f"the init process of instance {key!r} did not start within "
                    f"{INIT_START_TIMEOUT_SECONDS:g} s; see {layout.console_log}"
                )
            time.sleep(_POLL_SECONDS)

    def _stop(self, layout: InstanceLayout, marker: PowerMarker) -> None:
        init = self._live_init(layout)
        if init is not None:
            self._terminate(init)
        # Also what a dead init left behind, and daemons that escaped a live one's tree.
        self._sweep_instance_processes(layout)
        layout.init_json.unlink(missing_ok=True)
        # Stopping a deallocated instance leaves it deallocated, as in Azure.
        if not (marker == "stopped" and _read_power_marker(layout) == "deallocated"):
            write_file_atomically(layout.power, marker)

    def _terminate(self, init: psutil.Process) -> None:
        """SIGTERM the init's process group, then SIGKILL whatever is left after the stop timeout."""
        try:
            # Captured before signalling: once the init is gone its orphans are no longer its children.
            tree = [init, *init.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        group = init.pid  # the init leads its own session, so its pid names its process group
        _signal_group(group, signal.SIGTERM)
        alive = wait_until_gone(tree, self._stop_timeout)
        # Also catches group members forked after the tree was captured. Safe even once the init is
        # gone: a group id stays reserved while the group has members, and an empty group is ESRCH.
        _signal_group(group, signal.SIGKILL)
        for process in alive:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        wait_until_gone(alive, self._stop_timeout)
        self._reap_children()

    def _sweep_dead_init(self, layout: InstanceLayout) -> None:
        """Kill what a dead init left behind (its app, when the init itself was killed); forget it."""
        if _read_init_record(layout) is None:
            return
        self._sweep_instance_processes(layout)
        layout.init_json.unlink(missing_ok=True)

    def _sweep_instance_processes(self, layout: InstanceLayout) -> None:
        """SIGKILL every process that carries the instance's marker in its environment.

        The init ends its whole tree, but a process can leave it: one whose init was killed, or a daemon a
        handler started that the init could not adopt. Every process of an instance inherits
        `SCALESET_OS_DISK=<this OS disk>` (unique per instance and provider root), so this finds them all,
        whatever their session, group or parent. Only called when the instance's init is not running.
        """
        marker = str(layout.os_disk)
        doomed = []
        for process in psutil.process_iter():
            if process.pid == os.getpid():
                continue
            # Other users' processes and zombies refuse to show their environment; neither matters here.
            with suppress(OSError, psutil.Error):
                if process.environ().get(ENV_OS_DISK) == marker:
                    process.kill()
                    doomed.append(process)
        wait_until_gone(doomed, self._stop_timeout)

    def _live_init(self, layout: InstanceLayout) -> psutil.Process | None:
        """The instance's init process if it runs: alive, not a zombie, and not a reused pid."""
        record = _read_init_record(layout)
        if record is None:
            return None
        try:
            process = psutil.Process(record.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            if record.start_ticks is not None:
                if start_ticks_of(record.pid) != record.start_ticks:
                    return None
            elif abs(float(process.create_time()) - record.create_time) > _CREATE_TIME_TOLERANCE_SECONDS:
                return None
        except psutil.Error:
            return None
        return process

    def _reap_children(self) -> None:
        with self._guard:
            for pid, child in list(self._children.items()):
                if child.poll() is not None:
                    del self._children[pid]

    # -- disks ---------------------------------------------------------------------------------------

    def _replace_os_disk(self, layout: InstanceLayout, spec: InstanceSpec) -> None:
        """Copy the image beside the OS disk, then swap it in, so a crash never leaves half a disk; the
        disk it replaces is kept for a rollback, in place of the one kept before.

        Each step is a rename or an atomic write, ordered so that whatever step a crash interrupts, a
        repeated reimage (or a restore of the kept generation) finishes the work: the generation is written
        while no OS disk is in place, so `os/` never sits beside a generation it was not made for.
        """
        _discard_leftovers(layout)
        staging = Path(tempfile.mkdtemp(prefix=".os-new-", dir=layout.root))
        try:
            shutil.copytree(spec.image.path, staging, symlinks=True, dirs_exist_ok=True)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ProviderError(f"cannot copy image {spec.image.path} to a new OS disk: {exc}") from exc
        # The reports describe the OS disk that wrote them: gone before the new disk is in place, so that
        # nothing ever shows the old disk's custom data or extensions as the new one's. The custom data
        # report goes with the kept disk (a restore brings it back); the agent's is rewritten at each boot.
        layout.guest_status.unlink(missing_ok=True)
        generation = _read_generation(layout)
        if layout.os_disk.is_dir() and generation is not None:
            kept = _KeptDisk(layout)
            kept.discard()
            write_file_atomically(kept.generation, str(generation))
            _move_if_present(layout.custom_data_result, kept.custom_data_result)
            os.replace(layout.os_disk, kept.disk)
        elif layout.os_disk.exists():  # a disk of unknown generation cannot be restored: not worth keeping
            layout.custom_data_result.unlink(missing_ok=True)
            _discard(layout, layout.os_disk)
        write_file_atomically(layout.generation, str(spec.os_disk_generation))
        os.replace(staging, layout.os_disk)

    def _restore_kept_disk(self, layout: InstanceLayout, kept: _KeptDisk, spec: InstanceSpec) -> None:
        """Swap the kept disk back in as the OS disk and discard the one it replaces, with its reports.

        Crash-safe in the same way as `_replace_os_disk`: until the kept disk is renamed into place a
        repeated restore finds it and finishes; afterwards the OS disk is of the restored generation.
        """
        _discard_leftovers(layout)
        if layout.os_disk.exists():
            layout.guest_status.unlink(missing_ok=True)
            layout.custom_data_result.unlink(missing_ok=True)
            _discard(layout, layout.os_disk)
        write_file_atomically(layout.generation, str(spec.os_disk_generation))
        # How the kept disk's first boot ran its custom data: true again now that it is back. Its
        # `boot-finished` mark came back with it, so the init does not run the custom data a second time.
        _move_if_present(kept.custom_data_result, layout.custom_data_result)
        os.replace(kept.disk, layout.os_disk)
        kept.generation.unlink(missing_ok=True)

    # -- keys and locks ------------------------------------------------------------------------------

    def _layout(self, key: str) -> InstanceLayout:
        if not _is_valid_key(key):
            raise ProviderError(
                f"invalid instance key {key!r}: use segments of letters, digits and '-' (with single '.' "
                "or '_' inside) joined by '/'"
            )
        return InstanceLayout(self._root / key.replace("/", "__"))

    def _existing_layout(self, key: str) -> InstanceLayout:
        layout = self._layout(key)
        if not layout.root.is_dir():
            raise ProviderError(f"no instance {key!r} in the local provider at {self._root}")
        return layout

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """One action at a time per instance; different instances proceed in parallel."""
        with self._guard:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            self._reap_children()
            yield


@dataclass(frozen=True)
class _KeptDisk:
    """The OS disk a reimage replaced, kept for `restore_os_disk`: beside the OS disk, with the generation
    it was made for and the custom data report of its first boot."""

    layout: InstanceLayout

    @property
    def disk(self) -> Path:
        return self.layout.root / "os-previous"

    @property
    def generation(self) -> Path:
        return self.layout.root / "os-previous.generation"

    @property
    def custom_data_result(self) -> Path:
        return self.layout.root / "os-previous.custom-data-result.json"

    def read_generation(self) -> int | None:
        try:
            return int(self.generation.read_text())
        except (OSError, ValueError):
            return None

    def describe(self) -> str:
        generation = self.read_generation() if self.disk.is_dir() else None
        if generation is None:
            return "it keeps none: only a reimage keeps the disk it replaces, and a restore uses it up"
        return f"it keeps generation {generation}, the disk before its last reimage"

    def discard(self) -> None:
        """Forget the kept disk. Its generation goes first, so a crash never leaves a half-removed disk
        that still names a generation to restore.

        A report without a kept disk is not stale: only a reimage interrupted between moving the OS disk's
        report here and moving the disk itself leaves one, and it describes the disk about to be kept.
        """
        self.generation.unlink(missing_ok=True)
        if self.disk.exists():
            self.custom_data_result.unlink(missing_ok=True)
            _discard(self.layout, self.disk)


def _discard(layout: InstanceLayout, directory: Path) -> None:
    """Remove a disk: renamed out of the way at once, then deleted (a crash leaves only a leftover)."""
    doomed = Path(tempfile.mkdtemp(prefix=".os-old-", dir=layout.root))
    os.replace(directory, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _discard_leftovers(layout: InstanceLayout) -> None:
    """Staging copies and discarded disks an interrupted reimage or restore left behind."""
    for leftover in layout.root.glob(".os-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _move_if_present(source: Path, target: Path) -> None:
    """Rename `source` over `target`. Without a source the target stays: a repeated reimage or restore
    finds the report already moved by the attempt a crash interrupted."""
    with suppress(FileNotFoundError):
        os.replace(source, target)


def _is_valid_key(key: str) -> bool:
    return _KEY_PATTERN.fullmatch(key) is not None


def _check_image(image: ImageArtifact) -> None:
    if not image.path.is_dir():
        raise ProviderError(f"image directory {image.path} does not exist")
    if not image.entrypoint:
        raise ProviderError(f"image {image.path} has no entrypoint")


def _check_guest_inputs(spec: InstanceSpec) -> None:
    """Refuse a goal state the guest agent could not read, or a thumbprint that is no file name, before
    anything is written."""
    if spec.goal_state is not None:
        try:
            GoalState.from_json(spec.goal_state)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"instance {spec.key!r}: invalid goal state: {exc}") from exc
    for thumbprint, _, _ in spec.certificates:
        if not _THUMBPRINT_PATTERN.fullmatch(thumbprint):
            raise ProviderError(f"instance {spec.key!r}: invalid certificate thumbprint {thumbprint!r}")


def _write_guest_inputs(layout: InstanceLayout, spec: InstanceSpec, *, with_custom_data: bool) -> None:
    """The guest's inputs as files beside the OS disk: certificates first, then custom data, then the goal
    state that may name the certificates. Each file is replaced atomically; one the spec lacks is removed."""
    certificates = layout.certificates
    certificates.mkdir(mode=0o700, exist_ok=True)
    wanted: set[str] = set()
    for thumbprint, cert_pem, key_pem in spec.certificates:
        cert_path, key_path = layout.certificate_files(thumbprint)
        write_file_atomically(key_path, key_pem, mode=0o600)
        write_file_atomically(cert_path, cert_pem, mode=0o644)
        wanted.update((cert_path.name, key_path.name))
    for stale in certificates.iterdir():
        if stale.name not in wanted and stale.suffix in (".crt", ".prv"):
            stale.unlink(missing_ok=True)
    if with_custom_data:
        if spec.custom_data is None:
            layout.custom_data.unlink(missing_ok=True)
        else:
            write_file_atomically(layout.custom_data, spec.custom_data, mode=0o600)
    if spec.goal_state is None:
        layout.goal_state.unlink(missing_ok=True)
    else:
        write_file_atomically(layout.goal_state, spec.goal_state, mode=0o600)


def _read_custom_data_result(path: Path) -> CustomDataResult | None:
    try:
        return custom_data_result_from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_json_text(path: Path) -> str | None:
    """The file's text if it holds JSON; None when it is missing or not (yet) a whole document."""
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except (OSError, ValueError):
        return None
    return text


def _signal_group(group: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _read_init_record(layout: InstanceLayout) -> _InitRecord | None:
    try:
        data = json.loads(layout.init_json.read_text())
        ticks = data.get("start_ticks")
        record = _InitRecord(
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            start_ticks=None if ticks is None else int(ticks),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    # Anything but a positive pid names no process (psutil refuses it with a ValueError of its own).
    return record if record.pid > 0 else None


def _read_generation(layout: InstanceLayout) -> int | None:
    try:
        return int(layout.generation.read_text())
    except (OSError, ValueError):
        return None


def _read_power_marker(layout: InstanceLayout) -> PowerMarker | None:
    try:
        text = layout.power.read_text().strip()
    except OSError:
        return None
    if text == "stopped":
        return "stopped"
    if text == "deallocated":
        return "deallocated"
    return None
