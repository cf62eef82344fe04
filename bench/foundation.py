"""Foundation benchmark: a real `scaleset serve` with real instance processes, timed from the outside.

    python bench/foundation.py                 # 20 instances, scale to 100, 200 requests per kind
    python bench/foundation.py --small         # CI size: 5 instances, scale to 10, 20 requests
    python bench/foundation.py --instances 20 --list-instances 100 --requests 200

What it measures (see bench/README.md):
  1. create: seconds from the scale-set PUT until every instance reports ProvisioningState/succeeded
     and PowerState/running, and until every instance's app answers HTTP on its own address;
  2. scale out (PATCH sku.capacity): the same two figures;
  3. read latency with that many instances: K sequential keep-alive GETs each of the VM list with
     $expand=instanceView (following nextLink), the set-level instanceView and one VM; p50/p90/p99/max;
  4. delete the group: seconds until the group GET answers 404, until no instance directory remains and
     until no instance process remains.

It prints figures and never judges them: it exits 0 unless something is actually broken (a request
fails, an instance fails or never comes up, something outlives the delete), then non-zero with a message.
The last line is `RESULT {json}` with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psutil  # noqa: E402
from tests.support import EXAMPLE_IMAGES, ServerProcess, dispose, new_data_dir  # noqa: E402
from tests.support import scale_set_body as support_body  # noqa: E402

API = {"api-version": "2024-07-01"}
GROUP = "rg-bench"
SET = "bench"
POLL_SECONDS = 0.05
APP_PORT = 8080


class BenchError(Exception):
    """Something is broken (not merely slow): the benchmark stops and exits non-zero."""


# ------------------------------------------------------------------------------------------- helpers
def scale_set_body(capacity: int) -> dict[str, Any]:
    return support_body(capacity, zones=["1", "2", "3"], computer_name_prefix="bench")


def expect(response: httpx.Response, *statuses: int) -> httpx.Response:
    if response.status_code not in statuses:
        raise BenchError(
            f"{response.request.method} {response.request.url.path} answered {response.status_code} "
            f"(wanted {'/'.join(map(str, statuses))}): {response.text[:500]}"
        )
    return response


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {
        "n": len(samples_ms),
        "p50": round(cuts[49], 2),
        "p90": round(cuts[89], 2),
        "p99": round(cuts[98], 2),
        "max": round(max(samples_ms), 2),
    }


class Paths:
    def __init__(self, subscription: str) -> None:
        self.group = f"/subscriptions/{subscription}/resourcegroups/{GROUP}"
        self.set = f"{self.group}/providers/Microsoft.Compute/virtualMachineScaleSets/{SET}"
        self.vms = f"{self.set}/virtualMachines"
        self.set_view = f"{self.set}/instanceView"
        self.nics = f"{self.set}/networkInterfaces"


def list_vms(client: httpx.Client, paths: Paths) -> tuple[list[dict[str, Any]], int]:
    """Every VM with its instance view, following nextLink; also how many pages that took."""
    response = expect(client.get(paths.vms, params={**API, "$expand": "instanceView"}), 200)
    body = response.json()
    vms, pages = list(body["value"]), 1
    while body.get("nextLink"):
        body = expect(client.get(body["nextLink"]), 200).json()
        vms.extend(body["value"])
        pages += 1
    return vms, pages


def codes_of(vm: dict[str, Any]) -> list[str]:
    return [status["code"] for status in vm["properties"]["instanceView"]["statuses"]]


def all_running(vms: list[dict[str, Any]], expected: int) -> bool:
    """True once `expected` instances all run; BenchError at once if any failed to provision."""
    for vm in vms:
        view = vm["properties"]["instanceView"]
        for status in view["statuses"]:
            if status["code"] == "ProvisioningState/failed":
                raise BenchError(f"instance {vm['instanceId']} failed: {status.get('message', '')}")
    if len(vms) != expected:
        return False
    return all(
        "ProvisioningState/succeeded" in codes and "PowerState/running" in codes
        for codes in map(codes_of, vms)
    )


def addresses(client: httpx.Client, paths: Paths) -> dict[str, str]:
    """instance id → address, from the scale set's network interfaces."""
    nics = expect(client.get(paths.nics, params=API), 200).json()["value"]
    result = {}
    for nic in nics:
        instance_id = nic["properties"]["virtualMachine"]["id"].rsplit("/", 1)[1]
        result[instance_id] = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
    return result


def wait_until(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_SECONDS)


class AppProber:
    """In a thread of its own: probes every address until each app answers; notes when the last did."""

    def __init__(self, targets: dict[str, str], started: float, timeout: float) -> None:
        self.pending = dict(targets)
        self.started = started
        self.timeout = timeout
        self.elapsed: float | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="bench-app-prober", daemon=True)

    def start(self) -> AppProber:
        self._thread.start()
        return self

    def result(self) -> float:
        self._thread.join(self.timeout + 10)
        if self.error is not None:
            raise BenchError(self.error)
        if self.elapsed is None:
            raise BenchError("the app prober neither finished nor failed")
        return self.elapsed

    def _run(self) -> None:
        deadline = self.started + self.timeout
        with httpx.Client(timeout=2) as client:
            while self.pending:
                for instance_id, address in list(self.pending.items()):
                    try:
                        answer = client.get(f"http://{address}:{APP_PORT}/")
                    except httpx.TransportError:
                        continue
                    try:
                        said = answer.json().get("address") if answer.status_code == 200 else None
                    except ValueError:
                        said = None
                    if said != address:
                        self.error = f"{instance_id} at {address} answered wrongly: {answer.text[:200]}"
                        return
                    del self.pending[instance_id]
                if not self.pending:
                    break
                if time.monotonic() > deadline:
                    self.error = f"apps never answered within {self.timeout:g} s: {sorted(self.pending)}"
                    return
                time.sleep(POLL_SECONDS)
        self.elapsed = time.monotonic() - self.started


def instance_dirs(data_dir: Path) -> list[Path]:
    root = data_dir / "instances"
    return [entry for entry in root.iterdir() if entry.is_dir()] if root.is_dir() else []


def init_start_spread(data_dir: Path, before: set[Path], wall_started: float) -> tuple[float, float] | None:
    """Seconds after the request at which the first and the last new instance's init recorded itself.

    init.json is written once by each init as it starts; its mtime is on the same clock as time.time().
    """
    stamps = []
    for directory in instance_dirs(data_dir):
        if directory not in before:
            with suppress(OSError):
                stamps.append((directory / "init.json").stat().st_mtime)
    if not stamps:
        return None
    return min(stamps) - wall_started, max(stamps) - wall_started


def instance_processes(data_dir: Path) -> list[int]:
    """Pids of instance inits (their command line names the data dir) and of apps (their environment)."""
    roots = {str(data_dir), str(data_dir.resolve())}
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with suppress(psutil.Error, OSError):
            cmdline = " ".join(process.info["cmdline"] or [])
            if "scaleset.guest.init" in cmdline and any(root in cmdline for root in roots):
                found.append(process.pid)
                continue
            os_disk = process.environ().get("SCALESET_OS_DISK", "")
            if any(os_disk.startswith(root) for root in roots):
                found.append(process.pid)
    return found


# ------------------------------------------------------------------------------------------- phases
def bring_up(
    client: httpx.Client,
    paths: Paths,
    server: ServerProcess,
    capacity: int,
    send: Callable[[], httpx.Response],
    timeout: float,
) -> dict[str, Any]:
    """Send a create/scale request; time until all `capacity` instances run and all their apps answer."""
    before = set(instance_dirs(server.data_dir))
    wall_started = time.time()
    started = time.monotonic()
    send()
    request_s = time.monotonic() - started
    prober = AppProber(addresses(client, paths), started, timeout).start()
    poll_ms: list[float] = []  # how long each list took while instances were coming up

    def running() -> bool:
        asked = time.perf_counter()
        vms = list_vms(client, paths)[0]
        poll_ms.append((time.perf_counter() - asked) * 1000)
        return all_running(vms, capacity)

    wait_until(f"{capacity} instances running", running, timeout)
    running_s = time.monotonic() - started
    spread = init_start_spread(server.data_dir, before, wall_started)
    app_s = prober.result()
    return {
        "request_s": round(request_s, 3),
        "running_s": round(running_s, 3),
        "app_s": round(app_s, 3),
        "polls": len(poll_ms),
        "poll_ms_median": round(statistics.median(poll_ms), 1),
        "poll_ms_max": round(max(poll_ms), 1),
        "first_init_s": round(spread[0], 3) if spread else None,
        "last_init_s": round(spread[1], 3) if spread else None,
    }


def time_requests(client: httpx.Client, count: int, request: Callable[[], None]) -> dict[str, float]:
    for _ in range(min(5, count)):  # warm-up, untimed: first-use imports and caches
        request()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        request()
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)


def read_latency(client: httpx.Client, paths: Paths, capacity: int, count: int) -> dict[str, Any]:
    pages_seen: set[int] = set()

    def list_expanded() -> None:
        vms, pages = list_vms(client, paths)
        if len(vms) != capacity:
            raise BenchError(f"the VM list held {len(vms)} instances, not {capacity}")
        pages_seen.add(pages)

    def set_view() -> None:
        body = expect(client.get(paths.set_view, params=API), 200).json()
        summary = body["virtualMachine"]["statusesSummary"]
        running = sum(s["count"] for s in summary if s["code"] == "PowerState/running")
        if running != capacity:
            raise BenchError(f"the set instanceView counted {running} running instances, not {capacity}")

    def one_vm() -> None:
        expect(client.get(f"{paths.vms}/0", params=API), 200)

    list_figures = time_requests(client, count, list_expanded)
    return {
        "list_expand_ms": {**list_figures, "pages": sorted(pages_seen)},
        "set_instance_view_ms": time_requests(client, count, set_view),
        "get_vm_ms": time_requests(client, count, one_vm),
        "response_bytes_list_expand": len(
            client.get(paths.vms, params={**API, "$expand": "instanceView"}).content
        ),
    }


def tear_down(client: httpx.Client, paths: Paths, server: ServerProcess, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    expect(client.delete(paths.group, params=API), 200, 202)
    figures: dict[str, Any] = {}

    def gone() -> bool:
        if "group_404_s" not in figures:
            status = client.get(paths.group, params=API).status_code
            if status == 404:
                figures["group_404_s"] = round(time.monotonic() - started, 3)
            elif status != 200:
                raise BenchError(f"GET of the group being deleted answered {status}")
        if "dirs_gone_s" not in figures and not instance_dirs(server.data_dir):
            figures["dirs_gone_s"] = round(time.monotonic() - started, 3)
        return len(figures) == 2

    wait_until("the group and its instance directories to go", gone, timeout)
    wait_until("instance processes to end", lambda: not instance_processes(server.data_dir), 15)
    figures["processes_gone_s"] = round(time.monotonic() - started, 3)
    return figures


# --------------------------------------------------------------------------------------------- main
def run(instances: int, list_instances: int, requests: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bench": "foundation",
        "instances": instances,
        "list_instances": list_instances,
        "requests": requests,
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        # Other work on the machine skews every figure here: say how busy it was.
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    started = time.monotonic()
    server = ServerProcess(new_data_dir("scaleset-bench-"))
    ok = False
    try:
        server.start()
        result["server_start_s"] = round(time.monotonic() - started, 3)
        print(f"server {server.endpoint}  data {server.data_dir}  log {server.log_path}", flush=True)

        started = time.monotonic()
        expect(server.publish(EXAMPLE_IMAGES / "webapp-1.0.0", version="1.0.0"), 201)
        result["publish_s"] = round(time.monotonic() - started, 3)

        paths = Paths(server.subscription)
        with server.client() as client:
            expect(client.put(paths.group, params=API, json={"location": "eastus"}), 200, 201)

            def create() -> httpx.Response:
                return expect(client.put(paths.set, params=API, json=scale_set_body(instances)), 200, 201)

            result["create"] = bring_up(client, paths, server, instances, create, 60 + 3 * instances)
            print(f"created {instances}: {result['create']}", flush=True)

            def scale() -> httpx.Response:
                body = {"sku": {"capacity": list_instances}}
                return expect(client.patch(paths.set, params=API, json=body), 200, 201, 202)

            if list_instances != instances:
                timeout = 60 + 3 * list_instances
                result["scale"] = bring_up(client, paths, server, list_instances, scale, timeout)
                print(f"scaled to {list_instances}: {result['scale']}", flush=True)

            result.update(read_latency(client, paths, list_instances, requests))
            result["delete"] = tear_down(client, paths, server, 60 + list_instances)
        ok = True
    finally:
        leftovers = dispose(server)
        result["leftover_instances"] = len(leftovers)
        if server.log_path is not None:
            if ok:
                with suppress(OSError):
                    server.log_path.unlink()
            else:
                with suppress(OSError):
                    tail = server.log_path.read_text(errors="replace").splitlines()[-20:]
                    print("\n".join(["server log (last lines):", *tail]), file=sys.stderr)
                print(f"server log kept: {server.log_path}", file=sys.stderr, flush=True)
    if leftovers:
        raise BenchError(f"instances left on disk after the group delete: {leftovers}")
    return result


def table(result: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = [
        ("server start", f"{result['server_start_s']:.2f} s"),
        ("publish webapp 1.0.0", f"{result['publish_s']:.2f} s"),
    ]
    for phase, count in (("create", result["instances"]), ("scale", result["list_instances"])):
        figures = result.get(phase)
        if not figures:
            continue
        verb = "create" if phase == "create" else "scale out to"
        rows += [
            (f"{verb} {count}: request answered", f"{figures['request_s']:.3f} s"),
            (f"{verb} {count}: all running", f"{figures['running_s']:.2f} s"),
            (f"{verb} {count}: all apps answer", f"{figures['app_s']:.2f} s"),
            (
                f"{verb} {count}: list GETs meanwhile",
                f"{figures['polls']}, median {figures['poll_ms_median']:.0f} ms, "
                f"max {figures['poll_ms_max']:.0f} ms",
            ),
            (
                f"{verb} {count}: new inits recorded",
                f"{figures['first_init_s']:.2f} .. {figures['last_init_s']:.2f} s after the request"
                if figures["first_init_s"] is not None
                else "-",
            ),
        ]
    n = result["list_instances"]
    for key, label in (
        ("list_expand_ms", f"GET virtualMachines?$expand=instanceView ({n})"),
        ("set_instance_view_ms", "GET set instanceView"),
        ("get_vm_ms", "GET one VM"),
    ):
        f = result[key]
        rows.append(
            (label, f"p50 {f['p50']:.1f}  p90 {f['p90']:.1f}  p99 {f['p99']:.1f}  max {f['max']:.1f} ms")
        )
    d = result["delete"]
    rows += [
        ("delete group: GET group → 404", f"{d['group_404_s']:.2f} s"),
        ("delete group: no instance directory", f"{d['dirs_gone_s']:.2f} s"),
        ("delete group: no instance process", f"{d['processes_gone_s']:.2f} s"),
        ("instances left after dispose", str(result["leftover_instances"])),
        (
            "machine",
            f"{result['cpus']} CPUs, {result['memory_gb']} GB, Python {result['python']}, load average "
            f"{result['loadavg_1m_at_start']} at start, {result['loadavg_1m_at_end']} at end",
        ),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label.ljust(width)}  {value}" for label, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=20, help="instances in the created set")
    parser.add_argument("--list-instances", type=int, default=100, help="instances to scale to and list")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per read kind")
    parser.add_argument("--small", action="store_true", help="CI size: 5 instances, 10 listed, 20 requests")
    args = parser.parse_args(argv)
    if args.small:
        args.instances, args.list_instances, args.requests = 5, 10, 20
    if args.instances < 1 or args.list_instances < 1 or args.requests < 2:
        parser.error("--instances and --list-instances must be >= 1, --requests >= 2")
    print(
        f"foundation bench: {args.instances} instances, scale to {args.list_instances}, "
        f"{args.requests} requests per read",
        flush=True,
    )
    started = time.monotonic()
    try:
        result = run(args.instances, args.list_instances, args.requests)
    except (BenchError, RuntimeError, httpx.HTTPError) as failure:
        print(f"BENCH FAILED: {type(failure).__name__}: {failure}", file=sys.stderr, flush=True)
        return 1
    result["total_s"] = round(time.monotonic() - started, 2)
    result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(table(result))
    print("RESULT " + json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
