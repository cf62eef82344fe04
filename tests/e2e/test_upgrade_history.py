"""The OS upgrade history end to end (M-14, M-25, M-26; azure-api.md §1.1, §2.6): a real `scaleset serve`
with local instances, driven by the real azure-mgmt-compute SDK and the `scaleset` CLI.

One Rolling set of two instances with the Application Health extension as its health source has two OS
upgrades: to 1.1.0 (Completed), then to the never-healthy 2.0.0 (Faulted; the failed instance gets its
previous OS disk back, as the set's `rollbackFailedInstancesOnPolicyBreach` asks). The server lists one
entry a page (`--page-size 1`), so the SDK's iterator has to follow `nextLink` to see both. Then the
server is restarted on the same data directory and the history is still there.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import UpgradeOperationHistoricalStatusInfo

from tests.e2e.conftest import compute_client, delete_sets, serve_module
from tests.support import (
    REPO,
    ServerProcess,
    application_health,
    eventually,
    guest_speed,
    publish_image,
    run_cli,
    scale_set_body,
    server_log_errors,
)

pytestmark = pytest.mark.e2e
GROUP = "rg1"
NAME = "web"
SKU = "history"
GRACE = 10  # seconds the control plane waits for a batch to become healthy (the extension's gracePeriod)
UNHEALTHY_UPGRADED = "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
Json = dict[str, Any]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    yield from serve_module(
        "scaleset-history-",
        GROUP,
        guest_speed(apphealth_time_scale=100),
        extra_args=("--page-size", "1"),
        before_stop=delete_the_set,
    )


def delete_the_set(server: ServerProcess) -> None:
    """Delete the module's set while its server still runs (a failed test may leave it)."""
    if server.process is not None and server.process.poll() is None:
        delete_sets(compute_client(server), GROUP, [NAME])


def rolling_set_with_health_extension() -> Json:
    """Two instances on `scaleset:webapp:history:latest`, Rolling, health from the Application Health
    extension (azure-api.md §4.5), failed instances rolled back on a policy breach."""
    body = scale_set_body(
        2,
        version="latest",
        extensions=[application_health(GRACE)],
        upgradePolicy={
            "mode": "Rolling",
            "rollingUpgradePolicy": {"rollbackFailedInstancesOnPolicyBreach": True},
        },
    )
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["sku"] = SKU
    return body


def all_healthy(compute: ComputeManagementClient, count: int) -> bool:
    vms = list(compute.virtual_machine_scale_set_vms.list(GROUP, NAME, expand="instanceView"))
    codes = [
        vm.instance_view.vm_health.status.code if vm.instance_view.vm_health is not None else None
        for vm in vms
    ]
    return len(vms) == count and all(code == "HealthState/healthy" for code in codes)


def history(compute: ComputeManagementClient) -> list[Any]:
    """Every entry, through the SDK's pager (it follows nextLink). Typed Any: every field of the SDK's
    read-only models is Optional, and the tests below assert what is there."""
    entries: list[UpgradeOperationHistoricalStatusInfo] = list(
        compute.virtual_machine_scale_sets.get_os_upgrade_history(GROUP, NAME)
    )
    return list(entries)


def summary(entry: Any) -> Json:
    p = entry.properties
    return {
        "code": p.running_status.code,
        "startedBy": p.started_by,
        "version": p.target_image_reference.version,
        "succeeded": p.progress.successful_instance_count,
        "failed": p.progress.failed_instance_count,
        "inProgress": p.progress.in_progress_instance_count,
        "pending": p.progress.pending_instance_count,
        "rolledBack": p.rollback_info.successfully_rolledback_instance_count,
        "rollbackFailed": p.rollback_info.failed_rolledback_instance_count,
        "error": p.error.code if p.error is not None else None,
    }


EXPECTED = [
    {
        "code": "Faulted",
        "startedBy": "User",
        "version": "2.0.0",
        "succeeded": 0,
        "failed": 1,
        "inProgress": 0,
        "pending": 0,
        "rolledBack": 1,
        "rollbackFailed": 0,
        "error": UNHEALTHY_UPGRADED,
    },
    {
        "code": "Completed",
        "startedBy": "User",
        "version": "1.1.0",
        "succeeded": 2,
        "failed": 0,
        "inProgress": 0,
        "pending": 0,
        "rolledBack": 0,
        "rollbackFailed": 0,
        "error": None,
    },
]


@pytest.fixture(scope="module")
def upgraded(server: ServerProcess, compute: ComputeManagementClient) -> ServerProcess:
    """The set after its two OS upgrades: 1.0.0 → 1.1.0 (Completed), → 2.0.0 (Faulted, rolled back)."""
    log_start = server.log_path.stat().st_size if server.log_path else 0
    publish_image(server, "webapp-1.0.0", sku=SKU, version="1.0.0")
    body: Any = rolling_set_with_health_extension()  # the SDK takes the wire JSON as it is
    created = compute.virtual_machine_scale_sets.begin_create_or_update(GROUP, NAME, body).result()
    assert created.provisioning_state == "Succeeded"
    eventually(lambda: all_healthy(compute, 2), 90, 0.5, "both instances healthy on 1.0.0")
    assert history(compute) == []  # creating the set is no upgrade

    upgrades = compute.virtual_machine_scale_set_rolling_upgrades
    publish_image(server, "webapp-1.1.0", sku=SKU, version="1.1.0")
    upgrades.begin_start_os_upgrade(GROUP, NAME).result()
    publish_image(server, "webapp-broken-2.0.0", sku=SKU, version="2.0.0")
    with pytest.raises(HttpResponseError) as failed:
        upgrades.begin_start_os_upgrade(GROUP, NAME).result()
    assert failed.value.error is not None and failed.value.error.code == UNHEALTHY_UPGRADED
    assert not server_log_errors(server, log_start), server.log_path
    return server


# ------------------------------------------------------------------------------------------- the SDK
def test_sdk_lists_every_attempt_newest_first_across_pages(
    upgraded: ServerProcess, compute: ComputeManagementClient
) -> None:
    entries = history(compute)

    assert [summary(entry) for entry in entries] == EXPECTED
    faulted, completed = entries
    assert faulted.type == "Microsoft.Compute/virtualMachineScaleSets/rollingUpgrades"
    assert faulted.location == "eastus"
    reference = completed.properties.target_image_reference
    assert (reference.publisher, reference.offer, reference.sku) == ("scaleset", "webapp", SKU)
    for entry in entries:
        running = entry.properties.running_status
        assert running.start_time is not None and running.end_time is not None
        assert running.start_time <= running.end_time
    assert completed.properties.running_status.end_time <= faulted.properties.running_status.start_time
    assert faulted.properties.error.message  # the breach, in words
    assert faulted.properties.rollback_info.rollback_error is None  # the rollback itself worked


def test_one_entry_a_page_with_a_next_link(upgraded: ServerProcess) -> None:
    """`--page-size 1`: the first page holds the newest attempt and links to the second, the last page
    has no link (so the SDK above really followed one)."""
    path = (
        f"/subscriptions/{upgraded.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
        f"virtualMachineScaleSets/{NAME}/osUpgradeHistory"
    )
    with upgraded.client() as client:
        first = client.get(path, params={"api-version": "2023-09-01"}).json()
        assert [e["properties"]["runningStatus"]["code"] for e in first["value"]] == ["Faulted"]
        second = client.get(first["nextLink"]).json()
    assert [e["properties"]["runningStatus"]["code"] for e in second["value"]] == ["Completed"]
    assert "nextLink" not in second


# ------------------------------------------------------------------------------------------- the CLI
def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(server, *args, timeout=120, env={"SCALESET_SUBSCRIPTION": server.subscription})


def table_rows(text: str) -> list[dict[str, str]]:
    """A Rich table's rows as {header: cell}, cut at the columns where the headers start (cells may be
    empty, so splitting on blanks would not do); the line under the header is a rule."""
    header, _rule, *lines = text.rstrip("\n").splitlines()
    names = header.split()
    starts = [header.index(f" {name} ") + 1 if i else header.index(name) for i, name in enumerate(names)]
    ends = [*starts[1:], None]
    return [
        {name: line[start:end].strip() for name, start, end in zip(names, starts, ends, strict=True)}
        for line in lines
    ]


def test_cli_table_and_json(upgraded: ServerProcess) -> None:
    table = cli(upgraded, "vmss", "get-os-upgrade-history", "-g", GROUP, "-n", NAME, "-o", "table")
    assert table.returncode == 0, table.stderr
    rows = table_rows(table.stdout)
    assert list(rows[0])[:4] == ["Status", "Started", "Ended", "StartedBy"]
    assert [row["Status"] for row in rows] == ["Faulted", "Completed"]
    assert [row["TargetVersion"] for row in rows] == ["2.0.0", "1.1.0"]
    assert [(row["Succeeded"], row["Failed"], row["RolledBack"]) for row in rows] == [
        ("0", "1", "1"),
        ("2", "0", "0"),
    ]
    assert rows[0]["Error"] == UNHEALTHY_UPGRADED

    top = cli(upgraded, "vmss", "get-os-upgrade-history", "-g", GROUP, "-n", NAME, "--top", "1", "-o", "json")
    assert top.returncode == 0, top.stderr
    assert '"code": "Faulted"' in top.stdout and '"code": "Completed"' not in top.stdout

    bad = cli(upgraded, "vmss", "get-os-upgrade-history", "-g", GROUP, "-n", NAME, "--since", "yesterday")
    assert bad.returncode != 0
    assert "InvalidParameter" in bad.stderr


# ------------------------------------------------------------------------------------------ the docs
def test_the_docs_sdk_example_runs_as_written(upgraded: ServerProcess) -> None:
    """docs/upgrade-history.md's Python example, run as a user would (endpoint and token from the
    environment), prints what the page says it prints."""
    document = (REPO / "docs" / "upgrade-history.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", document, flags=re.S)
    printed = re.search(r"which prints, for the two upgrades above:\n\n```\n(.*?)```", document, flags=re.S)
    assert printed is not None

    result = subprocess.run(
        [sys.executable, "-c", example],
        env=upgraded.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == printed.group(1)


# ---------------------------------------------------------------------------------- after a restart
def test_history_survives_a_restart(upgraded: ServerProcess) -> None:
    """M-26: the history is read from the persisted runs, so a new server process shows the same."""
    before = [summary(entry) for entry in history(compute_client(upgraded))]
    upgraded.stop()
    upgraded.start()

    after = [summary(entry) for entry in history(compute_client(upgraded))]

    assert after == before == EXPECTED
