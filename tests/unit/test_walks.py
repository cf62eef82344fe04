"""Update-domain walks and update-domain manual upgrades on the simulated fleet, time virtual (M-5, M-6,
M-17; docs/update-domain-walks.md).

The harness is tests/fleet.py's: services, executor and the rolling loop on a real database,
the engine driven pass by pass. A walk is a rolling-upgrade run of kind `walk`, so these tests check what
a walk adds: one batch per update domain in domain order, every domain healthy before the next, the first
failure stopping it, and whatever the set's upgrade mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scaleset.cli.progress import (
    ExitCode,
    InstancesSnapshot,
    RunSnapshot,
    instances_line,
    instances_verdict,
    operation_id,
    run_line,
    run_renderable,
    run_verdict,
)
from scaleset.domain.errors import ArmError
from scaleset.domain.rolling import UNHEALTHY_UPGRADED
from scaleset.providers.sim import Fault
from scaleset.services.walks import WalkService, parse_update_domain, update_domains, walk_policy
from scaleset.store.tables import Instance
from tests.fleet import BOOT_SECONDS, GROUP, NAME, PROBE_ID, SUB, Fleet, fleet_on_copy, prepare_data
from tests.support import scale_set_body


# A prepared database for the module, copied for each test; the fleet on it.
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_data(tmp_path_factory.mktemp("walks-prepared"))


@pytest.fixture
def fleet(tmp_path: Path, prepared: Path) -> Iterator[Fleet]:
    yield from fleet_on_copy(prepared, tmp_path)


def manual_body(capacity: int, version: str = "1.0.0", **properties: Any) -> dict[str, Any]:
    """A Manual set behind the load-balancer probe, on an exact image version."""
    body = scale_set_body(capacity, version=version, **properties)
    body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": PROBE_ID}}
    return body


def walks(fleet: Fleet) -> WalkService:
    c = fleet.container
    return WalkService(c.db, c.clock, c.scalesets, c.executor.wake)


def new_model(fleet: Fleet, capacity: int, version: str, **properties: Any) -> None:
    """Publish `version` and PUT the model onto it; in Manual mode no instance moves by itself."""
    fleet.publish(version)
    fleet.container.scalesets.put_set(SUB, GROUP, NAME, manual_body(capacity, version, **properties))
    fleet.run()


def domain_of(fleet: Fleet) -> dict[int, int]:
    return {i.instance_id: i.update_domain for i in fleet.instances()}


def images(fleet: Fleet) -> dict[int, str]:
    return {i.instance_id: i.image_version for i in fleet.instances()}


# -- the pure parts ------------------------------------------------------------------------------------


def test_walk_policy_makes_a_batch_of_each_update_domain_and_stops_on_one_failure() -> None:
    policy = walk_policy(
        {
            "maxBatchInstancePercent": 20,
            "maxUnhealthyInstancePercent": 20,
            "maxUnhealthyUpgradedInstancePercent": 20,
            "prioritizeUnhealthyInstances": True,
            "enableCrossZoneUpgrade": True,
            "pauseTimeBetweenBatches": "PT30S",
            "rollbackFailedInstancesOnPolicyBreach": True,
        }
    )
    assert policy == {
        "maxBatchInstancePercent": 100,
        "maxUnhealthyInstancePercent": 100,
        "maxUnhealthyUpgradedInstancePercent": 0,
        "prioritizeUnhealthyInstances": False,
        "enableCrossZoneUpgrade": False,
        "maxSurge": False,
        "updateDomainFirst": True,
        "pauseTimeBetweenBatches": "PT30S",
        "rollbackFailedInstancesOnPolicyBreach": True,
    }


@pytest.mark.parametrize("raw", ["5", "-1", "one", "", "1.0"])
def test_update_domains_are_numbered_0_to_4(raw: str) -> None:
    with pytest.raises(ArmError) as refused:
        parse_update_domain(raw)
    assert (refused.value.status, refused.value.code, refused.value.target) == (
        400,
        "InvalidParameter",
        "updateDomain",
    )
    assert parse_update_domain("4") == 4


def test_update_domains_list_holders_in_order() -> None:
    def instance(instance_id: int, update_domain: int, model_version: int, zone: str | None) -> Instance:
        return Instance(
            instance_id=instance_id, update_domain=update_domain, model_version=model_version, zone=zone
        )

    found = update_domains(
        [instance(3, 1, 2, "2"), instance(0, 0, 1, "1"), instance(2, 0, 2, "2"), instance(1, 1, 1, "1")], 2
    )
    assert [d.view() for d in found] == [
        {
            "updateDomain": 0,
            "instanceIds": ["0", "2"],
            "zones": ["1", "2"],
            "latestModelAppliedInstanceIds": ["2"],
        },
        {
            "updateDomain": 1,
            "instanceIds": ["1", "3"],
            "zones": ["1", "2"],
            "latestModelAppliedInstanceIds": ["3"],
        },
    ]


# -- walks ---------------------------------------------------------------------------------------------


def test_a_walk_goes_one_update_domain_after_the_other(fleet: Fleet) -> None:
    """M-5, M-17: 7 instances over 5 update domains (0 and 5 share domain 0, 1 and 6 domain 1) → five
    batches, one whole domain each, in domain order; every instance ends on the new model."""
    fleet.create(manual_body(7))
    new_model(fleet, 7, "1.1.0")
    assert set(images(fleet).values()) == {"1.0.0"}  # Manual: nothing moved by itself

    operation = walks(fleet).start_walk(SUB, GROUP, NAME)
    fleet.run()

    domain = domain_of(fleet)
    assert fleet.batches() == [[0, 5], [1, 6], [2], [3], [4]]
    assert [domain[batch[0]] for batch in fleet.batches()] == [0, 1, 2, 3, 4]
    assert set(images(fleet).values()) == {"1.1.0"}
    latest = fleet.latest()["properties"]
    assert latest["runningStatus"]["code"] == "Completed"
    assert latest["progress"]["successfulInstanceCount"] == 7
    assert latest["policy"]["maxBatchInstancePercent"] == 100
    assert fleet.operation(operation.id).status == "Succeeded"
    shown = walks(fleet).run_batches(SUB, GROUP, NAME)
    assert (shown["kind"], shown["status"], shown["batchNumber"]) == ("walk", "Completed", 5)
    assert [(b["batch"], b["updateDomain"]) for b in shown["value"]] == [
        (1, 0),
        (2, 1),
        (3, 2),
        (4, 3),
        (5, 4),
    ]
    assert shown["value"][0]["instances"] == [
        {"instanceId": "0", "state": "succeeded"},
        {"instanceId": "5", "state": "succeeded"},
    ]
    assert shown["progress"]["successfulInstanceCount"] == 7
    assert shown["operationId"] == operation.id
    # A newer run is what `latest` shows now; the walk stays reachable through its operation.
    fleet.container.upgrades.start_extension_upgrade(SUB, GROUP, NAME)
    assert walks(fleet).run_batches(SUB, GROUP, NAME)["kind"] == "extension"
    assert walks(fleet).run_batches(SUB, GROUP, NAME, operation.id)["kind"] == "walk"
    with pytest.raises(ArmError) as unknown:
        walks(fleet).run_batches(SUB, GROUP, NAME, "no-such-operation")
    assert unknown.value.status == 404


def test_a_domain_must_be_healthy_before_the_next_starts(fleet: Fleet) -> None:
    fleet.create(manual_body(4))
    new_model(fleet, 4, "1.1.0")
    walks(fleet).start_walk(SUB, GROUP, NAME)

    fleet.tick()
    fleet.tick()
    assert fleet.batches() == [[0]]
    fleet.clock.advance(BOOT_SECONDS - 1)  # domain 0's instance is still booting
    for _ in range(3):
        fleet.tick()
    assert fleet.batches() == [[0]]
    fleet.run(until=lambda: len(fleet.batches()) == 2)
    assert fleet.batches() == [[0], [1]]


def test_a_walk_stops_at_the_first_domain_that_is_not_healthy(fleet: Fleet) -> None:
    """The first domain never becomes healthy on the new image → the walk ends Faulted with Azure's code
    after that domain (maxUnhealthyUpgradedInstancePercent 0); the other domains are never touched."""
    fleet.create(manual_body(7))
    fleet.sim.add_fault(Fault("hang", image="2.0.0"))
    new_model(fleet, 7, "2.0.0")

    operation = walks(fleet).start_walk(SUB, GROUP, NAME)
    fleet.run()

    latest = fleet.latest()["properties"]
    assert latest["runningStatus"]["code"] == "Faulted"
    assert latest["error"]["code"] == UNHEALTHY_UPGRADED
    assert fleet.batches() == [[0, 5]]
    assert {m.state for m in fleet.members()} == {"failed"}
    assert images(fleet) == {
        0: "2.0.0",
        5: "2.0.0",
        1: "1.0.0",
        2: "1.0.0",
        3: "1.0.0",
        4: "1.0.0",
        6: "1.0.0",
    }
    assert fleet.operation(operation.id).status == "Failed"


def test_one_failure_in_a_domain_of_two_stops_the_walk(fleet: Fleet) -> None:
    """One of two is 50 % — any failure at all breaches the walk's 0 %, even where 20 % would allow it."""
    fleet.create(manual_body(7))
    uid = fleet.container.scalesets.get_set(SUB, GROUP, NAME).uid
    fleet.sim.add_fault(Fault("hang", image="1.1.0", keys=[f"{uid}/5"]))  # engine/executor.py instance_key
    new_model(fleet, 7, "1.1.0")

    walks(fleet).start_walk(SUB, GROUP, NAME)
    fleet.run()

    assert fleet.latest()["properties"]["runningStatus"]["code"] == "Faulted"
    assert fleet.batches() == [[0, 5]]
    assert {m.instance_id: m.state for m in fleet.members()} == {0: "succeeded", 5: "failed"}


def test_a_walk_with_rollback_on_breach_restores_the_failed_domain(fleet: Fleet) -> None:
    fleet.create(manual_body(4))
    fleet.sim.add_fault(Fault("hang", image="2.0.0"))
    policy = {"mode": "Manual", "rollingUpgradePolicy": {"rollbackFailedInstancesOnPolicyBreach": True}}
    new_model(fleet, 4, "2.0.0", upgradePolicy=policy)

    walks(fleet).start_walk(SUB, GROUP, NAME)
    fleet.run()

    assert fleet.latest()["properties"]["runningStatus"]["code"] == "Faulted"
    assert {m.state for m in fleet.members()} == {"rolled_back"}
    assert set(images(fleet).values()) == {"1.0.0"}
    shown = walks(fleet).run_batches(SUB, GROUP, NAME)
    assert shown["value"][0]["instances"] == [
        {"instanceId": "0", "state": "rolled_back", "error": "not healthy within the health wait of batch 1"}
    ]
    assert shown["rollbackInfo"] == {
        "successfullyRolledbackInstanceCount": 1,
        "failedRolledbackInstanceCount": 0,
    }
    assert shown["error"]["code"] == UNHEALTHY_UPGRADED


def test_a_zoned_walk_never_puts_two_zones_or_two_domains_in_one_batch(fleet: Fleet) -> None:
    """M-21: 4 instances over zones 1 and 2 hold update domains 0 and 1 in each zone: four batches."""
    fleet.create(manual_body(4, zones=["1", "2"]))
    new_model(fleet, 4, "1.1.0", zones=["1", "2"])

    walks(fleet).start_walk(SUB, GROUP, NAME)
    fleet.run()

    by_id = {i.instance_id: i for i in fleet.instances()}
    places = [{(by_id[i].zone, by_id[i].update_domain) for i in batch} for batch in fleet.batches()]
    assert all(len(place) == 1 for place in places), places
    assert len(places) == 4
    # Domain by domain across zones (updateDomainFirst): UD 0 in zone 1, then in zone 2, then UD 1.
    assert [next(iter(place)) for place in places] == [("1", 0), ("2", 0), ("1", 1), ("2", 1)], places
    assert set(images(fleet).values()) == {"1.1.0"}


def test_a_walk_works_in_rolling_mode_too(fleet: Fleet) -> None:
    """A walk ignores the set's batch size: a Rolling set at 20 % still walks whole domains."""
    rolling = {"mode": "Rolling", "rollingUpgradePolicy": {"maxBatchInstancePercent": 20}}
    fleet.create(manual_body(7, upgradePolicy=rolling))
    fleet.publish("1.1.0")
    # In Rolling mode the model change starts a run of its own; cancelled before its first batch, it
    # leaves every instance on the old model, and the walk takes over.
    fleet.container.scalesets.put_set(SUB, GROUP, NAME, manual_body(7, "1.1.0", upgradePolicy=rolling))
    with pytest.raises(ArmError) as busy:
        walks(fleet).start_walk(SUB, GROUP, NAME)
    assert (busy.value.status, busy.value.code) == (409, "OperationNotAllowed")
    fleet.container.upgrades.cancel(SUB, GROUP, NAME)
    fleet.run()
    assert set(images(fleet).values()) == {"1.0.0"}

    walks(fleet).start_walk(SUB, GROUP, NAME)
    fleet.run()

    assert fleet.batches() == [[0, 5], [1, 6], [2], [3], [4]]
    assert set(images(fleet).values()) == {"1.1.0"}


def test_a_walk_while_another_run_is_active_is_refused(fleet: Fleet) -> None:
    fleet.create(manual_body(4))
    new_model(fleet, 4, "1.1.0")
    walks(fleet).start_walk(SUB, GROUP, NAME)
    with pytest.raises(ArmError) as refused:
        walks(fleet).start_walk(SUB, GROUP, NAME)
    assert (refused.value.status, refused.value.code) == (409, "OperationNotAllowed")
    with pytest.raises(ArmError) as os_upgrade:
        fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    assert (os_upgrade.value.status, os_upgrade.value.code) == (409, "OperationNotAllowed")


def test_a_walk_can_be_cancelled_after_its_current_domain(fleet: Fleet) -> None:
    fleet.create(manual_body(4))
    new_model(fleet, 4, "1.1.0")
    walks(fleet).start_walk(SUB, GROUP, NAME)
    fleet.run(until=lambda: len(fleet.batches()) == 1)
    fleet.container.upgrades.cancel(SUB, GROUP, NAME)
    fleet.run()

    assert fleet.latest()["properties"]["runningStatus"]["code"] == "Cancelled"
    assert fleet.batches() == [[0]]
    assert images(fleet) == {0: "1.1.0", 1: "1.0.0", 2: "1.0.0", 3: "1.0.0"}


# -- one update domain by hand ---------------------------------------------------------------------------


def test_upgrading_one_update_domain_touches_only_its_instances(fleet: Fleet) -> None:
    """M-5: update domain 1 of 7 instances holds 1 and 6; only they move to the new model."""
    fleet.create(manual_body(7))
    new_model(fleet, 7, "1.1.0")

    operation = walks(fleet).upgrade_update_domain(SUB, GROUP, NAME, "1")
    fleet.run()

    assert fleet.operation(operation.id).status == "Succeeded"
    assert {i for i, version in images(fleet).items() if version == "1.1.0"} == {1, 6}
    domains = {d.number: d for d in walks(fleet).list_update_domains(SUB, GROUP, NAME)}
    assert domains[1].latest == (1, 6)
    assert domains[0].latest == ()


def test_an_empty_update_domain_is_not_found(fleet: Fleet) -> None:
    fleet.create(manual_body(3))  # domains 0, 1 and 2
    with pytest.raises(ArmError) as missing:
        walks(fleet).upgrade_update_domain(SUB, GROUP, NAME, "4")
    assert (missing.value.status, missing.value.code) == (404, "UpdateDomainNotFound")
    assert "0, 1, 2" in missing.value.message
    with pytest.raises(ArmError) as invalid:
        walks(fleet).upgrade_update_domain(SUB, GROUP, NAME, "9")
    assert invalid.value.status == 400


# -- the CLI's verdict and lines (cli/progress.py) ---------------------------------------------------------


def run_json(code: str, *states: str, error: str | None = None) -> dict[str, Any]:
    """A run as `rollingUpgrades/latest/batches` shows it: one batch in update domain 0."""
    view: dict[str, Any] = {
        "kind": "walk",
        "status": code,
        "progress": {
            "successfulInstanceCount": states.count("succeeded"),
            "failedInstanceCount": len(states) - states.count("succeeded") - states.count("upgrading"),
            "inProgressInstanceCount": states.count("upgrading"),
            "pendingInstanceCount": 0,
        },
        "rollbackInfo": {
            "successfullyRolledbackInstanceCount": states.count("rolled_back"),
            "failedRolledbackInstanceCount": states.count("rollback_failed"),
        },
        "value": [
            {
                "batch": 1,
                "updateDomain": 0,
                "zone": None,
                "instances": [{"instanceId": str(i), "state": s} for i, s in enumerate(states)],
            }
        ],
    }
    if error:
        view["error"] = {"code": error, "message": "1 of 1 upgraded instances are unhealthy"}
    return view


@pytest.mark.parametrize(
    ("code", "states", "exit_code", "line"),
    [
        ("Completed", ("succeeded",), ExitCode.COMPLETED, "Completed: 1 succeeded, 0 failed"),
        ("Cancelled", ("succeeded",), ExitCode.CANCELLED, "Cancelled: 1 succeeded, 0 failed"),
        ("Faulted", ("failed",), ExitCode.FAULTED, "Faulted: 0 succeeded, 1 failed"),
        ("Faulted", ("rolled_back",), ExitCode.ROLLED_BACK, "RolledBack: 0 succeeded, 1 failed"),
        ("Faulted", ("rolled_back", "rollback_failed"), ExitCode.FAULTED, "Faulted: 0 succeeded, 2 failed"),
    ],
)
def test_the_verdict_of_a_run_is_its_exit_code(
    code: str, states: tuple[str, ...], exit_code: ExitCode, line: str
) -> None:
    error = UNHEALTHY_UPGRADED if code == "Faulted" else None
    verdict = run_verdict(RunSnapshot.of(run_json(code, *states, error=error)))
    assert verdict.code is exit_code
    assert verdict.line.startswith(line), verdict.line
    assert (UNHEALTHY_UPGRADED in verdict.line) == (error is not None)


def test_exit_codes_are_distinct_and_keep_1_and_2() -> None:
    assert len({int(c) for c in ExitCode}) == len(ExitCode)
    assert (ExitCode.API_ERROR, ExitCode.USAGE) == (1, 2)


def test_a_progress_line_names_the_current_batch_and_its_domain() -> None:
    run = run_json("RollingForward", "succeeded", "succeeded")
    run["value"].append(
        {
            "batch": 2,
            "updateDomain": 1,
            "zone": "2",
            "instances": [{"instanceId": "1", "state": "upgrading"}],
        }
    )
    run["progress"].update(inProgressInstanceCount=1, pendingInstanceCount=1)
    assert run_line(RunSnapshot.of(run)) == (
        "RollingForward: batch 2 (update domain 1, zone 2): 1=upgrading; "
        "2 succeeded, 0 failed, 1 in progress, 1 pending"
    )
    assert run_line(RunSnapshot.of({**run_json("RollingForward"), "value": []})).startswith(
        "RollingForward: no batch started yet"
    )


def test_the_live_display_draws_every_batch() -> None:
    from io import StringIO

    from rich.console import Console

    snapshot = RunSnapshot.of(run_json("RollingForward", "succeeded", "upgrading"))
    out = StringIO()
    Console(file=out, width=120).print(run_renderable("walk of web", snapshot))
    drawn = out.getvalue()
    assert "walk of web: RollingForward" in drawn
    assert "0=succeeded 1=upgrading" in drawn
    assert "1 of 2 instances done" in drawn


def test_the_operation_id_is_the_last_segment_of_its_status_url() -> None:
    url = (
        "http://h/subscriptions/s/providers/Microsoft.Compute/locations/eastus/operations/abc-1?api-version=1"
    )
    assert operation_id(url) == "abc-1"


def test_a_manual_upgrade_verdict_follows_its_operation() -> None:
    vms = [
        {"instanceId": "0", "properties": {"provisioningState": "Succeeded"}},
        {"instanceId": "4", "properties": {"provisioningState": "Updating"}},
    ]
    running = InstancesSnapshot.of({"status": "InProgress"}, vms, {"4"})
    assert instances_line(running) == "InProgress: 4=Updating"
    failed = InstancesSnapshot.of({"status": "Failed", "error": {"code": "X", "message": "y"}}, vms, None)
    assert instances_verdict(failed).code is ExitCode.FAULTED
    assert (
        instances_verdict(InstancesSnapshot.of({"status": "Succeeded"}, vms, None)).code is ExitCode.COMPLETED
    )
    assert (
        instances_verdict(InstancesSnapshot.of({"status": "Canceled"}, vms, None)).code is ExitCode.CANCELLED
    )
