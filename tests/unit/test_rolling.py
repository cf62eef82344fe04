"""Rolling upgrades end to end inside one process: services, executor and the rolling loop on a real
database, instances on the simulated fleet, time virtual (a 5-minute health wait takes milliseconds).

The engine is driven by hand (`Fleet.run`): the container is never started, so every test decides when a
pass runs. M-numbers refer to spec/mission.md; the batch arithmetic reuses domain/batches.py's examples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from scaleset.domain.errors import ArmError
from scaleset.domain.rolling import UNHEALTHY_BEFORE, UNHEALTHY_UPGRADED
from scaleset.observability.logs import ContextFilter
from scaleset.providers.sim import Fault
from scaleset.store.tables import RollingUpgrade, Task, UpgradeInstance
from tests.fleet import (
    BOOT_SECONDS,
    GROUP,
    NAME,
    SUB,
    Fleet,
    fleet_on_copy,
    make_container,
    prepare_data,
    rolling_body,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_data(tmp_path_factory.mktemp("prepared"))


@pytest.fixture
def fleet(tmp_path: Path, prepared: Path) -> Iterator[Fleet]:
    yield from fleet_on_copy(prepared, tmp_path)


def summary(latest: dict[str, Any]) -> tuple[str, dict[str, int]]:
    return latest["properties"]["runningStatus"]["code"], latest["properties"]["progress"]


# -- a healthy upgrade -----------------------------------------------------------------------------------


def test_os_upgrade_runs_batches_of_two_inside_update_domains(fleet: Fleet) -> None:
    """M-4, M-10: 10 instances over 5 update domains at 20 % → five batches of two, one UD each."""
    fleet.create(rolling_body(10))
    fleet.publish("1.1.0")

    operation = fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run()

    by_id = {i.instance_id: i for i in fleet.instances()}
    batches = fleet.batches()
    assert [len(b) for b in batches] == [2, 2, 2, 2, 2]
    assert all(len({by_id[i].update_domain for i in batch}) == 1 for batch in batches)
    assert [by_id[b[0]].update_domain for b in batches] == [0, 1, 2, 3, 4]
    assert {(i.image_version, i.os_disk_generation) for i in by_id.values()} == {("1.1.0", 2)}
    assert summary(fleet.latest()) == (
        "Completed",
        {
            "successfulInstanceCount": 10,
            "failedInstanceCount": 0,
            "inProgressInstanceCount": 0,
            "pendingInstanceCount": 0,
        },
    )
    assert fleet.operation(operation.id).status == "Succeeded"


def test_a_batch_waits_for_health_before_the_next_starts(fleet: Fleet) -> None:
    fleet.create(rolling_body(10))
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)

    fleet.tick()  # batch 1 starts and its reimages run
    fleet.tick()
    assert fleet.batches() == [[0, 5]]
    fleet.clock.advance(BOOT_SECONDS - 1)  # not up yet: the batch must not be judged
    for _ in range(3):
        fleet.tick()
    assert len(fleet.batches()) == 1
    fleet.run(until=lambda: len(fleet.batches()) == 2)
    assert fleet.batches()[1] == [1, 6]


def test_never_healthy_image_faults_after_the_first_batch_and_rolls_it_back(fleet: Fleet) -> None:
    """M-10: the first batch never becomes healthy → Faulted with Azure's code, the batch rolled back to
    its previous OS disk, the rest untouched."""
    fleet.create(rolling_body(10, rollbackFailedInstancesOnPolicyBreach=True))
    fleet.sim.add_fault(Fault("hang", image="2.0.0"))
    fleet.publish("2.0.0")

    operation = fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run()

    latest = fleet.latest()
    assert latest["properties"]["runningStatus"]["code"] == "Faulted"
    assert latest["properties"]["error"]["code"] == UNHEALTHY_UPGRADED
    assert fleet.batches() == [[0, 5]]
    assert {m.state for m in fleet.members()} == {"rolled_back"}
    instances = {i.instance_id: i for i in fleet.instances()}
    assert {(i.image_version, i.os_disk_generation, i.model_version) for i in instances.values()} == {
        ("1.0.0", 1, 1)
    }
    assert fleet.operation(operation.id).status == "Failed"
    assert fleet.operation(operation.id).error["code"] == UNHEALTHY_UPGRADED  # type: ignore[index]


def test_without_rollback_the_failed_batch_stays_on_the_new_image(fleet: Fleet) -> None:
    """A manually started OS upgrade has no automatic rollback (Azure's rule)."""
    fleet.create(rolling_body(10))
    fleet.sim.add_fault(Fault("hang", image="2.0.0"))
    fleet.publish("2.0.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run()

    instances = {i.instance_id: i for i in fleet.instances()}
    assert {instances[0].image_version, instances[5].image_version} == {"2.0.0"}
    assert {i.image_version for n, i in instances.items() if n not in (0, 5)} == {"1.0.0"}
    assert {m.state for m in fleet.members()} == {"failed"}
    assert summary(fleet.latest())[1]["failedInstanceCount"] == 2


def test_health_wait_is_five_minutes_of_virtual_time(fleet: Fleet) -> None:
    fleet.create(rolling_body(10))
    fleet.sim.add_fault(Fault("hang", image="2.0.0"))
    fleet.publish("2.0.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    started = fleet.clock.now()
    wall = time.monotonic()
    fleet.run()

    with fleet.container.db.read() as session:
        run = session.scalars(select(RollingUpgrade)).one()
        assert run.end_time is not None
        waited = run.end_time.replace(tzinfo=started.tzinfo) - started
    assert 300 <= waited.total_seconds() <= 320
    assert time.monotonic() - wall < 10


def test_the_gate_stops_a_run_before_the_first_batch_when_too_many_are_unhealthy(fleet: Fleet) -> None:
    """3 of 10 stopped is more than 20 % → MaxUnhealthyInstancePercentExceededBeforeRollingUpgrade;
    nothing was touched."""
    fleet.create(rolling_body(10))
    fleet.container.scalesets.set_action(SUB, GROUP, NAME, "stop", {"instanceIds": ["1", "2", "3"]})
    fleet.run()
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run()

    latest = fleet.latest()
    assert latest["properties"]["runningStatus"]["code"] == "Faulted"
    assert latest["properties"]["error"]["code"] == UNHEALTHY_BEFORE
    assert fleet.members() == []
    assert {i.image_version for i in fleet.instances()} == {"1.0.0"}


def test_two_unhealthy_of_ten_shrink_the_batch_to_one(fleet: Fleet) -> None:
    """fit_batch: 2 unhealthy elsewhere in 10 at 20 % leaves no budget, and a batch has at least one."""
    fleet.create(rolling_body(10))
    fleet.container.scalesets.set_action(SUB, GROUP, NAME, "stop", {"instanceIds": ["8", "9"]})
    fleet.run()
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run(until=lambda: len(fleet.batches()) == 1)
    assert fleet.batches() == [[0]]


def test_prioritize_unhealthy_takes_the_stopped_instance_first(fleet: Fleet) -> None:
    fleet.create(rolling_body(10, prioritizeUnhealthyInstances=True))
    fleet.container.scalesets.set_action(SUB, GROUP, NAME, "stop", {"instanceIds": ["7"]})
    fleet.run()
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run(until=lambda: len(fleet.batches()) == 1)
    assert fleet.batches() == [[7]]


def test_protected_and_current_instances_are_skipped(fleet: Fleet) -> None:
    fleet.create(rolling_body(5))
    fleet.container.scalesets.update_vm(
        SUB, GROUP, NAME, "2", {"properties": {"protectionPolicy": {"protectFromScaleSetActions": True}}}
    )
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run()

    assert sorted(i for b in fleet.batches() for i in b) == [0, 1, 3, 4]
    assert {i.instance_id: i.image_version for i in fleet.instances()}[2] == "1.0.0"
    # A second run finds everyone current (the protected one left alone): nothing to do.
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run()
    assert summary(fleet.latest()) == (
        "Completed",
        {
            "successfulInstanceCount": 0,
            "failedInstanceCount": 0,
            "inProgressInstanceCount": 0,
            "pendingInstanceCount": 0,
        },
    )


def test_pause_between_batches_is_honoured(fleet: Fleet) -> None:
    fleet.create(rolling_body(10, pauseTimeBetweenBatches="PT10M"))
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run(until=lambda: len(fleet.batches()) == 2)
    with fleet.container.db.read() as session:
        first = max(
            m.updated_at for m in session.scalars(select(UpgradeInstance).where(UpgradeInstance.batch == 1))
        )
        second = min(
            m.updated_at for m in session.scalars(select(UpgradeInstance).where(UpgradeInstance.batch == 2))
        )
    assert (second - first).total_seconds() >= 600


# -- the API's rules ------------------------------------------------------------------------------------


def test_one_run_at_a_time_and_cancel_needs_a_run(fleet: Fleet) -> None:
    fleet.create(rolling_body(4))
    with pytest.raises(ArmError) as refused:
        fleet.container.upgrades.cancel(SUB, GROUP, NAME)
    assert (refused.value.status, refused.value.code) == (409, "OperationNotAllowed")
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    with pytest.raises(ArmError) as again:
        fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    assert (again.value.status, again.value.code) == (409, "OperationNotAllowed")


def test_cancel_stops_after_the_current_batch(fleet: Fleet) -> None:
    fleet.create(rolling_body(10))
    fleet.publish("1.1.0")
    start = fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run(until=lambda: len(fleet.batches()) == 1)
    cancel = fleet.container.upgrades.cancel(SUB, GROUP, NAME)
    fleet.run()

    latest = fleet.latest()
    assert latest["properties"]["runningStatus"]["code"] == "Cancelled"
    assert latest["properties"]["runningStatus"]["lastAction"] == "Cancel"
    assert fleet.batches() == [[0, 5]]
    assert sorted(i.instance_id for i in fleet.instances() if i.image_version == "1.1.0") == [0, 5]
    assert fleet.operation(cancel.id).status == "Succeeded"
    assert fleet.operation(start.id).status == "Canceled"


# -- what a model change does (M-3, M-4) -----------------------------------------------------------------


def test_a_model_change_in_rolling_mode_starts_a_rolling_upgrade(fleet: Fleet) -> None:
    fleet.create(rolling_body(5, version="1.0.0"))
    fleet.publish("1.1.0")
    fleet.container.scalesets.put_set(SUB, GROUP, NAME, rolling_body(5, version="1.1.0"))
    fleet.run()
    assert {i.image_version for i in fleet.instances()} == {"1.1.0"}
    assert [len(b) for b in fleet.batches()] == [1, 1, 1, 1, 1]
    assert summary(fleet.latest())[0] == "Completed"


def test_automatic_mode_applies_a_model_change_to_every_instance_at_once(fleet: Fleet) -> None:
    body = rolling_body(4, version="1.0.0")
    body["properties"]["upgradePolicy"] = {"mode": "Automatic"}
    fleet.create(body)
    fleet.publish("1.1.0")
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["version"] = "1.1.0"
    change = fleet.container.scalesets.put_set(SUB, GROUP, NAME, body)
    with fleet.container.db.read() as session:
        actions = [
            t.action for t in session.scalars(select(Task).where(Task.operation_id == change.operation.id))
        ]
    assert actions == ["reimage"] * 4
    fleet.run()
    assert {i.image_version for i in fleet.instances()} == {"1.1.0"}


def test_manual_mode_waits_for_manualupgrade_and_an_extension_change_does_not_reimage(fleet: Fleet) -> None:
    body = rolling_body(3, version="1.0.0")
    body["properties"]["upgradePolicy"] = {"mode": "Manual"}
    body["properties"]["virtualMachineProfile"].pop("networkProfile")
    fleet.create(body)
    body["properties"]["virtualMachineProfile"]["extensionProfile"] = {
        "extensions": [
            {
                "name": "hello",
                "properties": {
                    "publisher": "Microsoft.Azure.Extensions",
                    "type": "CustomScript",
                    "typeHandlerVersion": "2.1",
                    "settings": {"commandToExecute": "echo hi"},
                },
            }
        ]
    }
    fleet.container.scalesets.put_set(SUB, GROUP, NAME, body)
    fleet.run()
    assert {i.model_version for i in fleet.instances()} == {1}  # Manual: nothing happens by itself

    operation = fleet.container.scalesets.manual_upgrade(SUB, GROUP, NAME, {"instanceIds": ["*"]})
    with fleet.container.db.read() as session:
        actions = [t.action for t in session.scalars(select(Task).where(Task.operation_id == operation.id))]
    assert actions == ["extensions"] * 3
    fleet.run()
    assert {(i.model_version, i.os_disk_generation) for i in fleet.instances()} == {(2, 1)}
    assert fleet.operation(operation.id).status == "Succeeded"

    # Tags are not part of the model: no new model version, nothing for the instances to do.
    body["tags"] = {"team": "web"}
    fleet.container.scalesets.put_set(SUB, GROUP, NAME, body)
    assert fleet.container.scalesets.get_set(SUB, GROUP, NAME).model_version == 2


# -- maxSurge ------------------------------------------------------------------------------------------


def test_max_surge_replaces_instances_and_never_drops_below_capacity(fleet: Fleet) -> None:
    fleet.create(rolling_body(5, maxSurge=True))
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    lowest = 5

    def healthy_live() -> bool:
        nonlocal lowest
        live = [i for i in fleet.instances() if i.provisioning_state != "deleting"]
        lowest = min(lowest, len(live))
        return False

    for _ in range(400):
        healthy_live()
        if not fleet.tick() and fleet.settled():
            break
        fleet.clock.advance(5)
    instances = fleet.instances()
    assert len(instances) == 5
    assert {i.image_version for i in instances} == {"1.1.0"}
    assert min(i.instance_id for i in instances) >= 5  # every old instance was replaced by a new one
    assert lowest >= 5
    assert summary(fleet.latest())[0] == "Completed"


def test_max_surge_falls_back_to_in_place_when_the_quota_is_full(fleet: Fleet) -> None:
    body = rolling_body(5, maxSurge=True)
    body["tags"] = {"scaleset:instanceQuota": "5"}
    fleet.create(body)
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run()
    instances = fleet.instances()
    assert sorted(i.instance_id for i in instances) == [0, 1, 2, 3, 4]
    assert {(i.image_version, i.os_disk_generation) for i in instances} == {("1.1.0", 2)}


# -- durable (M-26) ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_after_passes", [1, 2, 5, 9])
def test_a_restarted_control_plane_resumes_the_same_run(
    fleet: Fleet, tmp_path: Path, stop_after_passes: int
) -> None:
    """The control plane stops between any two passes (mid-batch, during the health wait, between
    batches); a new one on the same database and fleet resumes the same run: every instance reimaged
    once, the counts right."""
    fleet.create(rolling_body(10))
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    for _ in range(stop_after_passes):
        fleet.tick()
        fleet.clock.advance(5)
    fleet.container.close()

    container = make_container(tmp_path / "data", fleet.sim, fleet.clock)
    container.executor.recover()
    resumed = Fleet(container, fleet.sim, fleet.clock, tmp_path)
    resumed.run()

    assert {(i.image_version, i.os_disk_generation) for i in resumed.instances()} == {("1.1.0", 2)}
    assert sorted(i for b in resumed.batches() for i in b) == list(range(10))
    assert summary(resumed.latest())[1]["successfulInstanceCount"] == 10
    with container.db.read() as session:
        assert session.scalar(select(func.count()).select_from(RollingUpgrade)) == 1
    fleet.container = container  # the fixture closes it


def test_deleting_the_set_mid_run_ends_the_run_and_leaves_nothing(fleet: Fleet) -> None:
    fleet.create(rolling_body(4))
    fleet.publish("1.1.0")
    start = fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run(until=lambda: len(fleet.batches()) == 1)
    fleet.container.scalesets.delete_set(SUB, GROUP, NAME)
    fleet.run()

    assert fleet.operation(start.id).status == "Canceled"
    assert fleet.sim.list_instance_keys() == []
    with fleet.container.db.read() as session:
        assert session.scalar(select(func.count()).select_from(RollingUpgrade)) == 0
        assert session.scalar(select(func.count()).select_from(UpgradeInstance)) == 0


# -- logs --------------------------------------------------------------------------------------------


def test_every_step_line_names_the_upgrade_its_set_and_its_batch(fleet: Fleet) -> None:
    """Issue 6 §5: the loop's lines carry the set, the upgrade and the batch (observability/logs.py)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(level=logging.INFO)
    keep.addFilter(ContextFilter())
    logger = logging.getLogger("scaleset.rolling")
    level = logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        fleet.create(rolling_body(10))
        fleet.publish("1.1.0")
        fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
        fleet.run()
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)

    with fleet.container.db.read() as session:
        run_id = session.scalars(select(RollingUpgrade.id)).one()
    steps = [r for r in records if r.getMessage().startswith("rolling upgrade ")]
    assert steps, "the loop logged no step"
    contexts = [r.context for r in steps]  # type: ignore[attr-defined]
    assert all(c.get("upgrade") == run_id and c.get("set") == NAME for c in contexts), contexts
    assert {c.get("batch") for c in contexts} >= {1, 2, 3, 4, 5}, contexts
