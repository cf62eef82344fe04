"""How a batch is written when it starts (`RollingEngine._start_batch`): the members, the instances' new
model and their tasks, in the step's one transaction, with instances of one batch on different images
(one `change_action` per (model version, image) group)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from scaleset.store.tables import Instance, Task, UpgradeInstance
from tests.fleet import GROUP, NAME, SUB, Fleet, rolling_body
from tests.unit import test_rolling as base

# The same fixtures as test_rolling's: a prepared database, copied for each test, and the fleet on it.
prepared = base.prepared
fleet = base.fleet


@pytest.mark.parametrize("current", [0, 5])
def test_a_batch_mixing_images_gets_one_action_per_group(fleet: Fleet, current: int) -> None:
    """Batch 1 is instances 0 and 5; one of them already runs the new image on the old model version:
    it is a member with nothing to do (succeeded, no task) but moves to the new model; the other is
    reimaged. Both members keep what their instance ran before."""
    fleet.create(rolling_body(10))
    fleet.publish("1.1.0")
    with fleet.container.db.write() as session:
        session.execute(update(Instance).where(Instance.instance_id == current).values(image_version="1.1.0"))
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.container.rolling.step_all()  # the start of batch 1, before any task runs

    other = 5 - current
    with fleet.container.db.read() as session:
        rows = {i.instance_id: i.id for i in session.scalars(select(Instance))}
        members = {
            m.instance_id: (
                m.instance_row_id,
                m.batch,
                m.state,
                m.action,
                m.before_model_version,
                m.before_image_version,
                m.before_os_disk_generation,
                m.surge_row_id,
                m.error,
            )
            for m in session.scalars(select(UpgradeInstance))
        }
        tasks = [
            (t.instance_row_id, t.action, t.status, t.error, t.attempts)
            for t in session.scalars(select(Task).where(Task.status == "pending").order_by(Task.id))
        ]
        instances = {
            i.instance_id: (
                i.model_version,
                i.image_version,
                i.os_disk_generation,
                i.provisioning_state,
                i.power_state,
            )
            for i in session.scalars(select(Instance).where(Instance.instance_id.in_([0, 5])))
        }
    assert members == {
        current: (rows[current], 1, "succeeded", "none", 1, "1.1.0", 1, None, ""),
        other: (rows[other], 1, "upgrading", "reimage", 1, "1.0.0", 1, None, ""),
    }
    assert tasks == [(rows[other], "reimage", "pending", "", 0)]
    assert instances == {
        current: (2, "1.1.0", 1, "succeeded", "running"),
        other: (2, "1.1.0", 2, "updating", "starting"),
    }
    fleet.run()
    assert fleet.latest()["properties"]["runningStatus"]["code"] == "Completed"
    assert {(i.model_version, i.image_version) for i in fleet.instances()} == {(2, "1.1.0")}


def test_batch_tasks_are_written_in_instance_order(fleet: Fleet) -> None:
    fleet.create(rolling_body(10, maxBatchInstancePercent=100))
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.container.rolling.step_all()
    with fleet.container.db.read() as session:
        by_row = {i.id: i.instance_id for i in session.scalars(select(Instance))}
        first_batch = [
            by_row[t.instance_row_id]
            for t in session.scalars(select(Task).where(Task.status == "pending").order_by(Task.id))
        ]
    assert first_batch == [0, 5]
