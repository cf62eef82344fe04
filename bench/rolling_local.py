"""Rolling-upgrade benchmark on real instances: how close an OS rolling upgrade gets to its lower bound.

    python bench/rolling_local.py              # 20 instances, batches of 4 (maxBatchInstancePercent 20)
    python bench/rolling_local.py --small      # CI size: 5 instances, batches of 1
    python bench/rolling_local.py --instances 20 --poll 0.1

A real `scaleset serve` (local provider: every instance is an init process and the sample web app). A set
of N instances in upgradePolicy Rolling, image version `latest` on webapp 1.0.0, health from a load
balancer Http probe (port 8080, /health, intervalInSeconds 5, numberOfProbes 1) created through the API.
Then webapp 1.1.0 is published and `POST .../osRollingUpgrade` starts the run. All through HTTP:

- total: from just before the POST to the run's end (the operation's server-side `endTime`; the same
  machine's clock);
- per instance, reimage → healthy: from the poll that first shows its new OS disk name (the run wrote
  the reimage with the disk generation when it started the batch) to the first poll that shows that disk
  with `vmHealth` `HealthState/healthy` (the engine's own verdict: the list asks the same health reader
  with the same per-disk probe history). The VM list with `$expand=instanceView` is polled every
  `--poll` seconds; an event first seen in a poll is dated midway between that poll's snapshot and the
  previous one (a snapshot = the midpoint of its request), so both ends of a duration have the same
  error, at most half a poll period plus half a request;
- lower bound = sum over batches of the slowest member's reimage → healthy; overhead = total / lower
  bound - 1: the time the run spent outside its batches' health waits (starting, between batches,
  finishing);
- for information, reimage → app: when each instance's app first answers `GET /` with version 1.1.0 on
  its own address (a side thread, every 0.1 s, only instances being reimaged), to show how much of a
  batch is booting and how much is waiting for the next probe;
- a cross-check from the server's side: the server runs at `--log-level info` (its default), and the
  rolling loop logs every step it takes with a millisecond timestamp: when each batch started, when its
  reimages were done, when the loop judged it healthy and when the run finished. That times the loop's own
  gaps without the polls' resolution.

Exits 0 unless something is broken; the last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import re
import statistics
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from tests.support import EXAMPLE_IMAGES, ServerProcess, dispose, new_data_dir, scale_set_body  # noqa: E402

from bench.foundation import BenchError, expect  # noqa: E402

API = {"api-version": "2024-07-01"}
GROUP = "rg-bench-rolling"
SET = "rolling"
LB = "lb-rolling"
PROBE = "health"
APP_PORT = 8080
POLICY = {
    "maxBatchInstancePercent": 20,
    "maxUnhealthyInstancePercent": 20,
    "maxUnhealthyUpgradedInstancePercent": 20,
    "pauseTimeBetweenBatches": "PT0S",
}
HEALTHY = "HealthState/healthy"
# "2026-11-22 05:15:30,123 INFO scaleset.rolling rolling upgrade <id> (set rolling): batch 1: instances 0, 5"
STEP_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO scaleset\.rolling rolling upgrade \S+ \(set [^)]*\): (.*)$"
)


class Paths:
    def __init__(self, subscription: str) -> None:
        self.group = f"/subscriptions/{subscription}/resourceGroups/{GROUP}"
        self.lb = f"{self.group}/providers/Microsoft.Network/loadBalancers/{LB}"
        self.probe = f"{self.lb}/probes/{PROBE}"
        self.set = f"{self.group}/providers/Microsoft.Compute/virtualMachineScaleSets/{SET}"
        self.vms = f"{self.set}/virtualMachines"
        self.nics = f"{self.set}/networkInterfaces"
        self.latest = f"{self.set}/rollingUpgrades/latest"


def load_balancer() -> dict[str, Any]:
    probe = {
        "protocol": "Http",
        "port": APP_PORT,
        "requestPath": "/health",
        "intervalInSeconds": 5,
        "numberOfProbes": 1,
    }
    return {"location": "eastus", "properties": {"probes": [{"name": PROBE, "properties": probe}]}}


def set_body(capacity: int, probe_id: str) -> dict[str, Any]:
    body = scale_set_body(
        capacity,
        version="latest",
        data_disk=False,
        computer_name_prefix="roll",
        upgradePolicy={"mode": "Rolling", "rollingUpgradePolicy": POLICY},
    )
    body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": probe_id}}
    return body


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def wait_for_operation(client: httpx.Client, response: httpx.Response, timeout: float) -> dict[str, Any]:
    url = response.headers.get("Azure-AsyncOperation")
    if url is None:
        return {}
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = expect(client.get(url), 200).json()
        if status["status"] == "Succeeded":
            return status
        if status["status"] != "InProgress":
            raise BenchError(f"operation ended {status['status']}: {status.get('error')}")
        if time.monotonic() > deadline:
            raise BenchError(f"operation not done after {timeout:g} s")
        time.sleep(0.05)


@dataclass(frozen=True)
class VmState:
    disk: str
    health: str | None
    provisioning: str
    image: str


def snapshot(client: httpx.Client, paths: Paths) -> dict[str, VmState]:
    """instance id → what the expanded VM list says of it now (nextLink followed)."""
    found: dict[str, VmState] = {}
    url: str | None = paths.vms
    params: dict[str, str] | None = {**API, "$expand": "instanceView"}
    while url:
        body = expect(client.get(url, params=params), 200).json()
        for vm in body["value"]:
            properties = vm["properties"]
            view = properties["instanceView"]
            codes = [s["code"] for s in view["statuses"]]
            if "ProvisioningState/failed" in codes:
                raise BenchError(f"instance {vm['instanceId']} failed: {view['statuses']}")
            found[vm["instanceId"]] = VmState(
                disk=properties["storageProfile"]["osDisk"]["name"],
                health=((view.get("vmHealth") or {}).get("status") or {}).get("code"),
                provisioning=next((c for c in codes if c.startswith("ProvisioningState/")), ""),
                image=properties["storageProfile"]["imageReference"]["exactVersion"],
            )
        url, params = body.get("nextLink"), None
    return found


def addresses(client: httpx.Client, paths: Paths) -> dict[str, str]:
    nics = expect(client.get(paths.nics, params=API), 200).json()["value"]
    return {
        nic["properties"]["virtualMachine"]["id"].rsplit("/", 1)[1]: nic["properties"]["ipConfigurations"][0][
            "properties"
        ]["privateIPAddress"]
        for nic in nics
    }


def wait_all_healthy(client: httpx.Client, paths: Paths, count: int, timeout: float) -> float:
    started = time.monotonic()
    while True:
        states = snapshot(client, paths)
        if len(states) == count and all(
            s.health == HEALTHY and s.provisioning == "ProvisioningState/succeeded" for s in states.values()
        ):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise BenchError(f"instances not all healthy after {timeout:g} s: {states}")
        time.sleep(0.1)


class AppWatcher:
    """In its own thread: for each instance handed over (being reimaged), the first time its app answers
    `GET /` with the new version on its own address."""

    def __init__(self, addresses: dict[str, str], version: str) -> None:
        self._addresses = addresses
        self._version = version
        self._lock = threading.Lock()
        self._watching: set[str] = set()
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-app-watcher", daemon=True)

    def start(self) -> AppWatcher:
        self._thread.start()
        return self

    def watch(self, instance_id: str) -> None:
        with self._lock:
            if instance_id not in self.seen:
                self._watching.add(instance_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=0.5, trust_env=False) as client:
            while not self._stop.is_set():
                with self._lock:
                    watching = sorted(self._watching)
                for instance_id in watching:
                    address = self._addresses[instance_id]
                    sent = time.time()
                    try:
                        answer = client.get(f"http://{address}:{APP_PORT}/")
                        version = answer.json().get("version") if answer.status_code == 200 else None
                    except (httpx.HTTPError, ValueError):
                        continue
                    if version == self._version:
                        with self._lock:
                            self.seen[instance_id] = (sent + time.time()) / 2
                            self._watching.discard(instance_id)
                self._stop.wait(0.1)


@dataclass
class Tracker:
    """What the polls saw, per instance: first poll with the new OS disk, first with it healthy."""

    baseline: dict[str, str]  # instance id → OS disk name before the run
    snapshots: list[float] = field(default_factory=list)  # each poll's snapshot time
    started_at_poll: dict[str, int] = field(default_factory=dict)
    healthy_at_poll: dict[str, int] = field(default_factory=dict)

    def record(self, when: float, states: dict[str, VmState]) -> list[str]:
        """Note one poll; returns the instances first seen reimaging in it."""
        index = len(self.snapshots)
        self.snapshots.append(when)
        new = []
        for instance_id, state in states.items():
            reimaged = state.disk != self.baseline.get(instance_id, state.disk)
            if reimaged and instance_id not in self.started_at_poll:
                self.started_at_poll[instance_id] = index
                new.append(instance_id)
            if (
                reimaged
                and instance_id not in self.healthy_at_poll
                and state.health == HEALTHY
                and state.provisioning == "ProvisioningState/succeeded"
            ):
                self.healthy_at_poll[instance_id] = index
        return new

    def moment(self, index: int) -> float:
        """When an event first seen in poll `index` happened: midway since the previous snapshot."""
        if index == 0:
            return self.snapshots[0]
        return (self.snapshots[index - 1] + self.snapshots[index]) / 2


def server_steps(log_path: Path, started: float) -> dict[str, Any] | None:
    """The rolling loop's own account, from the server log: seconds after `started` at which each batch
    started, had its reimages done (health wait armed) and was judged, and when the run finished."""
    batches: dict[int, dict[str, float]] = {}
    finished = None
    for line in log_path.read_text(errors="replace").splitlines():
        match = STEP_LINE.match(line)
        if match is None:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - started  # local time
        summary = match.group(2)
        if (found := re.match(r"batch (\d+): instances ", summary)) is not None:
            batches.setdefault(int(found.group(1)), {})["start"] = at
        elif (found := re.match(r"batch (\d+): waiting for health", summary)) is not None:
            batches.setdefault(int(found.group(1)), {})["actions_done"] = at
        elif (found := re.match(r"batch (\d+) done", summary)) is not None:
            batches.setdefault(int(found.group(1)), {})["judged"] = at
        elif summary.startswith("every instance runs the target model"):
            finished = at
    if not batches or finished is None or any(len(b) != 3 for b in batches.values()):
        return None
    rows = [batches[n] for n in sorted(batches)]
    between = [b["start"] - a["judged"] for a, b in itertools.pairwise(rows)]
    return {
        "first_batch_start_s": round(rows[0]["start"], 3),
        "batch_start_s": [round(r["start"], 3) for r in rows],
        "start_to_actions_done_s": [round(r["actions_done"] - r["start"], 3) for r in rows],
        "start_to_judged_s": [round(r["judged"] - r["start"], 3) for r in rows],
        "judged_to_next_start_s": [round(gap, 3) for gap in between],
        "last_judged_to_finish_s": round(finished - rows[-1]["judged"], 3),
        "finish_s": round(finished, 3),
    }


def upgrade(client: httpx.Client, paths: Paths, count: int, poll: float, timeout: float) -> dict[str, Any]:
    before = snapshot(client, paths)
    if len(before) != count:
        raise BenchError(f"{len(before)} instances before the upgrade, not {count}")
    tracker = Tracker({i: s.disk for i, s in before.items()})
    watcher = AppWatcher(addresses(client, paths), "1.1.0").start()
    request_ms: list[float] = []
    try:
        started = time.time()
        response = expect(client.post(f"{paths.set}/osRollingUpgrade", params=API), 200, 202)
        operation_url = response.headers.get("Azure-AsyncOperation")
        if operation_url is None:
            raise BenchError("osRollingUpgrade answered without an Azure-AsyncOperation header")
        deadline = time.monotonic() + timeout
        completed_seen: float | None = None
        while completed_seen is None:
            next_poll = time.monotonic() + poll
            sent = time.time()
            states = snapshot(client, paths)
            received = time.time()
            request_ms.append((received - sent) * 1000)
            for instance_id in tracker.record((sent + received) / 2, states):
                watcher.watch(instance_id)
            latest = expect(client.get(paths.latest, params=API), 200).json()
            code = latest["properties"]["runningStatus"]["code"]
            if code == "Completed":
                completed_seen = time.time()
            elif code != "RollingForward":
                raise BenchError(f"the rolling upgrade ended {code}: {latest['properties'].get('error')}")
            if time.monotonic() > deadline:
                raise BenchError(f"the rolling upgrade was not done after {timeout:g} s")
            time.sleep(max(0.0, next_poll - time.monotonic()))
        operation = expect(client.get(operation_url), 200).json()
    finally:
        watcher.stop()
    if operation["status"] != "Succeeded":
        raise BenchError(f"the upgrade's operation is {operation['status']}: {operation.get('error')}")
    after = snapshot(client, paths)
    wrong = {i: s for i, s in after.items() if s.image != "1.1.0" or s.health != HEALTHY}
    if len(after) != count or wrong:
        raise BenchError(f"after the upgrade, not every instance is on 1.1.0 and healthy: {wrong}")
    missing = set(before) - set(tracker.healthy_at_poll)
    if missing:
        raise BenchError(f"never seen reimaged and healthy: {sorted(missing)}")
    result = figures(tracker, watcher, started, operation, completed_seen, request_ms, latest)
    result["started_at"] = started
    return result


def figures(
    tracker: Tracker,
    watcher: AppWatcher,
    started: float,
    operation: dict[str, Any],
    completed_seen: float,
    request_ms: list[float],
    latest: dict[str, Any],
) -> dict[str, Any]:
    # A batch's members are reimaged in one transaction, so they are first seen in the same poll.
    batches: dict[int, list[str]] = {}
    for instance_id, index in tracker.started_at_poll.items():
        batches.setdefault(index, []).append(instance_id)
    end = parse_time(operation["endTime"])
    rows: list[dict[str, Any]] = []
    slowest: list[float] = []
    previous_end = started
    for index in sorted(batches):
        members = sorted(batches[index], key=int)
        begin = tracker.moment(index)
        healthy = {i: tracker.moment(tracker.healthy_at_poll[i]) - begin for i in members}
        app = {i: watcher.seen[i] - begin for i in members if i in watcher.seen}
        rows.append(
            {
                "instances": members,
                "start_s": round(begin - started, 3),
                "gap_before_s": round(begin - previous_end, 3),  # previous batch healthy → this start
                "slowest_healthy_s": round(max(healthy.values()), 3),
                "fastest_healthy_s": round(min(healthy.values()), 3),
                "slowest_app_s": round(max(app.values()), 3) if app else None,
            }
        )
        slowest.append(max(healthy.values()))
        previous_end = begin + slowest[-1]
    lower_bound = sum(slowest)
    total = end - started
    periods = [b - a for a, b in itertools.pairwise(tracker.snapshots)]
    return {
        "total_s": round(total, 3),
        "total_client_seen_s": round(completed_seen - started, 3),
        "lower_bound_s": round(lower_bound, 3),
        "overhead_pct": round((total / lower_bound - 1) * 100, 1),
        "batches": len(rows),
        "batch_sizes": [len(r["instances"]) for r in rows],
        "after_last_batch_s": round(end - previous_end, 3),
        "per_batch": rows,
        "polls": len(tracker.snapshots),
        "poll_period_s_median": round(statistics.median(periods), 3) if periods else None,
        "poll_period_s_max": round(max(periods), 3) if periods else None,
        "list_request_ms_median": round(statistics.median(request_ms), 1),
        "list_request_ms_max": round(max(request_ms), 1),
        "progress": latest["properties"]["progress"],
    }


def run(instances: int, poll: float) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bench": "rolling_local",
        "instances": instances,
        "poll_s": poll,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    # Info is the server's default level; the rolling loop logs each step it takes at info.
    server = ServerProcess(new_data_dir("scaleset-bench-rolling-"), extra_args=("--log-level", "info"))
    ok = False
    try:
        server.start()
        print(f"server {server.endpoint}  data {server.data_dir}  log {server.log_path}", flush=True)
        expect(server.publish(EXAMPLE_IMAGES / "webapp-1.0.0", version="1.0.0"), 201)
        paths = Paths(server.subscription)
        with server.client() as client:
            expect(client.put(paths.group, params=API, json={"location": "eastus"}), 200, 201)
            expect(client.put(paths.lb, params=API, json=load_balancer()), 200, 201)
            started = time.monotonic()
            response = expect(
                client.put(paths.set, params=API, json=set_body(instances, paths.probe)), 200, 201
            )
            wait_for_operation(client, response, 60 + 3 * instances)
            result["create_s"] = round(time.monotonic() - started, 3)
            wait_all_healthy(client, paths, instances, 60)
            result["create_to_all_healthy_s"] = round(time.monotonic() - started, 3)
            healthy_s = result["create_to_all_healthy_s"]
            print(f"created {instances}: {result['create_s']} s, all healthy {healthy_s} s", flush=True)
            expect(server.publish(EXAMPLE_IMAGES / "webapp-1.1.0", version="1.1.0"), 201)
            result.update(upgrade(client, paths, instances, poll, 120 + 10 * instances))
            assert server.log_path is not None
            result["server"] = server_steps(server.log_path, result.pop("started_at"))
            # The group delete takes the set, its instances and the load balancer with it.
            deleted = expect(client.delete(paths.group, params=API), 200, 202)
            wait_for_operation(client, deleted, 60 + instances)
        ok = True
    finally:
        leftovers = dispose(server)
        if server.log_path is not None:
            if ok:
                with suppress(OSError):
                    server.log_path.unlink()
            else:
                with suppress(OSError):
                    tail = server.log_path.read_text(errors="replace").splitlines()[-20:]
                    print("\n".join(["server log (last lines):", *tail]), file=sys.stderr)
                print(f"server log kept: {server.log_path}", file=sys.stderr, flush=True)
    result["leftover_instances"] = len(leftovers)
    result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


def fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def table(result: dict[str, Any]) -> str:
    lines = [
        f"  create {result['instances']} (operation done / all healthy)   "
        f"{result['create_s']:.2f} s / {result['create_to_all_healthy_s']:.2f} s",
        f"  batches                                  {result['batches']} of {result['batch_sizes']}",
        f"  total: POST osRollingUpgrade → Completed {result['total_s']:.2f} s "
        f"(first poll seeing Completed: {result['total_client_seen_s']:.2f} s)",
        f"  lower bound: Σ slowest reimage → healthy {result['lower_bound_s']:.2f} s",
        f"  overhead: total / lower bound - 1        {result['overhead_pct']:.1f} %",
        "  per batch: start, gap before it, reimage → healthy slowest/fastest, reimage → app slowest:",
    ]
    for number, row in enumerate(result["per_batch"], 1):
        app = f"{row['slowest_app_s']:.2f}" if row["slowest_app_s"] is not None else "-"
        lines.append(
            f"    {number:2}  at {row['start_s']:6.2f} s  gap {row['gap_before_s']:5.2f} s  "
            f"healthy {row['slowest_healthy_s']:5.2f} / {row['fastest_healthy_s']:5.2f} s  app {app} s  "
            f"instances {','.join(row['instances'])}"
        )
    lines.append(f"  after the last batch healthy → end       {result['after_last_batch_s']:.2f} s")
    server = result.get("server")
    if server:
        lines += [
            "  server log (the rolling loop's steps):",
            f"    POST → batch 1 started                 {server['first_batch_start_s']:.3f} s",
            f"    batch start → reimages done            {fmt(server['start_to_actions_done_s'])} s",
            f"    batch start → judged healthy           {fmt(server['start_to_judged_s'])} s",
            f"    judged → next batch started            {fmt(server['judged_to_next_start_s'])} s",
            f"    last judged → run finished             {server['last_judged_to_finish_s']:.3f} s",
        ]
    lines += [
        f"  polls {result['polls']}, period median {result['poll_period_s_median']} s, "
        f"max {result['poll_period_s_max']} s; list request median {result['list_request_ms_median']} ms, "
        f"max {result['list_request_ms_max']} ms",
        f"  machine: {result['cpus']} CPUs, Python {result['python']}, load average "
        f"{result['loadavg_1m_at_start']} at start, {result['loadavg_1m_at_end']} at end",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between VM-list polls")
    parser.add_argument("--small", action="store_true", help="CI size: 5 instances")
    args = parser.parse_args(argv)
    instances = 5 if args.small else args.instances
    if instances < 1 or not math.isfinite(args.poll) or args.poll <= 0:
        parser.error("--instances must be >= 1 and --poll > 0")
    print(f"rolling_local bench: {instances} instances, poll every {args.poll:g} s", flush=True)
    try:
        result = run(instances, args.poll)
    except (BenchError, RuntimeError, httpx.HTTPError) as failure:
        print(f"BENCH FAILED: {type(failure).__name__}: {failure}", file=sys.stderr, flush=True)
        return 1
    if result["leftover_instances"]:
        print(f"BENCH FAILED: {result['leftover_instances']} instances left behind", file=sys.stderr)
        return 1
    print(table(result))
    print("RESULT " + json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
