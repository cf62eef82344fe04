"""Tasks that wait for their guest (`settling`): what the executor records for them, and how they end.

The executor writes these rows with the driver's own executemany (`store/db.py: execute_many`): these
tests read them back through the ORM, as the rest of the engine does.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from scaleset.store.tables import Instance, Task
from tests.fakes import FakeClock, FakeProvider
from tests.support import scale_set_body
from tests.unit.test_engine import GROUP, NAME, SUB, Env, drain, make_container, publish

BUDGET = timedelta(minutes=90)  # Azure's default extensionsTimeBudget


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    clock = FakeClock()
    fake = FakeProvider()
    container = make_container(tmp_path / "data", fake, clock)
    try:
        publish(container, tmp_path, "1.0.0")
        container.scalesets.put_group(SUB, GROUP, {"location": "eastus"})
        yield Env(container, fake, clock, tmp_path)
    finally:
        container.close()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


def create_held(env: Env, capacity: int, held: list[int]) -> None:
    """A set with custom data whose instances in `held` report their script still running."""
    env.service.put_set(SUB, GROUP, NAME, scale_set_body(capacity, custom_data="echo hi"))
    for instance_id in held:
        env.fake.hold_guest(env.key(instance_id))
    drain(env.container)


def task_of(env: Env, instance_id: int, action: str) -> Task:
    with env.container.db.read() as session:
        instance = session.scalars(select(Instance).where(Instance.instance_id == instance_id)).one()
        task = session.scalars(
            select(Task)
            .where(Task.instance_row_id == instance.id, Task.action == action)
            .order_by(Task.id.desc())
        ).first()
        assert task is not None
        return task


def instance_row(env: Env, instance_id: int) -> Instance:
    with env.container.db.read() as session:
        return session.scalars(select(Instance).where(Instance.instance_id == instance_id)).one()


def test_an_acted_task_waits_with_its_expectation_and_deadline(env: Env) -> None:
    created_at = env.clock.now()
    create_held(env, 2, held=[0])

    assert env.container.executor.settle() == 1  # the guest that is not held reports at once
    task = task_of(env, 0, "create")
    assert task.status == "settling" and task.error == "" and task.attempts == 1
    assert task.expect == {"incarnation": 1, "extensions": [], "customData": True}
    assert task.deadline is not None and task.deadline.replace(tzinfo=UTC) == created_at + BUDGET
    assert task.updated_at.replace(tzinfo=UTC) == created_at
    assert instance_row(env, 0).power_state == "running"

    env.clock.advance(1)
    assert env.container.executor.settle() == 1
    env.fake.release_guest(env.key(0))
    assert env.container.executor.settle() == 0
    task = task_of(env, 0, "create")
    assert (task.status, task.error) == ("done", "")
    assert task.updated_at.replace(tzinfo=UTC) == created_at + timedelta(seconds=1)
    row = instance_row(env, 0)
    assert (row.provisioning_state, row.power_state, row.status_message) == ("succeeded", "running", "")


def test_a_guest_silent_past_the_budget_fails_its_task(env: Env) -> None:
    create_held(env, 1, held=[0])

    env.clock.advance(BUDGET.total_seconds() - 1)
    assert env.container.executor.settle() == 1
    env.clock.advance(1)
    assert env.container.executor.settle() == 0
    task = task_of(env, 0, "create")
    assert task.status == "failed" and "extensions time budget" in task.error
    assert instance_row(env, 0).provisioning_state == "failed"


def test_a_new_action_supersedes_the_wait_for_the_guest(env: Env) -> None:
    create_held(env, 1, held=[0])
    env.container.executor.settle()

    env.service.set_action(SUB, GROUP, NAME, "restart", {"instanceIds": ["0"]})
    drain(env.container)

    created = task_of(env, 0, "create")
    assert created.status == "done"
    assert created.error == "superseded by restart before the guest reported"
    restarted = task_of(env, 0, "restart")
    assert restarted.status == "done" and restarted.attempts == 1


def test_a_claim_takes_the_oldest_pending_tasks_page_by_page_skipping_busy_instances(env: Env) -> None:
    """The claim reads the oldest pending tasks a page (`claim_limit`) at a time; a task whose instance
    already has one running is skipped, and the next page is read until the claim is full."""
    env.service.put_set(SUB, GROUP, NAME, scale_set_body(7))
    with env.container.db.write() as session:
        pending = list(session.scalars(select(Task).where(Task.status == "pending").order_by(Task.id)))
        assert len(pending) == 7
        ids = [task.id for task in pending]
        pending[0].status = "running"
        # Another operation's task already runs on the instance of the third: that one must wait.
        busy = pending[2]
        session.add(
            Task(
                operation_id=busy.operation_id,
                instance_row_id=busy.instance_row_id,
                action="restart",
                status="running",
                error="",
                attempts=1,
                created_at=busy.created_at,
                updated_at=busy.updated_at,
            )
        )
    executor = env.container.executor
    executor._claim_limit = 2

    assert [task.task_id for task in executor._claim()] == [ids[1], ids[3]]
    assert [task.task_id for task in executor._claim()] == [ids[4], ids[5]]
    assert [task.task_id for task in executor._claim()] == [ids[6]]
    assert executor._claim() == []
