"""Rolling-upgrade benchmark on the simulated fleet: what the control plane costs per upgraded instance.

    python bench/rolling_sim.py                        # 10 000 and 100 000 instances, each size alone
    python bench/rolling_sim.py --small                # CI size: 1 000 instances
    python bench/rolling_sim.py --sizes 10000 --boot-seconds 30 --idle-step 5
    python bench/rolling_sim.py --sizes 1000 --profile /tmp/upgrade.prof   # cProfile of the upgrade

In one process, nothing served: the composition root (`bootstrap.build`) on a fresh SQLite database in a
temporary directory, the sim provider (`SimProvider`: instances "boot" in `--boot-seconds` of virtual
time) and a virtual clock. The health source is a load-balancer Http probe (intervalInSeconds 5,
numberOfProbes 1), as in `rolling_local.py`. A scale set holds at most 1 000 instances (MAX_CAPACITY), so
N instances are ceil(N / 1000) sets of up to 1 000, upgradePolicy Rolling at maxBatchInstancePercent 20,
image version `latest`; each set gets its own OS rolling upgrade, all started together and driven together.

The engine is driven by hand, the way the engine's own loop does it, one pass at a time: run every task
that may run (`executor.run_pass`, until no task is pending or running), judge guests
(`executor.settle`), one step of every active run (`rolling.step`), run the tasks those steps wrote. When
a pass changed nothing (no task ran, every run answered Wait), the virtual clock moves `--idle-step`
seconds (default 5: the probe interval, nothing can change between two probes).

Figures, each size in a fresh child process (so peak memory is that size's own):
- create: the sets' PUTs until every create task is done, then `--boot-seconds` of virtual time so the
  instances are up (CPU and wall seconds; reported apart, not part of the upgrade);
- upgrade: from publishing the new version's catalog entry up to every run Completed: CPU seconds
  (`time.process_time`: every thread of the process, the executor's workers included), wall seconds,
  passes (and how many were idle), batches, virtual seconds;
- memory: peak RSS of the process (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) after the create and
  after the upgrade (a peak: it only grows), and the RSS at the end (psutil). With `--tracemalloc`, also
  the peak of Python allocations during the upgrade alone (tracemalloc makes everything ~2-3x slower, so
  the CPU figures of such a run mean little).

Exits 0 unless something is broken (an instance not upgraded, a run not Completed); the last line is
`RESULT {json}`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from scaleset.bootstrap import Container, Settings, build, tune_garbage_collection  # noqa: E402
from scaleset.catalog.service import ImageCoordinates  # noqa: E402
from scaleset.domain.rolling import Wait  # noqa: E402
from scaleset.domain.scaleset_spec import MAX_CAPACITY  # noqa: E402
from scaleset.providers.sim import SimProvider  # noqa: E402
from scaleset.store.tables import Instance, RollingUpgrade, Task  # noqa: E402

SUB = "00000000-0000-0000-0000-000000000000"
GROUP = "rg-sim"
LB = "lb"
PROBE_ID = (
    f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Network/loadBalancers/{LB}/probes/http"
)
LOAD_BALANCER = {
    "location": "eastus",
    "properties": {
        "probes": [
            {
                "name": "http",
                "properties": {
                    "protocol": "Http",
                    "port": 8080,
                    "requestPath": "/health",
                    "intervalInSeconds": 5,
                    "numberOfProbes": 1,
                },
            }
        ]
    },
}
POLICY = {
    "maxBatchInstancePercent": 20,
    "maxUnhealthyInstancePercent": 20,
    "maxUnhealthyUpgradedInstancePercent": 20,
    "pauseTimeBetweenBatches": "PT0S",
}
MANIFEST = {"manifestVersion": 1, "osType": "Linux", "entrypoint": ["python3", "app.py"], "ports": [8080]}


class BenchError(Exception):
    """Something is broken (not merely slow): the benchmark stops and exits non-zero."""


class VirtualClock:
    """Time that moves only when told (UTC); reads are one attribute load, safe from worker threads."""

    def __init__(self) -> None:
        self._now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


def set_body(capacity: int) -> dict[str, Any]:
    """A scale-set PUT body: the sample image coordinates, Rolling with an LB probe, no data disk."""
    return {
        "location": "eastus",
        "sku": {"name": "Standard_B1s", "capacity": capacity},
        "properties": {
            "upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": POLICY},
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {
                        "publisher": "scaleset",
                        "offer": "webapp",
                        "sku": "stable",
                        "version": "latest",
                    },
                },
                "networkProfile": {"healthProbe": {"id": PROBE_ID}},
            },
        },
    }


def publish(container: Container, root: Path, version: str) -> None:
    """A tiny image directory (manifest + app) into the catalog."""
    image_dir = root / f"image-{version}"
    image_dir.mkdir()
    (image_dir / "scaleset-image.json").write_text(json.dumps({**MANIFEST, "osVersion": version}))
    (image_dir / "app.py").write_text("print('hello')\n")
    container.catalog.publish(ImageCoordinates("eastus", "scaleset", "webapp", "stable", version), image_dir)


class Driver:
    """Drives the engine by hand, pass after pass, on virtual time."""

    def __init__(self, container: Container, clock: VirtualClock, idle_step: float) -> None:
        self.c = container
        self.clock = clock
        self.idle_step = idle_step
        self.passes = 0
        self.idle_passes = 0
        self.idle_cpu_s = 0.0  # CPU of the passes in which nothing happened: observation alone
        self.tasks_run = 0
        # Count the tasks the executor's workers finish, to wait for them without polling the database
        # (a count query every few ms over 100 000 open tasks would cost more than some of the work).
        self._finished = 0
        self._started = 0
        self._changed = threading.Condition()
        executor = container.executor
        work = executor._run

        def counted(task: Any) -> None:
            try:
                work(task)
            finally:
                with self._changed:
                    self._finished += 1
                    self._changed.notify_all()

        executor._run = counted  # type: ignore[method-assign]

    def open_tasks(self) -> int:
        with self.c.db.read() as session:
            return int(
                session.scalar(
                    select(func.count()).select_from(Task).where(Task.status.in_(("pending", "running")))
                )
                or 0
            )

    def drain(self) -> int:
        """Run tasks until none is left to claim and every one started has finished; how many started.

        A task skipped because its instance was busy is claimed by the next `run_pass`, once the task
        before it has finished."""
        started = 0
        while True:
            claimed = self.c.executor.run_pass()
            if claimed == 0:
                return started
            started += claimed
            with self._changed:
                self._started += claimed
                while self._finished < self._started:
                    self._changed.wait(1.0)

    def one_pass(self) -> tuple[bool, bool]:
        """(some run still active, something happened)."""
        self.passes += 1
        ran = self.drain()
        waiting_before = self.c.executor._settling  # what the last settle left waiting
        waiting = self.c.executor.settle()
        runs = self.c.rolling.step_each()
        acted = any(not isinstance(step, Wait) for _, step in runs)
        ran += self.drain()
        self.tasks_run += ran
        return bool(runs), acted or ran > 0 or waiting != waiting_before

    def until_idle(self, max_passes: int) -> None:
        """Passes until no run is active and no task is open."""
        for _ in range(max_passes):
            cpu = time.process_time()
            active, happened = self.one_pass()
            if not active and self.open_tasks() == 0 and self.c.executor._settling == 0:
                return
            if not happened:
                self.idle_passes += 1
                self.idle_cpu_s += time.process_time() - cpu
                self.clock.advance(self.idle_step)
        raise BenchError(f"the engine did not settle within {max_passes} passes")


def measure(action: Callable[[], None]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    action()
    return time.process_time() - cpu, time.perf_counter() - wall


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_size(
    instances: int,
    *,
    boot_seconds: float,
    idle_step: float,
    workers: int,
    use_tracemalloc: bool,
    profile: str | None,
) -> dict[str, Any]:
    sizes = [MAX_CAPACITY] * (instances // MAX_CAPACITY)
    if instances % MAX_CAPACITY:
        sizes.append(instances % MAX_CAPACITY)
    tune_garbage_collection()  # as `scaleset serve` does: this process stands for the server
    root = Path(tempfile.mkdtemp(prefix="scaleset-bench-sim-"))
    clock = VirtualClock()
    sim = SimProvider(clock, seed=0, boot_seconds=boot_seconds)
    container = build(
        # The default pool is a /16 (65 534 addresses): 100 000 instances need a wider one.
        Settings(data_dir=root / "data", workers=workers, observe_every=3600, address_pool="127.64.0.0/10"),
        clock=clock,
        provider=sim,
    )
    result: dict[str, Any] = {
        "bench": "rolling_sim",
        "instances": instances,
        "sets": len(sizes),
        "boot_seconds": boot_seconds,
        "idle_step_s": idle_step,
        "workers": workers,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    try:
        container.db.migrate()
        publish(container, root, "1.0.0")
        container.scalesets.put_group(SUB, GROUP, {"location": "eastus"})
        container.loadbalancers.put(SUB, GROUP, LB, LOAD_BALANCER)
        driver = Driver(container, clock, idle_step)

        def create() -> None:
            for index, capacity in enumerate(sizes):
                container.scalesets.put_set(SUB, GROUP, f"set{index:04d}", set_body(capacity))
            driver.until_idle(100)
            clock.advance(boot_seconds)

        cpu, wall = measure(create)
        result["create"] = {
            "cpu_s": round(cpu, 2),
            "wall_s": round(wall, 2),
            "passes": driver.passes,
            "tasks": driver.tasks_run,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        print(f"  created {instances} in {len(sizes)} set(s): {result['create']}", flush=True)
        if count_instances(container) != instances:
            raise BenchError(f"{count_instances(container)} instances created, not {instances}")

        driver = Driver(container, clock, idle_step)
        virtual_start = clock.now()
        if use_tracemalloc:
            tracemalloc.start()

        def upgrade() -> None:
            publish(container, root, "1.1.0")
            for index in range(len(sizes)):
                container.upgrades.start_os_upgrade(SUB, GROUP, f"set{index:04d}")
            driver.until_idle(100_000)

        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        cpu, wall = measure(upgrade)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)  # type: ignore[arg-type]
        traced_peak = tracemalloc.get_traced_memory()[1] if use_tracemalloc else None
        if use_tracemalloc:
            tracemalloc.stop()
        runs = check_upgraded(container, instances)
        result["upgrade"] = {
            "cpu_s": round(cpu, 2),
            "wall_s": round(wall, 2),
            "cpu_ms_per_instance": round(cpu * 1000 / instances, 3),
            "passes": driver.passes,
            "idle_passes": driver.idle_passes,
            "cpu_ms_per_pass": round(cpu * 1000 / driver.passes, 1),
            "cpu_ms_per_idle_pass": round(driver.idle_cpu_s * 1000 / max(1, driver.idle_passes), 1),
            "tasks": driver.tasks_run,
            "batches_per_set": sorted(set(runs)),
            "batches_total": sum(runs),
            "virtual_s": (clock.now() - virtual_start).total_seconds(),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_mb_at_end": round(psutil.Process().memory_info().rss / 2**20, 1),
            "tracemalloc_peak_mb": round(traced_peak / 2**20, 1) if traced_peak is not None else None,
        }
        print(f"  upgraded {instances}: {result['upgrade']}", flush=True)
    finally:
        container.close()
        shutil.rmtree(root, ignore_errors=True)
    result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


def count_instances(container: Container) -> int:
    with container.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def check_upgraded(container: Container, instances: int) -> list[int]:
    """Every instance on 1.1.0 and running; every run Completed. Returns each run's batch count."""
    with container.db.read() as session:
        versions = dict(
            session.execute(
                select(Instance.image_version, func.count()).group_by(Instance.image_version)
            ).all()
        )
        states = dict(
            session.execute(
                select(Instance.provisioning_state, func.count()).group_by(Instance.provisioning_state)
            ).all()
        )
        runs = list(session.execute(select(RollingUpgrade.status, RollingUpgrade.batch_number)).all())
    if versions != {"1.1.0": instances} or states != {"succeeded": instances}:
        raise BenchError(f"after the upgrade: image versions {versions}, provisioning states {states}")
    if {status for status, _ in runs} != {"Completed"}:
        raise BenchError(f"runs ended {sorted({status for status, _ in runs})}")
    return [batches for _, batches in runs]


def child_command(args: argparse.Namespace, size: int) -> list[str]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        str(size),
        "--boot-seconds",
        str(args.boot_seconds),
        "--idle-step",
        str(args.idle_step),
        "--workers",
        str(args.workers),
    ]
    if args.tracemalloc:
        command.append("--tracemalloc")
    if args.profile:
        command += ["--profile", args.profile]
    return command


def table(result: dict[str, Any]) -> str:
    create, upgrade = result["create"], result["upgrade"]
    rows = [
        (
            "create (not part of the upgrade)",
            f"{create['cpu_s']:.1f} CPU s, {create['wall_s']:.1f} wall s, "
            f"peak RSS {create['peak_rss_mb']:.0f} MB",
        ),
        ("upgrade: CPU", f"{upgrade['cpu_s']:.2f} s ({upgrade['cpu_ms_per_instance']:.2f} ms per instance)"),
        ("upgrade: wall", f"{upgrade['wall_s']:.2f} s"),
        (
            "upgrade: batches",
            f"{upgrade['batches_total']} ({upgrade['batches_per_set']} per set, {result['sets']} set(s))",
        ),
        (
            "upgrade: passes",
            f"{upgrade['passes']} ({upgrade['idle_passes']} idle), "
            f"{upgrade['cpu_ms_per_pass']:.0f} CPU ms per pass, "
            f"{upgrade['cpu_ms_per_idle_pass']:.0f} per idle pass (observing only)",
        ),
        ("upgrade: virtual time", f"{upgrade['virtual_s']:.0f} s"),
        (
            "memory: peak RSS after create / after upgrade",
            f"{create['peak_rss_mb']:.0f} / {upgrade['peak_rss_mb']:.0f} MB "
            f"(RSS at end {upgrade['rss_mb_at_end']:.0f} MB)",
        ),
    ]
    if upgrade["tracemalloc_peak_mb"] is not None:
        rows.append(("tracemalloc peak during the upgrade", f"{upgrade['tracemalloc_peak_mb']:.0f} MB"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label.ljust(width)}  {value}" for label, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="instance counts, comma-separated")
    parser.add_argument("--small", action="store_true", help="CI size: 1 000 instances")
    parser.add_argument("--boot-seconds", type=float, default=30.0, help="virtual seconds per boot")
    parser.add_argument("--idle-step", type=float, default=5.0, help="virtual seconds after an idle pass")
    parser.add_argument("--workers", type=int, default=8, help="executor worker threads (the server's 8)")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slow)")
    parser.add_argument("--profile", help="write a cProfile of the upgrade to this file (one size only)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: this size only
    args = parser.parse_args(argv)
    if args.one is not None:
        print(f"rolling_sim: {args.one} instances", flush=True)
        try:
            result = run_size(
                args.one,
                boot_seconds=args.boot_seconds,
                idle_step=args.idle_step,
                workers=args.workers,
                use_tracemalloc=args.tracemalloc,
                profile=args.profile,
            )
        except BenchError as failure:
            print(f"BENCH FAILED: {failure}", file=sys.stderr, flush=True)
            return 1
        print(table(result))
        print("RESULT " + json.dumps(result, separators=(",", ":")), flush=True)
        return 0
    try:
        sizes = [1000] if args.small else [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes is a comma-separated list of instance counts")
    if not sizes or min(sizes) < 1 or not math.isfinite(args.idle_step) or args.idle_step <= 0:
        parser.error("sizes must be >= 1 and --idle-step > 0")
    if args.profile and len(sizes) > 1:
        parser.error("--profile takes one size")
    results = []
    for size in sizes:
        # Each size in a process of its own: peak RSS is a high-water mark of the whole process.
        child = subprocess.run(child_command(args, size), capture_output=True, text=True, cwd=REPO)
        sys.stdout.write(child.stdout)
        sys.stderr.write(child.stderr)
        if child.returncode != 0:
            print(f"BENCH FAILED: the {size}-instance run exited {child.returncode}", file=sys.stderr)
            return 1
        line = next(line for line in child.stdout.splitlines() if line.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
    if len(results) > 1:
        print("RESULT " + json.dumps({"bench": "rolling_sim", "runs": results}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
