"""The init process of one local instance: `python -m scaleset.guest.init <instance dir>`.

The local provider's idea of "the instance is powered on" is "this process is alive", the way a VM is on
while its kernel runs, whatever its app does. So this process starts the image's entrypoint once, logs the
app's exit to console.log if it ends, and then keeps the instance running until it is told to stop
(SIGTERM): only then does it end the app's process tree and exit 0. It never restarts the app; health
checks are how a crashed app shows.

Who records the init: this process writes `init.json` ({pid, create_time}) itself, while it holds an
exclusive lock on `init.lock`. Writing it from inside means no moment exists where a live init has no
record (a server killed right after spawning would otherwise leave an unrecorded, unstoppable init), and
the lock means a second init for the same instance (a restarted server racing a booting one) exits at once
with EXIT_ANOTHER_INIT_RUNNING instead of starting a second app. The provider waits for the record before
it reports the instance started.

This module also owns the instance directory's layout and the format of `instance.json`, so the provider
that writes them and the init that reads them cannot drift apart. It must start fast: stdlib, psutil and
the provider contract's value types only.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

from scaleset.providers.base import ImageArtifact, InstanceSpec

# Exit code of an init that found another init already running its instance (the lock is held).
EXIT_ANOTHER_INIT_RUNNING = 3

# How long the app gets to exit after SIGTERM before it is killed. Shorter than the provider's default
# stop timeout (5 s), so a normal stop ends with this process exiting by itself rather than SIGKILL.
APP_STOP_GRACE_SECONDS = 3.0


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


def write_file_atomically(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def spec_to_json(spec: InstanceSpec) -> str:
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


def app_environment(spec: InstanceSpec, layout: InstanceLayout) -> dict[str, str]:
    """The entrypoint's environment (docs/images.md); the instance's own variables win over the rest."""
    env = dict(os.environ)
    env.update(spec.image.environment)
    env.update(spec.environment)
    data_disks = {str(lun): str(layout.data_disk(lun)) for lun in spec.data_disk_luns}
    env.update(
        {
            "SCALESET_INSTANCE_ADDRESS": spec.address,
            "SCALESET_OS_DISK": str(layout.os_disk),
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


def provision_guest(spec: InstanceSpec, layout: InstanceLayout, env: dict[str, str]) -> None:
    """Everything that must run inside the instance before its app starts. Nothing yet.

    The hook for a later issue: custom data (`osProfile.customData`) and the extension handler protocol
    (spec/extension-protocol.md) run here, with the app's environment, before the entrypoint.
    """


class _StopRequested(Exception):
    """Raised by the SIGTERM handler, to unwind whatever the init is waiting on."""


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
    write_file_atomically(layout.init_json, json.dumps({"pid": me.pid, "create_time": me.create_time()}))


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def _run_app(layout: InstanceLayout) -> None:
    """Start the app, wait for it to end and log how it ended; a failure to start is logged too.

    Either way the instance stays up, as a VM whose app will not boot still runs.
    """
    try:
        spec = spec_from_json(layout.instance_json.read_text())
        env = app_environment(spec, layout)
        provision_guest(spec, layout, env)
        command = resolve_entrypoint(spec.image.entrypoint, layout.os_disk, env.get("PATH"))
        with layout.console_log.open("ab") as console:
            app = subprocess.Popen(
                command, cwd=layout.os_disk, env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=console
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log(f"the app could not start: {exc}")
        return
    _log(f"app started (pid {app.pid}): {' '.join(command)}")
    _log(f"app {_describe_exit(app.wait())}; the instance keeps running")


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


def _stop_app_tree() -> None:
    tree = psutil.Process().children(recursive=True)
    for process in tree:
        with suppress(psutil.NoSuchProcess):
            process.terminate()
    for process in wait_until_gone(tree, APP_STOP_GRACE_SECONDS):
        with suppress(psutil.NoSuchProcess):
            process.kill()


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
        _record_self(layout)
        _log("instance started")
        _run_app(layout)
        while True:
            signal.pause()
    except _StopRequested:
        _log("stop requested")
        _stop_app_tree()
        _log("instance stopped")
        return 0
    finally:
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
