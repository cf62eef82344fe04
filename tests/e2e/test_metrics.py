"""Issue 6 §5, end to end: a real `scaleset serve --log-format json`, driven by the Azure SDK, scraped by
a Prometheus-style GET of `/metrics`; its log lines are JSON objects that name the set they concern."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.mgmt.compute import ComputeManagementClient
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import compute_client, resource_client, serve_module
from tests.support import (
    REPO,
    ServerProcess,
    eventually,
    scale_set_body,
)

pytestmark = pytest.mark.e2e
GROUP = "rg-metrics"
SET = "metered"
SET_ROUTE = (
    "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.compute"
    "/virtualmachinescalesets/{name}"
)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # Later options win: info level, so uvicorn's access log (one line per request) is written too.
    yield from serve_module(
        "scaleset-metrics-",
        extra_args=("--log-format", "json", "--log-level", "info"),
        webapp_versions=("1.0.0",),
    )


@pytest.fixture(scope="module")
def compute(server: ServerProcess) -> Iterator[ComputeManagementClient]:
    resource_client(server).resource_groups.create_or_update(GROUP, {"location": "eastus"})
    client = compute_client(server)
    client.virtual_machine_scale_sets.begin_create_or_update(GROUP, SET, scale_set_body(2)).result()
    yield client
    client.virtual_machine_scale_sets.begin_delete(GROUP, SET).result()  # its instances stop with it


def scrape(
    server: ServerProcess, token: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics`, keyed by name and sorted labels, parsed by Prometheus's own parser."""
    with server.client(token) as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_refuse_a_scraper_without_a_token(server: ServerProcess) -> None:
    response = httpx.get(f"{server.endpoint}/metrics", timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AuthenticationFailed"


def test_scrape_shows_request_latency_and_instance_gauges(
    server: ServerProcess, compute: ComputeManagementClient
) -> None:
    vms = list(compute.virtual_machine_scale_set_vms.list(GROUP, SET))
    assert len(vms) == 2
    compute.virtual_machine_scale_sets.get(GROUP, SET)
    where = {"subscription": server.subscription, "group": GROUP, "set": SET}

    def settled() -> Any:
        samples = scrape(server)
        running = sample(
            samples, "scaleset_instances", **where, provisioning_state="succeeded", power_state="running"
        )
        return samples if running == 2 else None

    samples = eventually(settled, timeout=120, interval=0.5, what="both instances running in /metrics")
    # The sample image has no health source, so running and provisioned means healthy (docs).
    assert sample(samples, "scaleset_instances_health", **where, health="healthy") == 2
    assert sample(samples, "scaleset_instances_health", **where, health="unhealthy") == 0
    # The SDK's PUT and GET of the set are timed under the route's template, never the set's name.
    latency = "scaleset_api_request_duration_seconds_count"
    put = sample(samples, latency, method="PUT", route=SET_ROUTE, status="201")
    assert put is not None and put >= 1
    get = sample(samples, latency, method="GET", route=SET_ROUTE, status="200")
    assert get is not None and get >= 1
    vm_route = SET_ROUTE + "/virtualmachines"
    assert (sample(samples, latency, method="GET", route=vm_route, status="200") or 0) >= 1
    assert not [key for key in samples if SET in dict(key[1]).get("route", "")]
    assert sample(samples, "scaleset_rolling_upgrades", kind="os", status="Completed") == 0
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


def test_server_log_is_json_and_names_the_set(
    server: ServerProcess, compute: ComputeManagementClient
) -> None:
    compute.virtual_machine_scale_sets.get(GROUP, SET)
    assert server.log_path is not None

    def lines_about_the_set() -> list[dict[str, Any]]:
        records = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.strip()]
        return [r for r in records if r.get("set") == SET and r["logger"] == "uvicorn.access"]

    about = eventually(lines_about_the_set, timeout=30, what="an access-log line naming the set")
    first = about[0]
    assert {"time", "level", "logger", "message"} <= set(first)
    assert (first["subscription"], first["group"]) == (server.subscription, GROUP)
    assert f"/virtualMachineScaleSets/{SET}" in first["message"]


def test_the_docs_scrape_example_runs_as_written(
    server: ServerProcess, compute: ComputeManagementClient, tmp_path: Path
) -> None:
    document = (REPO / "docs" / "observability.md").read_text()
    example = re.findall(r"```bash\n(.*?)```", document, flags=re.S)[0]
    environment = {**server.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    result = subprocess.run(
        ["bash", "-e", "-c", example],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f'set="{SET}"' in next(line for line in lines if line.startswith("scaleset_instances_health{"))
    assert any(line.startswith('scaleset_rolling_upgrades{kind="os",status="Completed"}') for line in lines)
