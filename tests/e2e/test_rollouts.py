"""Platform rollouts phase by phase on a real server (M-21, docs/availability-first.md): a phases file
given to `scaleset serve` through `SCALESET_ROLLOUT_PHASES`, two one-instance sets on real local
instances in two phases (West US first, then its pair East US), created and watched with the real
azure-mgmt-compute SDK, the rollout read with the `scaleset rollout` CLI and the REST endpoint; and a bad
phases file refusing to start the server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient

from tests.e2e.conftest import compute_client, serve_module
from tests.support import (
    EXAMPLE_IMAGES,
    ServerProcess,
    eventually,
    free_port,
    new_data_dir,
    put_health_probe,
    run_cli,
    scale_set_body,
)

pytestmark = pytest.mark.e2e
GROUP = "rg-rollouts"
SKU = "rollout"
KEY = f"scaleset:webapp:{SKU}"
PHASES = [["westus"], ["eastus"]]
ROLLOUTS = "/providers/Scaleset.Platform/rollouts"
Json = dict[str, Any]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    phases = tmp_path_factory.mktemp("phases") / "phases.json"
    phases.write_text(json.dumps(PHASES))
    environment = {"SCALESET_ROLLOUT_PHASES": str(phases), "SCALESET_PLATFORM_SWEEP_SECONDS": "1"}
    yield from serve_module("scaleset-rollouts-", GROUP, environment)


def publish(server: ServerProcess, image: str, version: str, location: str) -> None:
    response = server.publish(EXAMPLE_IMAGES / image, location=location, sku=SKU, version=version)
    assert response.status_code == 201, response.text


def auto_set(location: str, probe: str) -> Json:
    body = scale_set_body(
        1,
        version="latest",
        data_disk=False,
        upgradePolicy={"mode": "Automatic", "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}},
    )
    body["location"] = location
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["sku"] = SKU
    body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": probe}}
    return body


def ended_run(compute: ComputeManagementClient, name: str) -> Any:
    try:
        status = compute.virtual_machine_scale_set_rolling_upgrades.get_latest(GROUP, name)
    except ResourceNotFoundError:
        return None
    return status if status.running_status.code not in ("RollingForward", "RollingBack") else None


def test_a_rollout_goes_phase_by_phase_and_shows_in_the_cli(server: ServerProcess) -> None:
    compute = compute_client(server)
    sets = compute.virtual_machine_scale_sets
    for location in ("westus", "eastus"):
        publish(server, "webapp-1.0.0", "1.0.0", location)
    probe = put_health_probe(server, GROUP, "lb-rollouts")
    try:
        for name, location in (("first", "westus"), ("second", "eastus")):
            created = sets.begin_create_or_update(GROUP, name, auto_set(location, probe)).result()
            assert created.provisioning_state == "Succeeded"

        def healthy(name: str, version: str) -> bool:
            listed = list(compute.virtual_machine_scale_set_vms.list(GROUP, name, expand="instanceView"))
            return bool(listed) and all(
                vm.instance_view.os_version == version
                and vm.instance_view.vm_health is not None
                and vm.instance_view.vm_health.status.code == "HealthState/healthy"
                for vm in listed
            )

        for name in ("first", "second"):
            eventually(lambda n=name: healthy(n, "1.0.0"), 90, 0.5, f"{name} healthy on 1.0.0")

        # East US's copy is published first: its set must still wait for West US, phase 1.
        publish(server, "webapp-1.1.0", "1.1.0", "eastus")
        waiting = json.loads(_ok(run_cli(server, "rollout", "list", "-o", "json")))
        assert waiting == [], "no platform run yet: nothing to show"
        publish(server, "webapp-1.1.0", "1.1.0", "westus")

        first = eventually(lambda: ended_run(compute, "first"), 120, 0.5, "first upgraded")
        second = eventually(lambda: ended_run(compute, "second"), 120, 0.5, "second upgraded")
        assert first.running_status.code == second.running_status.code == "Completed"
        # Phase 2 starts only once phase 1 ended: the first run's last action is its completion.
        assert second.running_status.start_time >= first.running_status.last_action_time
        assert all(healthy(n, "1.1.0") for n in ("first", "second"))

        (rollout,) = json.loads(_ok(run_cli(server, "rollout", "list", "-o", "json")))
        assert (rollout["kind"], rollout["key"], rollout["version"], rollout["state"]) == (
            "image",
            KEY,
            "1.1.0",
            "succeeded",
        )
        assert rollout["counts"]["succeeded"] == rollout["targetCount"] == 2
        assert [p["regions"] for p in rollout["phases"][:2]] == PHASES
        assert [[t["name"] for t in p["targets"]] for p in rollout["phases"][:2]] == [["first"], ["second"]]

        table = _ok(run_cli(server, "rollout", "show", "--key", KEY, "--version", "1.1.0", "-o", "table"))
        assert "westus" in table and "first:succeeded" in table and "second:succeeded" in table

        missing = run_cli(server, "rollout", "show", "--key", KEY, "--version", "9.9.9")
        assert missing.returncode != 0 and "No platform rollout" in missing.stderr + missing.stdout

        _, reader = _reader_token(server)
        with server.client() as client:
            answer = client.get(
                ROLLOUTS, headers={"Authorization": f"Bearer {reader}"}, params={"kind": "image"}
            )
            assert answer.status_code == 200 and len(answer.json()["value"]) == 1
            bad = client.get(ROLLOUTS, params={"kind": "kernel"})
            assert bad.status_code == 400
            assert (bad.json()["error"]["code"], bad.json()["error"]["target"]) == (
                "InvalidParameter",
                "kind",
            )
    finally:
        for name in ("first", "second"):
            sets.begin_delete(GROUP, name).result()


def _reader_token(server: ServerProcess) -> tuple[int, str]:
    result = run_cli(server, "token", "create", "--role", "reader", "--name", "rollouts", "-o", "json")
    return result.returncode, json.loads(_ok(result))["token"]


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_a_bad_phases_file_refuses_to_start(tmp_path: Path) -> None:
    bad = tmp_path / "phases.json"
    bad.write_text(json.dumps([["eastus", "westus"]]))
    data_dir = new_data_dir("scaleset-rollouts-bad-")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "scaleset.cli.main", "serve", "--data-dir", str(data_dir)),
            *("--port", str(free_port()), "--rollout-phases", str(bad)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    shutil.rmtree(data_dir, ignore_errors=True)
    assert result.returncode == 2, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert "Refusing to start" in said and "phases.json: phase 1 holds the paired regions" in said
