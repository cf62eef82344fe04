"""Update-domain walks and the CLI that waits with a verdict, end to end: a real `scaleset serve`, real
local instances, the `scaleset` command as a subprocess (M-5, M-6, M-17; docs/update-domain-walks.md).

The CLI's stdout is a pipe here, so it prints one plain line per change instead of a live display; the
tests read the walk's order from those lines, from `rollingUpgrades/latest/batches` and from the moment
each instance's reimage finished. Health comes from the Application Health extension on the sample
webapp's /health, probed 100 times faster than on Azure; the control plane waits its `gracePeriod`
(real seconds) for a domain to become healthy.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachineScaleSetVM

from tests.e2e.conftest import (
    made_in,
    provisioned_at,
    scale_set_vms,
    serve_module,
    wait_all_healthy,
)
from tests.support import (
    ServerProcess,
    application_health,
    eventually,
    guest_speed,
    publish_image,
    run_cli,
    scale_set_body,
    set_path,
)

pytestmark = pytest.mark.e2e
GROUP = "rg-walks"
GRACE_SECONDS = 10
UNHEALTHY_UPGRADED = "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
# cli/progress.py ExitCode
EXIT_COMPLETED, EXIT_USAGE, EXIT_FAULTED, EXIT_ROLLED_BACK, EXIT_CANCELLED, EXIT_NOT_STARTED = (
    0,
    2,
    3,
    4,
    5,
    6,
)
BATCH_LINE = re.compile(r"^RollingForward: batch (\d+) \(update domain (\d+)\): (.*?); ")
Json = dict[str, Any]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    yield from serve_module("scaleset-walks-", GROUP, guest_speed(apphealth_time_scale=100))


@pytest.fixture
def sets(server: ServerProcess, compute: ComputeManagementClient) -> Iterator[list[str]]:
    """The sets a test made, deleted at its end whatever happened; the server logged no error."""
    with made_in(server, compute, GROUP) as made:
        yield made.sets


# ------------------------------------------------------------------------------------------- helpers
def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def manual_set(capacity: int, sku: str, version: str) -> Json:
    """A Manual set on `scaleset:webapp:<sku>:<version>`, healthy when its webapp's /health says so."""
    body = scale_set_body(
        capacity, version=version, data_disk=False, extensions=[application_health(GRACE_SECONDS)]
    )
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["sku"] = sku
    return body


def put_set(compute: ComputeManagementClient, name: str, body: Json) -> None:
    done = compute.virtual_machine_scale_sets.begin_create_or_update(GROUP, name, body).result()  # type: ignore[call-overload]
    assert done.provisioning_state == "Succeeded"


def os_version(vm: VirtualMachineScaleSetVM) -> str:
    return str(vm.storage_profile.image_reference.exact_version)


def api_get(server: ServerProcess, name: str, *parts: str) -> Any:
    with server.client() as client:
        response = client.get(set_path(server, GROUP, name, *parts), params={"api-version": "2026-04-01"})
    assert response.status_code == 200, response.text
    return response.json()


def batches(server: ServerProcess, name: str) -> list[tuple[int, int, list[str], set[str]]]:
    """(batch, update domain, instance ids, member states) of the newest run, from our own endpoint."""
    shown = api_get(server, name, "rollingUpgrades", "latest", "batches")
    return [
        (
            b["batch"],
            b["updateDomain"],
            [m["instanceId"] for m in b["instances"]],
            {m["state"] for m in b["instances"]},
        )
        for b in shown["value"]
    ]


def domains_in_lines(stdout: str) -> list[int]:
    """The update domains of the batches the plain progress lines showed, in the order they appeared."""
    seen: list[int] = []
    for line in stdout.splitlines():
        match = BATCH_LINE.match(line)
        if match and (not seen or seen[-1] != int(match.group(2))):
            seen.append(int(match.group(2)))
    return seen


# ---------------------------------------------------------------------------------------------- tests
def test_one_domain_by_hand_then_a_walk_over_the_rest(
    server: ServerProcess, compute: ComputeManagementClient, sets: list[str]
) -> None:
    """M-5, M-6, M-17: 4 instances over update domains 0 (instances 0 and 5), 1 and 4. Upgrading domain 4
    by hand touches only instance 4; the walk then takes domain 0, then domain 1 — each domain done and
    healthy before the next starts — skips the current domain 4 and exits 0."""
    name, sku = "walk", "walk"
    publish_image(server, "webapp-1.0.0", sku=sku, version="1.0.0")
    sets.append(name)
    # Six instances fill update domains 0–4 and then 0 again; deleting 2 and 3 leaves 0, 1, 4 and 5.
    put_set(compute, name, manual_set(6, sku, "1.0.0"))
    compute.virtual_machine_scale_sets.begin_delete_instances(
        GROUP, name, {"instanceIds": ["2", "3"]}
    ).result()
    before = wait_all_healthy(compute, GROUP, name, 4, timeout=90)
    assert {i: vm.instance_view.platform_update_domain for i, vm in before.items()} == {
        "0": 0,
        "1": 1,
        "4": 4,
        "5": 0,
    }
    listed = run_cli(server, "vmss", "list-update-domains", "-g", GROUP, "-n", name, "-o", "tsv")
    assert listed.returncode == 0, describe(listed)
    assert [line.split("\t")[:2] for line in listed.stdout.splitlines()] == [
        ["0", "0, 5"],
        ["1", "1"],
        ["4", "4"],
    ]
    publish_image(server, "webapp-1.1.0", sku=sku, version="1.1.0")
    put_set(compute, name, manual_set(4, sku, "1.1.0"))  # Manual: no instance moves by itself

    # An empty or impossible update domain is refused before anything starts.
    empty = run_cli(server, "vmss", "update-instances", "-g", GROUP, "-n", name, "--update-domain", "3")
    assert empty.returncode == EXIT_NOT_STARTED, describe(empty)
    assert "UpdateDomainNotFound" in empty.stderr
    both = run_cli(
        server,
        "vmss",
        "update-instances",
        "-g",
        GROUP,
        "-n",
        name,
        "--update-domain",
        "1",
        "--instance-ids",
        "1",
    )
    assert both.returncode == EXIT_USAGE, describe(both)

    by_hand = run_cli(server, "vmss", "update-instances", "-g", GROUP, "-n", name, "--update-domain", "4")
    assert by_hand.returncode == EXIT_COMPLETED, describe(by_hand)
    assert by_hand.stdout.splitlines()[-1].startswith("Completed: 4=Succeeded"), by_hand.stdout
    after_hand = scale_set_vms(compute, GROUP, name)
    assert {i for i, vm in after_hand.items() if vm.latest_model_applied} == {"4"}
    assert {i for i, vm in after_hand.items() if os_version(vm) == "1.1.0"} == {"4"}
    for instance_id in ("0", "1", "5"):
        assert provisioned_at(after_hand[instance_id]) == provisioned_at(before[instance_id])

    walked = run_cli(server, "vmss", "upgrade-domain-walk", "-g", GROUP, "-n", name)

    assert walked.returncode == EXIT_COMPLETED, describe(walked)
    assert walked.stdout.splitlines()[-1] == "Completed: 3 succeeded, 0 failed, 0 in progress, 0 pending"
    assert domains_in_lines(walked.stdout) in ([0, 1], [1], [0]), walked.stdout  # polls may miss one
    assert batches(server, name) == [(1, 0, ["0", "5"], {"succeeded"}), (2, 1, ["1"], {"succeeded"})]
    after = scale_set_vms(compute, GROUP, name)
    assert {os_version(vm) for vm in after.values()} == {"1.1.0"}
    assert all(vm.latest_model_applied for vm in after.values())
    # Domain 0's two reimages both finished before domain 1's did (it waited for their health).
    assert max(provisioned_at(after[i]) for i in ("0", "5")) < provisioned_at(after["1"])
    assert provisioned_at(after["4"]) == provisioned_at(after_hand["4"])  # already current: skipped

    table = run_cli(server, "vmss", "rolling-upgrade", "get-latest", "-g", GROUP, "-n", name, "-o", "table")
    assert table.returncode == 0, describe(table)
    assert "Completed" in table.stdout and "walk" in table.stdout, table.stdout

    again = run_cli(server, "vmss", "upgrade-domain-walk", "-g", GROUP, "-n", "no-such-set")
    assert again.returncode == EXIT_NOT_STARTED, describe(again)
    assert "ResourceNotFound" in again.stderr


def test_a_walk_onto_a_broken_image_stops_after_the_first_domain(
    server: ServerProcess, compute: ComputeManagementClient, sets: list[str]
) -> None:
    """The new image is never healthy: the walk upgrades domain 0, waits its grace period, stops Faulted
    with Azure's code and exit code 3; domains 1–3 are never touched."""
    name, sku = "walkbroken", "walkbroken"
    publish_image(server, "webapp-1.0.0", sku=sku, version="1.0.0")
    sets.append(name)
    put_set(compute, name, manual_set(4, sku, "1.0.0"))
    before = wait_all_healthy(compute, GROUP, name, 4, timeout=90)
    assert sorted(vm.instance_view.platform_update_domain for vm in before.values()) == [0, 1, 2, 3]
    publish_image(server, "webapp-broken-2.0.0", sku=sku, version="2.0.0")
    put_set(compute, name, manual_set(4, sku, "2.0.0"))

    walked = run_cli(server, "vmss", "upgrade-domain-walk", "-g", GROUP, "-n", name)

    assert walked.returncode == EXIT_FAULTED, describe(walked)
    last = walked.stdout.splitlines()[-1]
    assert last.startswith("Faulted: 0 succeeded, 1 failed, 0 in progress, 0 pending"), walked.stdout
    assert UNHEALTHY_UPGRADED in last and UNHEALTHY_UPGRADED in walked.stderr
    assert batches(server, name) == [(1, 0, ["0"], {"failed"})]
    latest = api_get(server, name, "rollingUpgrades", "latest")["properties"]
    assert latest["runningStatus"]["code"] == "Faulted"
    assert latest["policy"]["maxUnhealthyUpgradedInstancePercent"] == 0
    after = scale_set_vms(compute, GROUP, name)
    assert os_version(after["0"]) == "2.0.0"
    for instance_id in ("1", "2", "3"):
        assert os_version(after[instance_id]) == "1.0.0"
        assert provisioned_at(after[instance_id]) == provisioned_at(before[instance_id])


def test_a_rolling_upgrade_that_rolls_back_exits_4(
    server: ServerProcess, compute: ComputeManagementClient, sets: list[str]
) -> None:
    """`rolling-upgrade start` onto a never-healthy image with rollbackFailedInstancesOnPolicyBreach: the
    first batch fails, is rolled back to its previous OS disk, the run ends Faulted, and the waiting CLI
    says so with exit code 4 (not 3: the instances are back where they were)."""
    name, sku = "rollsback", "rollsback"
    publish_image(server, "webapp-1.0.0", sku=sku, version="1.0.0")
    sets.append(name)
    body = manual_set(2, sku, "latest")
    body["properties"]["upgradePolicy"]["rollingUpgradePolicy"] = {
        "rollbackFailedInstancesOnPolicyBreach": True
    }
    put_set(compute, name, body)
    before = wait_all_healthy(compute, GROUP, name, 2, timeout=90)
    publish_image(server, "webapp-broken-2.0.0", sku=sku, version="2.0.0")

    started = run_cli(server, "vmss", "rolling-upgrade", "start", "-g", GROUP, "-n", name)

    assert started.returncode == EXIT_ROLLED_BACK, describe(started)
    assert UNHEALTHY_UPGRADED in started.stderr, describe(started)
    latest = api_get(server, name, "rollingUpgrades", "latest")["properties"]
    assert latest["runningStatus"]["code"] == "Faulted"
    assert latest["progress"]["failedInstanceCount"] == 1
    [(_, _, [rolled], states)] = batches(server, name)
    assert states == {"rolled_back"}
    after = scale_set_vms(compute, GROUP, name)
    assert {os_version(vm) for vm in after.values()} == {"1.0.0"}
    untouched = next(i for i in after if i != rolled)
    assert provisioned_at(after[untouched]) == provisioned_at(before[untouched])


def test_a_walk_cancelled_between_domains_exits_5(
    server: ServerProcess, compute: ComputeManagementClient, sets: list[str]
) -> None:
    """The set's pauseTimeBetweenBatches holds the walk after domain 0; a cancel then ends it at once
    (Cancelled), and the waiting CLI exits 5 with domain 1 untouched."""
    name, sku = "walkcancel", "walkcancel"
    publish_image(server, "webapp-1.0.0", sku=sku, version="1.0.0")
    sets.append(name)
    paused = {"mode": "Manual", "rollingUpgradePolicy": {"pauseTimeBetweenBatches": "PT2M"}}
    put_set(compute, name, _with_policy(sku, "1.0.0", paused))
    before = wait_all_healthy(compute, GROUP, name, 2, timeout=90)
    publish_image(server, "webapp-1.1.0", sku=sku, version="1.1.0")
    put_set(compute, name, _with_policy(sku, "1.1.0", paused))

    walking = subprocess.Popen(
        [sys.executable, "-m", "scaleset.cli.main", "vmss", "upgrade-domain-walk", "-g", GROUP, "-n", name],
        env=server.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        eventually(lambda: domain_0_done(server, name), 60, 0.2, "domain 0 done, the walk pausing")
        cancelled = run_cli(server, "vmss", "rolling-upgrade", "cancel", "-g", GROUP, "-n", name, "-o", "tsv")
        assert cancelled.returncode == 0, describe(cancelled)
        assert cancelled.stdout.split("\t")[0] == "Cancelled", cancelled.stdout
        stdout, stderr = walking.communicate(timeout=60)
    finally:
        if walking.poll() is None:
            walking.kill()
            walking.wait(timeout=10)

    assert walking.returncode == EXIT_CANCELLED, f"exit {walking.returncode}\n{stdout}\n{stderr}"
    assert stdout.splitlines()[-1] == "Cancelled: 1 succeeded, 0 failed, 0 in progress, 0 pending", stdout
    after = scale_set_vms(compute, GROUP, name)
    assert (os_version(after["0"]), os_version(after["1"])) == ("1.1.0", "1.0.0")
    assert provisioned_at(after["1"]) == provisioned_at(before["1"])


def domain_0_done(server: ServerProcess, name: str) -> bool:
    """Whether the walk exists (the CLI may not have started it yet) and its first domain succeeded."""
    with server.client() as client:
        response = client.get(
            set_path(server, GROUP, name, "rollingUpgrades", "latest", "batches"),
            params={"api-version": "2026-04-01"},
        )
    return response.status_code == 200 and batches(server, name) == [(1, 0, ["0"], {"succeeded"})]


def _with_policy(sku: str, version: str, policy: Json) -> Json:
    body = manual_set(2, sku, version)
    body["properties"]["upgradePolicy"] = policy
    return body
