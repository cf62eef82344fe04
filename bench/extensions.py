"""Extensions benchmark: seconds from "model applied" to "all extensions succeeded" on N local instances.

    python bench/extensions.py              # 20 instances
    python bench/extensions.py --small      # CI size: 3 instances

A real `scaleset serve`; a set of N instances without extensions; then the Application Health (2.0) and
CustomScript extensions are added to the model and applied to every instance with `manualupgrade`
(instanceIds "*"): the figure is the time from that POST until its operation reports Succeeded, which the
server only does when every instance's guest agent has reported both extensions in a final status. Also
timed: the same for a fresh create of N instances with both extensions in the model. Exits non-zero only
when something is broken; the last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from tests.support import EXAMPLE_IMAGES, ServerProcess, dispose, new_data_dir, scale_set_body  # noqa: E402

from bench.foundation import BenchError, expect  # noqa: E402

API = {"api-version": "2026-04-01"}
EXTENSIONS = [
    {
        "name": "health",
        "properties": {
            "publisher": "Microsoft.ManagedServices",
            "type": "ApplicationHealthLinux",
            "typeHandlerVersion": "2.0",
            "settings": {"protocol": "http", "port": 8080, "requestPath": "/health"},
        },
    },
    {
        "name": "script",
        "properties": {
            "publisher": "Microsoft.Azure.Extensions",
            "type": "CustomScript",
            "typeHandlerVersion": "2.1",
            "settings": {"commandToExecute": "echo provisioned"},
            "provisionAfterExtensions": ["health"],
        },
    },
]


def body(capacity: int, extensions: list[dict[str, Any]]) -> dict[str, Any]:
    return scale_set_body(capacity, extensions=extensions, data_disk=False)


def wait_for_operation(client: httpx.Client, response: httpx.Response, timeout: float) -> None:
    url = response.headers.get("Azure-AsyncOperation")
    if url is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        status = expect(client.get(url), 200).json()
        if status["status"] == "Succeeded":
            return
        if status["status"] != "InProgress":
            raise BenchError(f"operation ended {status['status']}: {status.get('error')}")
        if time.monotonic() > deadline:
            raise BenchError(f"operation not done after {timeout:g} s")
        time.sleep(0.05)


def timed(client: httpx.Client, method: str, path: str, payload: Any, timeout: float) -> float:
    started = time.perf_counter()
    response = expect(client.request(method, path, params=API, json=payload), 200, 201, 202)
    wait_for_operation(client, response, timeout)
    return round(time.perf_counter() - started, 3)


def run(instances: int) -> dict[str, Any]:
    server = ServerProcess(new_data_dir("scaleset-bench-ext-")).start()
    try:
        if server.publish(EXAMPLE_IMAGES / "webapp-1.0.0", version="1.0.0").status_code != 201:
            raise BenchError("publishing the sample image failed")
        with server.client() as client:
            group = f"/subscriptions/{server.subscription}/resourceGroups/rg-bench-ext"
            expect(client.put(group, params=API, json={"location": "eastus"}), 201)
            plain = f"{group}/providers/Microsoft.Compute/virtualMachineScaleSets/plain"
            create_plain_s = timed(client, "PUT", plain, body(instances, []), 600)
            for extension in EXTENSIONS:
                expect(
                    client.put(
                        f"{plain}/extensions/{extension['name']}",
                        params=API,
                        json={"properties": extension["properties"]},
                    ),
                    200,
                    201,
                )
            apply_s = timed(client, "POST", f"{plain}/manualupgrade", {"instanceIds": ["*"]}, 900)
            with_extensions = f"{group}/providers/Microsoft.Compute/virtualMachineScaleSets/withext"
            create_with_s = timed(client, "PUT", with_extensions, body(instances, EXTENSIONS), 900)
            view = expect(client.get(f"{with_extensions}/instanceView", params=API), 200).json()
            summary = {
                e["name"]: {s["code"]: s["count"] for s in e["statusesSummary"]} for e in view["extensions"]
            }
            for name in ("health", "script"):
                if summary.get(name) != {"ProvisioningState/succeeded": instances}:
                    raise BenchError(f"extension {name} not succeeded everywhere: {summary}")
            timed(client, "DELETE", group, None, 300)
        return {
            "bench": "extensions",
            "instances": instances,
            "create_without_extensions_s": create_plain_s,
            "apply_extensions_to_all_s": apply_s,
            "create_with_extensions_s": create_with_s,
            "note": "apply = manualupgrade: every instance reimaged, both extensions to a final status",
        }
    finally:
        leftovers = dispose(server)
        if leftovers:
            raise BenchError(f"instances left behind: {leftovers}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--small", action="store_true", help="CI size: 3 instances")
    args = parser.parse_args(argv)
    try:
        result = run(3 if args.small else args.instances)
    except BenchError as error:
        print(f"extensions benchmark failed: {error}", file=sys.stderr)
        return 1
    for key, value in result.items():
        print(f"  {key:32} {value}")
    print("RESULT " + json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
