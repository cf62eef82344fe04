"""The rolling-upgrade plan preview against a real `scaleset serve` with local instances: the endpoint,
the CLI (`scaleset vmss rolling-upgrade plan`), and a real OS upgrade after it (docs/plan-preview.md;
M-4, M-5, M-10, M-25).

The batches of a real run are checked against the preview on the simulated fleet
(tests/unit/test_plan.py); here the point is the wire and the command line, on real processes.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from azure.mgmt.compute import ComputeManagementClient

from tests.e2e.conftest import compute_client, resource_client
from tests.support import ServerProcess, run_cli, scale_set_body

pytestmark = pytest.mark.e2e
GROUP = "rg-plan"
NAME = "web"
API = {"api-version": "2026-04-01"}


@pytest.fixture(scope="module")
def compute(published: ServerProcess) -> Iterator[ComputeManagementClient]:
    resource_client(published).resource_groups.create_or_update(GROUP, {"location": "eastus"})
    client = compute_client(published)
    try:
        yield client
    finally:
        for scale_set in client.virtual_machine_scale_sets.list(GROUP):
            client.virtual_machine_scale_sets.begin_delete(GROUP, scale_set.name).result()


def plan_path(server: ServerProcess, name: str = NAME) -> str:
    return (
        f"/subscriptions/{server.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
        f"virtualMachineScaleSets/{name}/rollingUpgrades/scalesetPlan"
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def reader_token(server: ServerProcess) -> str:
    with server.client() as client:
        response = client.post("/scaleset/admin/tokens", json={"role": "reader", "name": "plan-preview"})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def batches_of(plan: dict[str, Any]) -> list[tuple[list[str], list[str], int]]:
    return [(b["instanceIds"], b["zones"], b["updateDomain"]) for b in plan["batches"]]


def test_preview_then_upgrade(published: ServerProcess, compute: ComputeManagementClient) -> None:
    """3 instances in zones 1–3 on 1.0.0, then a new model (1.1.0) with a fourth instance, which starts
    on it: the preview lists one batch per zone and the fourth as AlreadyCurrent; the real upgrade then
    leaves nothing to do."""
    sets = compute.virtual_machine_scale_sets
    sets.begin_create_or_update(GROUP, NAME, scale_set_body(3, zones=["1", "2", "3"])).result()
    sets.begin_create_or_update(
        GROUP, NAME, scale_set_body(4, zones=["1", "2", "3"], version="1.1.0")
    ).result()

    # The endpoint, with a reader token: previewing changes nothing, so reading is enough.
    with published.client(reader_token(published)) as client:
        response = client.get(plan_path(published), params=API)
        assert response.status_code == 200, response.text
        plan = response.json()
        assert (plan["upgrade"], plan["targetImageVersion"], plan["activeRun"]) == ("os", "1.1.0", None)
        assert batches_of(plan) == [(["0"], ["1"], 0), (["1"], ["2"], 0), (["2"], ["3"], 0)]
        assert plan["skipped"] == [{"instanceId": "3", "reason": "AlreadyCurrent"}]
        assert plan["gate"]["verdict"] == "Proceed"
        assert plan["outOfService"] == {
            "worst": 1,
            "budget": 0,
            "exceedsBudget": True,
            "peakInstanceCount": 4,
        }
        # No health source: healthy once running and provisioned; the wait is still 5 minutes at most.
        assert plan["duration"]["healthSource"] == "InstanceState"
        assert (plan["duration"]["minimum"], plan["duration"]["maximum"]) == ("PT0S", "PT15M")

        # What if: cross-zone batches at 100 % would put the three update-domain-0 instances together,
        # but a budget of 0 unhealthy (20 % of 4) still lets only one out at a time ...
        what_if = {**API, "maxBatchInstancePercent": "100", "enableCrossZoneUpgrade": "true"}
        narrow = client.get(plan_path(published), params=what_if).json()
        assert batches_of(narrow) == [(["0"], ["1"], 0), (["1"], ["2"], 0), (["2"], ["3"], 0)]
        # ... until the budget allows it too.
        what_if["maxUnhealthyInstancePercent"] = "100"
        wider = client.get(plan_path(published), params=what_if).json()
        assert batches_of(wider) == [(["0", "1", "2"], ["1", "2", "3"], 0)]
        assert wider["outOfService"]["worst"] == 3

        refused = client.get(plan_path(published), params={**API, "maxBatchInstancePercent": "150"})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "InvalidParameter"
        assert refused.json()["error"]["target"] == "rollingUpgradePolicy.maxBatchInstancePercent"
        missing = client.get(plan_path(published, "nope"), params=API)
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "ResourceNotFound")

    # The CLI: a row per batch, the skipped instances and a summary; JSON is the whole plan.
    table = ok(run_cli(published, "vmss", "rolling-upgrade", "plan", "-g", GROUP, "-n", NAME, "-o", "table"))
    rows = [line.split() for line in table.splitlines() if re.match(r"^\s*\d+\s+\d", line)]
    assert [row[:4] for row in rows] == [["1", "0", "1", "0"], ["2", "1", "2", "0"], ["3", "2", "3", "0"]]
    assert "Skipped: 3 (AlreadyCurrent)" in table
    assert "3 batches of at most 1 (of 4 instances, 1 skipped)" in table
    as_json = json.loads(
        ok(
            run_cli(
                published,
                "vmss",
                "rolling-upgrade",
                "plan",
                "-g",
                GROUP,
                "-n",
                NAME,
                "--max-batch-instance-percent",
                "100",
                "--max-unhealthy-instance-percent",
                "100",
                "--enable-cross-zone-upgrade",
                "true",
            )
        )
    )
    assert batches_of(as_json) == batches_of(wider)
    bad = run_cli(
        published, "vmss", "rolling-upgrade", "plan", "-g", GROUP, "-n", NAME, "--max-surge", "maybe"
    )
    assert bad.returncode == 1 and "InvalidParameter" in bad.stderr, bad.stderr

    # The real upgrade; afterwards every instance is current and the preview says so.
    compute.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(GROUP, NAME).result()
    latest = compute.virtual_machine_scale_set_rolling_upgrades.get_latest(GROUP, NAME)
    assert latest.running_status is not None and latest.running_status.code == "Completed"
    assert latest.progress is not None and latest.progress.successful_instance_count == 3
    after = json.loads(ok(run_cli(published, "vmss", "rolling-upgrade", "plan", "-g", GROUP, "-n", NAME)))
    assert (after["gate"]["verdict"], after["batches"]) == ("NothingToDo", [])
    assert [s["reason"] for s in after["skipped"]] == ["AlreadyCurrent"] * 4
