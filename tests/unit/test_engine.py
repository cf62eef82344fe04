"""The service layer and the executor together, on a real database, with a fake provider and clock.

The engine is driven by hand (`drain`): the container is never started, so every test decides when a
pass runs and nothing happens behind its back. M-numbers refer to spec/mission.md.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from scaleset.bootstrap import Container, Settings, build
from scaleset.catalog.service import ImageCoordinates
from scaleset.domain.errors import ArmError
from scaleset.engine.executor import computer_name
from scaleset.providers.base import InstanceState
from scaleset.services.scalesets import ScaleSetService
from scaleset.store.db import Database
from scaleset.store.tables import Instance, Operation, ResourceGroup, ScaleSet, ScaleSetModel, Task
from tests.fakes import FakeClock, FakeProvider, GatePoint
from tests.support import scale_set_body

SUB = "00000000-0000-0000-0000-000000000000"
GROUP = "rg"
NAME = "web"
MANIFEST = {"manifestVersion": 1, "osType": "Linux", "entrypoint": ["python3", "app.py"], "ports": [8080]}


# -- harness --------------------------------------------------------------------------------------------


def make_container(data_dir: Path, provider: FakeProvider, clock: FakeClock) -> Container:
    settings = Settings(data_dir=data_dir, workers=2, observe_every=3600)
    container = build(settings, clock=clock, provider=provider)
    container.db.migrate()
    return container


def open_tasks(container: Container) -> int:
    with container.db.read() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Task).where(Task.status.in_(("pending", "running")))
            )
            or 0
        )


def drain(container: Container, timeout: float = 5.0) -> None:
    """Run passes until no task is pending or running (the executor records outcomes on its threads)."""
    deadline = time.monotonic() + timeout
    while True:
        container.executor.run_pass()
        if open_tasks(container) == 0:
            return
        assert time.monotonic() < deadline, f"{open_tasks(container)} task(s) still open after {timeout}s"
        time.sleep(0.002)


def count(container: Container, table: Any) -> int:
    with container.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def publish(container: Container, root: Path, version: str) -> None:
    image_dir = root / f"image-{version}"
    image_dir.mkdir()
    (image_dir / "scaleset-image.json").write_text(json.dumps({**MANIFEST, "osVersion": version}))
    (image_dir / "app.py").write_text("print('hello')\n")
    container.catalog.publish(ImageCoordinates("eastus", "scaleset", "webapp", "stable", version), image_dir)


def set_body(capacity: int, version: str = "1.0.0", **properties: Any) -> dict[str, Any]:
    return scale_set_body(capacity, version=version, **properties)


@dataclass
class Env:
    container: Container
    fake: FakeProvider
    clock: FakeClock
    root: Path

    @property
    def service(self) -> ScaleSetService:
        return self.container.scalesets

    def create_set(self, capacity: int, *, settle: bool = True, name: str = NAME) -> Operation:
        operation = self.service.put_set(SUB, GROUP, name, set_body(capacity)).operation
        if settle:
            drain(self.container)
        return operation

    def instances(self, name: str = NAME) -> list[Instance]:
        return self.service.list_instances(SUB, GROUP, name)[1]

    def scale_set(self, name: str = NAME) -> ScaleSet:
        return self.service.get_set(SUB, GROUP, name)

    def key(self, instance_id: int, name: str = NAME) -> str:
        return f"{self.scale_set(name).uid}/{instance_id}"

    def operation(self, operation_id: str) -> Operation:
        with self.container.db.read() as session:
            row = session.get(Operation, operation_id)
            assert row is not None
            return row

    def tasks(self, operation_id: str | None = None) -> list[Task]:
        with self.container.db.read() as session:
            query = select(Task).order_by(Task.id)
            if operation_id is not None:
                query = query.where(Task.operation_id == operation_id)
            return list(session.scalars(query))

    def protect(self, instance_id: int, **flags: bool) -> None:
        self.service.update_vm(
            SUB, GROUP, NAME, str(instance_id), {"properties": {"protectionPolicy": flags}}
        )

    def action(self, action: str, body: Any = None) -> Operation:
        operation: Operation = self.service.set_action(SUB, GROUP, NAME, action, body)
        return operation

    def snapshot(self) -> tuple[int, int, list[tuple[int, str, str, int, str]], int, str]:
        """What a refused request must leave as it was: rows, instance states, the set's model."""
        rows = [
            (i.instance_id, i.provisioning_state, i.power_state, i.os_disk_generation, i.image_version)
            for i in self.instances()
        ]
        scale_set = self.scale_set()
        return (
            count(self.container, Operation),
            count(self.container, Task),
            rows,
            scale_set.model_version,
            json.dumps(scale_set.document, sort_keys=True),
        )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with the schema, images 1.0.0 and 1.1.0 and the group, made once per module and
    copied for each test (the image rows point at this directory's image files, which stay put)."""
    root = tmp_path_factory.mktemp("prepared")
    container = make_container(root / "data", FakeProvider(), FakeClock())
    try:
        publish(container, root, "1.0.0")
        publish(container, root, "1.1.0")
        container.scalesets.put_group(SUB, GROUP, {"location": "eastus"})
    finally:
        container.close()
    return root / "data"


@pytest.fixture
def env(tmp_path: Path, clock: FakeClock, prepared: Path) -> Iterator[Env]:
    shutil.copytree(prepared, tmp_path / "data")
    fake = FakeProvider()
    container = make_container(tmp_path / "data", fake, clock)
    try:
        yield Env(container, fake, clock, tmp_path)
    finally:
        container.close()


def assert_settled(env: Env, ids: list[int], power: str = "running") -> None:
    instances = env.instances()
    assert [i.instance_id for i in instances] == ids
    assert {(i.provisioning_state, i.power_state) for i in instances} <= {("succeeded", power)}


# -- create ---------------------------------------------------------------------------------------------


def test_create_makes_every_instance_once(env: Env) -> None:
    operation = env.create_set(3)

    keys = [env.key(i) for i in range(3)]
    assert sorted(env.fake.calls) == [("create", key) for key in keys]
    assert [env.fake.created[key] for key in keys] == [1, 1, 1]
    assert env.fake.list_instance_keys() == sorted(keys)
    assert_settled(env, [0, 1, 2])
    assert env.operation(operation.id).status == "Succeeded"
    assert env.operation(operation.id).end_time is not None
    assert env.scale_set().provisioning_state == "Succeeded"


def test_create_hands_the_provider_the_instance_spec(env: Env) -> None:
    env.create_set(2)

    for instance in env.instances():
        spec = env.fake.specs[env.key(instance.instance_id)]
        assert spec.address == instance.address
        assert spec.os_disk_generation == 1
        assert spec.data_disk_luns == (0,)
        assert spec.image.path.name == "1.0.0"
        assert spec.environment["SCALESET_INSTANCE_ID"] == str(instance.instance_id)
        assert spec.environment["SCALESET_COMPUTER_NAME"] == computer_name("web", instance.instance_id)
        assert spec.environment["SCALESET_VMSS_NAME"] == NAME


def test_write_commits_intent_before_any_provider_call(env: Env) -> None:
    """M-26: the service writes instances, operation and tasks; only the engine calls the provider."""
    operation = env.create_set(2, settle=False)

    assert env.fake.calls == []
    assert [(t.action, t.status) for t in env.tasks(operation.id)] == [("create", "pending")] * 2
    assert {(i.provisioning_state, i.power_state) for i in env.instances()} == {("creating", "starting")}
    assert env.operation(operation.id).status == "InProgress"
    assert env.scale_set().provisioning_state == "Creating"


def test_operation_times_come_from_the_injected_clock(env: Env, clock: FakeClock) -> None:
    started = clock.now()
    operation = env.create_set(1, settle=False)
    clock.advance(minutes=3)
    drain(env.container)

    row = env.operation(operation.id)
    assert row.start_time.replace(tzinfo=None) == started.replace(tzinfo=None)
    assert row.end_time is not None
    assert row.end_time.replace(tzinfo=None) == clock.now().replace(tzinfo=None)


# -- crash and recovery (M-26) ---------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["before", "after"])
def test_crash_mid_create_resumes_without_duplicates_or_gaps(
    tmp_path: Path, clock: FakeClock, point: GatePoint
) -> None:
    """M-26. The first server claims all three creates; two reach the provider and freeze there (before
    or after acting), the third waits for a worker. The server dies. A second server on the same database
    and the same instances recovers and finishes: each instance exists once, created exactly once."""
    gate = threading.Event()
    first = FakeProvider(gate=gate, gate_point=point)
    dead = make_container(tmp_path / "data", first, clock)
    second_container: Container | None = None
    try:
        publish(dead, tmp_path, "1.0.0")
        dead.scalesets.put_group(SUB, GROUP, {"location": "eastus"})
        operation = dead.scalesets.put_set(SUB, GROUP, NAME, set_body(3)).operation
        assert dead.executor.run_pass() == 3
        first.wait_blocked(2)
        with dead.db.read() as session:
            statuses = list(session.scalars(select(Task.status).where(Task.operation_id == operation.id)))
        assert statuses == ["running"] * 3

        # The crash: the first server is gone; a new one finds its instances in the provider.
        second = FakeProvider(initial=first.snapshot())
        second_container = make_container(tmp_path / "data", second, clock)
        assert second_container.executor.recover() == 3
        drain(second_container)

        uid = second_container.scalesets.get_set(SUB, GROUP, NAME).uid
        keys = [f"{uid}/{i}" for i in range(3)]
        assert second.list_instance_keys() == sorted(keys)
        assert [first.created[k] + second.created[k] for k in keys] == [1, 1, 1]
        assert sorted(second.calls) == [("create", k) for k in keys]
        expected_in_first = 2 if point == "after" else 0
        assert sum(first.created.values()) == expected_in_first
        _, instances = second_container.scalesets.list_instances(SUB, GROUP, NAME)
        assert [(i.provisioning_state, i.power_state) for i in instances] == [("succeeded", "running")] * 3
        with second_container.db.read() as session:
            row = session.get(Operation, operation.id)
            assert row is not None and row.status == "Succeeded"
            tasks = list(session.scalars(select(Task).where(Task.operation_id == operation.id)))
        assert [(t.status, t.attempts) for t in tasks] == [("done", 2)] * 3
        assert second_container.scalesets.get_set(SUB, GROUP, NAME).provisioning_state == "Succeeded"
    finally:
        gate.set()  # let the dead server's threads leave the fake
        dead.close()
        if second_container is not None:
            second_container.close()


def test_task_claimed_but_never_run_runs_again_after_recover(env: Env) -> None:
    """M-26: the claim was committed, then the server died before any worker touched the provider."""
    operation = env.create_set(2, settle=False)
    with env.container.db.write() as session:
        session.execute(update(Task).where(Task.status == "pending").values(status="running", attempts=1))
    assert env.container.executor.run_pass() == 0  # running tasks are not claimed twice

    assert env.container.executor.recover() == 2
    drain(env.container)

    assert sorted(env.fake.calls) == [("create", env.key(0)), ("create", env.key(1))]
    assert env.operation(operation.id).status == "Succeeded"
    assert_settled(env, [0, 1])


def test_recover_with_nothing_running_is_a_noop(env: Env) -> None:
    env.create_set(1)

    assert env.container.executor.recover() == 0


def test_reimage_interrupted_after_acting_is_not_repeated(tmp_path: Path, clock: FakeClock) -> None:
    """M-26: no instance is upgraded twice. The reimage reached the provider, the server died before it
    recorded the outcome; after recovery the same OS-disk generation is asked for again, a no-op."""
    gate = threading.Event()
    gate.set()
    first = FakeProvider(gate=gate, gate_point="after")
    dead = make_container(tmp_path / "data", first, clock)
    second_container: Container | None = None
    try:
        publish(dead, tmp_path, "1.0.0")
        dead.scalesets.put_group(SUB, GROUP, {"location": "eastus"})
        dead.scalesets.put_set(SUB, GROUP, NAME, set_body(1))
        drain(dead)
        gate.clear()
        operation = dead.scalesets.set_action(SUB, GROUP, NAME, "reimage", None)
        assert dead.executor.run_pass() == 1
        first.wait_blocked(1)

        second = FakeProvider(initial=first.snapshot())
        second_container = make_container(tmp_path / "data", second, clock)
        second_container.executor.recover()
        drain(second_container)

        key = f"{second_container.scalesets.get_set(SUB, GROUP, NAME).uid}/0"
        assert first.reimaged[key] == 1
        assert second.calls == [("reimage", key)]
        assert second.reimaged[key] == 0
        assert second.describe_instance(key).os_disk_generation == 2
        with second_container.db.read() as session:
            row = session.get(Operation, operation.id)
            assert row is not None and row.status == "Succeeded"
    finally:
        gate.set()
        dead.close()
        if second_container is not None:
            second_container.close()


# -- failures --------------------------------------------------------------------------------------------


def test_provider_failure_on_one_create_fails_that_instance_and_the_operation(env: Env) -> None:
    operation = env.create_set(3, settle=False)
    env.fake.fail_next("create", env.key(1), "no capacity left on host")

    drain(env.container)

    by_id = {i.instance_id: i for i in env.instances()}
    assert (by_id[1].provisioning_state, by_id[1].status_message) == ("failed", "no capacity left on host")
    assert by_id[1].power_state == "unknown"  # the provider has no such instance
    for good in (0, 2):
        assert (by_id[good].provisioning_state, by_id[good].power_state) == ("succeeded", "running")
    row = env.operation(operation.id)
    assert row.status == "Failed"
    assert row.error is not None
    assert row.error["code"] == "VMProvisioningFailed"
    assert "no capacity left on host" in row.error["message"]
    assert env.scale_set().provisioning_state == "Failed"
    assert sorted(env.fake.list_instance_keys()) == sorted([env.key(0), env.key(2)])


def test_failed_instance_is_fixed_by_a_later_action(env: Env) -> None:
    env.create_set(1, settle=False)
    env.fake.fail_next("create", env.key(0), "boom")
    drain(env.container)

    operation = env.action("reimageall", {"instanceIds": ["0"]})
    drain(env.container)

    assert env.operation(operation.id).status == "Succeeded"
    assert_settled(env, [0])


def test_a_failing_stop_leaves_the_instance_failed_with_its_observed_power(env: Env) -> None:
    env.create_set(2)
    env.fake.fail_next("stop", env.key(0), "stuck in firmware")

    operation = env.action("stop")
    drain(env.container)

    zero, one = env.instances()
    assert (zero.provisioning_state, zero.power_state, zero.status_message) == (
        "failed",
        "running",
        "stuck in firmware",
    )
    assert (one.provisioning_state, one.power_state) == ("succeeded", "stopped")
    row = env.operation(operation.id)
    assert row.status == "Failed" and row.error is not None
    assert row.error["code"] == "InstanceOperationFailed"


# -- scaling ---------------------------------------------------------------------------------------------


def scale(env: Env, capacity: int, **extra: Any) -> Operation:
    patch: dict[str, Any] = {"sku": {"capacity": capacity}, **extra}
    operation: Operation = env.service.patch_set(SUB, GROUP, NAME, patch).operation
    return operation


def test_scale_out_adds_new_ids_and_scale_in_removes_the_highest(env: Env) -> None:
    env.create_set(3)

    scale(env, 5)
    drain(env.container)
    assert_settled(env, [0, 1, 2, 3, 4])

    operation = scale(env, 2)
    drain(env.container)

    assert_settled(env, [0, 1])
    assert sorted(k for verb, k in env.fake.calls if verb == "delete") == sorted(
        env.key(i) for i in (2, 3, 4)
    )
    assert env.fake.list_instance_keys() == sorted([env.key(0), env.key(1)])
    assert env.operation(operation.id).status == "Succeeded"


def test_scale_out_after_scale_in_never_reuses_an_id(env: Env) -> None:
    env.create_set(3)
    scale(env, 1)
    drain(env.container)

    scale(env, 3)
    drain(env.container)

    assert_settled(env, [0, 3, 4])


def test_scale_in_keeps_instances_protected_from_scale_in(env: Env) -> None:
    env.create_set(5)
    env.protect(4, protectFromScaleIn=True)
    env.protect(2, protectFromScaleIn=True)

    scale(env, 3)
    drain(env.container)

    assert_settled(env, [0, 2, 4])


def test_scale_in_below_the_protected_count_is_refused_and_changes_nothing(env: Env) -> None:
    env.create_set(3)
    env.protect(0, protectFromScaleIn=True)
    env.protect(2, protectFromScaleIn=True)
    before = env.snapshot()
    calls = list(env.fake.calls)

    with pytest.raises(ArmError) as caught:
        # A new image version rides along: it must not be recorded either.
        scale(
            env,
            1,
            properties={
                "virtualMachineProfile": {"storageProfile": {"imageReference": {"version": "1.1.0"}}}
            },
        )

    assert (caught.value.status, caught.value.code, caught.value.target) == (
        409,
        "OperationNotAllowed",
        "sku.capacity",
    )
    assert env.snapshot() == before
    assert count(env.container, ScaleSetModel) == 1
    drain(env.container)
    assert env.fake.calls == calls


# -- deleting ----------------------------------------------------------------------------------------------


def test_deleting_an_empty_group_finishes_at_once(env: Env) -> None:
    operation = env.service.delete_group(SUB, GROUP)

    assert env.operation(operation.id).status == "Succeeded"
    assert env.service.list_groups(SUB) == []


def test_deleting_a_group_removes_its_sets_after_their_instances(env: Env) -> None:
    env.create_set(2)
    env.create_set(1, name="api")

    operation = env.service.delete_group(SUB, GROUP)
    assert env.operation(operation.id).status == "InProgress"
    assert env.service.get_group(SUB, GROUP).provisioning_state == "Deleting"
    drain(env.container)

    assert env.operation(operation.id).status == "Succeeded"
    with pytest.raises(ArmError) as caught:
        env.service.get_group(SUB, GROUP)
    assert (caught.value.status, caught.value.code) == (404, "ResourceGroupNotFound")
    for table in (ResourceGroup, ScaleSet, ScaleSetModel, Instance):
        assert count(env.container, table) == 0, table.__name__
    assert env.fake.list_instance_keys() == []
    assert sorted(verb for verb, _ in env.fake.calls) == ["create"] * 3 + ["delete"] * 3


def test_deleting_a_set_removes_it_and_its_instances(env: Env) -> None:
    env.create_set(2)

    operation = env.service.delete_set(SUB, GROUP, NAME)
    drain(env.container)

    assert env.operation(operation.id).status == "Succeeded"
    assert env.service.list_sets(SUB, GROUP) == []
    assert env.fake.list_instance_keys() == []


def test_deleting_a_set_while_it_is_created_deletes_every_instance(env: Env) -> None:
    env.create_set(2, settle=False)

    env.service.delete_set(SUB, GROUP, NAME)
    drain(env.container)

    assert env.fake.list_instance_keys() == []
    assert count(env.container, Instance) == 0


def test_deleting_a_group_during_a_scale_in_leaves_no_instance_behind(env: Env) -> None:
    """The scale-in's delete tasks are still pending when the group goes; the instances must still go."""
    env.create_set(2)
    scale(env, 0)

    env.service.delete_group(SUB, GROUP)
    drain(env.container)

    assert count(env.container, Instance) == 0
    assert env.fake.list_instance_keys() == []


def test_deleting_a_set_during_a_scale_in_leaves_no_instance_behind(env: Env) -> None:
    """As above for one set: scaled to 0, so the set delete finds no live instance of its own to wait for."""
    env.create_set(2)
    scale(env, 0)

    env.service.delete_set(SUB, GROUP, NAME)
    drain(env.container)

    assert count(env.container, Instance) == 0
    assert env.fake.list_instance_keys() == []


def test_deleting_a_set_twice_leaves_no_instance_behind(env: Env) -> None:
    """A client retrying DELETE before the first one finished must not orphan the instances."""
    env.create_set(2)

    env.service.delete_set(SUB, GROUP, NAME)
    env.service.delete_set(SUB, GROUP, NAME)
    drain(env.container)

    assert count(env.container, Instance) == 0
    assert env.fake.list_instance_keys() == []


def test_no_set_can_be_created_in_a_group_being_deleted(env: Env) -> None:
    """Otherwise the group's delete removes the new set's rows when it finishes, and the instances the
    engine created for it stay behind in the provider."""
    env.create_set(1)
    env.service.delete_group(SUB, GROUP)

    with pytest.raises(ArmError) as caught:
        env.service.put_set(SUB, GROUP, "late", set_body(1))

    assert caught.value.status == 409
    drain(env.container)
    assert env.fake.list_instance_keys() == []


def test_a_failed_instance_delete_keeps_the_set_and_it_can_be_deleted_again(env: Env) -> None:
    env.create_set(2)
    env.fake.fail_next("delete", env.key(1), "disk is busy")

    operation = env.service.delete_set(SUB, GROUP, NAME)
    drain(env.container)

    row = env.operation(operation.id)
    assert row.status == "Failed" and row.error is not None
    assert (row.error["code"], "disk is busy" in row.error["message"]) == ("VMDeletionFailed", True)
    assert env.scale_set().provisioning_state == "Failed"
    assert [(i.instance_id, i.provisioning_state) for i in env.instances()] == [(1, "failed")]

    again = env.service.delete_set(SUB, GROUP, NAME)
    drain(env.container)

    assert env.operation(again.id).status == "Succeeded"
    assert env.service.list_sets(SUB, GROUP) == []
    assert env.fake.list_instance_keys() == []


def test_deleting_instances_lowers_the_capacity(env: Env) -> None:
    env.create_set(3)

    operation = env.action("delete", {"instanceIds": ["1"]})
    drain(env.container)

    assert env.operation(operation.id).status == "Succeeded"
    assert env.scale_set().document["sku"]["capacity"] == 2
    assert_settled(env, [0, 2])
    # A PUT of the set as it is now does not bring the instance back.
    env.service.put_set(SUB, GROUP, NAME, set_body(2))
    drain(env.container)
    assert_settled(env, [0, 2])


def test_delete_action_needs_instance_ids(env: Env) -> None:
    env.create_set(1)

    with pytest.raises(ArmError) as caught:
        env.action("delete", None)

    assert (caught.value.status, caught.value.target) == (400, "instanceIds")


# -- manual upgrade policy (M-3, M-4) ------------------------------------------------------------------------


def test_manual_mode_leaves_running_instances_on_the_old_model(env: Env) -> None:
    """M-4 Manual: a model change touches no existing instance; new instances get the new model."""
    env.create_set(2)
    new_image = {"virtualMachineProfile": {"storageProfile": {"imageReference": {"version": "1.1.0"}}}}

    scale(env, 3, properties=new_image)
    drain(env.container)

    assert env.scale_set().model_version == 2
    assert [(i.model_version, i.image_version) for i in env.instances()] == [
        (1, "1.0.0"),
        (1, "1.0.0"),
        (2, "1.1.0"),
    ]
    assert sorted(env.fake.verbs()) == ["create"] * 3


def test_manual_upgrade_brings_chosen_instances_to_the_latest_model(env: Env) -> None:
    """M-3: update-instances with chosen IDs, then with '*' (only stale instances are touched)."""
    env.create_set(3)
    env.service.patch_set(
        SUB,
        GROUP,
        NAME,
        {
            "properties": {
                "virtualMachineProfile": {"storageProfile": {"imageReference": {"version": "1.1.0"}}}
            }
        },
    )
    drain(env.container)

    env.service.manual_upgrade(SUB, GROUP, NAME, {"instanceIds": ["1"]})
    drain(env.container)
    assert [(i.model_version, i.image_version) for i in env.instances()] == [
        (1, "1.0.0"),
        (2, "1.1.0"),
        (1, "1.0.0"),
    ]
    assert env.fake.specs[env.key(1)].image.path.name == "1.1.0"

    operation = env.service.manual_upgrade(SUB, GROUP, NAME, {"instanceIds": ["*"]})
    drain(env.container)

    assert env.operation(operation.id).status == "Succeeded"
    assert sorted(k for verb, k in env.fake.calls if verb == "reimage") == sorted(
        [env.key(0), env.key(1), env.key(2)]
    )
    assert {(i.model_version, i.image_version, i.os_disk_generation) for i in env.instances()} == {
        (2, "1.1.0", 2)
    }


# -- set actions -------------------------------------------------------------------------------------------


POWER = {"stop": "stopped", "deallocate": "deallocated", "start": "running", "restart": "running"}


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("stop", None),
        ("stop", {"instanceIds": ["*"]}),
        ("stop", {}),
        ("deallocate", None),
        ("restart", {"instanceIds": ["*"]}),
        ("reimage", None),
    ],
)
def test_set_wide_action_reaches_every_unprotected_instance(env: Env, action: str, body: Any) -> None:
    """No instanceIds, or '*', means every instance, except those protected from scale-set actions."""
    env.create_set(3)
    env.protect(1, protectFromScaleSetActions=True)

    operation = env.action(action, body)
    drain(env.container)

    acted = [k for verb, k in env.fake.calls if verb == action]
    assert sorted(acted) == sorted([env.key(0), env.key(2)])
    assert env.operation(operation.id).status == "Succeeded"
    zero, one, two = env.instances()
    assert one.power_state == "running" and one.os_disk_generation == 1
    for instance in (zero, two):
        assert instance.provisioning_state == "succeeded"
        assert instance.power_state == POWER.get(action, "running")
        assert instance.os_disk_generation == (2 if action == "reimage" else 1)


def test_action_on_chosen_instances_only(env: Env) -> None:
    env.create_set(3)

    operation = env.action("stop", {"instanceIds": ["2", "0", "2"]})
    drain(env.container)

    assert len(env.tasks(operation.id)) == 2  # a repeated ID is one task
    assert sorted(k for verb, k in env.fake.calls if verb == "stop") == sorted([env.key(0), env.key(2)])
    assert [i.power_state for i in env.instances()] == ["stopped", "running", "stopped"]


def test_unknown_instance_id_is_refused_and_changes_nothing(env: Env) -> None:
    env.create_set(2)
    before = env.snapshot()

    with pytest.raises(ArmError) as caught:
        env.action("restart", {"instanceIds": ["0", "7"]})

    assert (caught.value.status, caught.value.code, caught.value.target) == (
        400,
        "InvalidParameter",
        "instanceIds",
    )
    assert env.snapshot() == before


def test_stop_then_start_and_deallocate_then_start(env: Env) -> None:
    env.create_set(2)

    env.action("stop", {"instanceIds": ["0"]})
    env.action("deallocate", {"instanceIds": ["1"]})
    drain(env.container)
    assert env.fake.describe_instance(env.key(0)).state is InstanceState.STOPPED
    assert env.fake.describe_instance(env.key(1)).state is InstanceState.DEALLOCATED
    assert [i.power_state for i in env.instances()] == ["stopped", "deallocated"]

    env.action("start")
    drain(env.container)

    assert_settled(env, [0, 1])
    assert {env.fake.describe_instance(env.key(i)).state for i in (0, 1)} == {InstanceState.RUNNING}


def test_protected_instance_can_still_be_acted_on_by_itself(env: Env) -> None:
    env.create_set(2)
    env.protect(0, protectFromScaleSetActions=True)

    env.service.vm_action(SUB, GROUP, NAME, "0", "stop")
    drain(env.container)

    assert [i.power_state for i in env.instances()] == ["stopped", "running"]


def test_reimage_bumps_the_os_disk_generation(env: Env) -> None:
    """M-9: a reimage gives the instance a new OS disk; the data disk stays."""
    env.create_set(2)
    env.fake.write_file(env.key(0), "os", "scratch", "lost on reimage")
    env.fake.write_file(env.key(0), 0, "kept", "kept on reimage")

    env.action("reimage", {"instanceIds": ["0"]})
    drain(env.container)
    env.action("reimage", {"instanceIds": ["0"]})
    drain(env.container)

    zero, one = env.instances()
    assert (zero.os_disk_generation, one.os_disk_generation) == (3, 1)
    assert env.fake.describe_instance(env.key(0)).os_disk_generation == 3
    assert env.fake.reimaged[env.key(0)] == 2
    assert env.fake.read_file(env.key(0), "os", "scratch") is None
    assert env.fake.read_file(env.key(0), 0, "kept") == "kept on reimage"


def test_reimage_to_an_exact_version(env: Env) -> None:
    env.create_set(2)

    env.action("reimage", {"instanceIds": ["1"], "exactVersion": "1.1.0"})
    drain(env.container)

    zero, one = env.instances()
    assert (zero.image_version, one.image_version) == ("1.0.0", "1.1.0")
    assert env.fake.specs[env.key(1)].image.path.name == "1.1.0"


def test_reimage_to_an_unpublished_version_is_refused_and_changes_nothing(env: Env) -> None:
    env.create_set(2)
    before = env.snapshot()

    with pytest.raises(ArmError) as caught:
        env.action("reimage", {"exactVersion": "9.9.9"})

    assert (caught.value.status, caught.value.code) == (404, "PlatformImageNotFound")
    assert env.snapshot() == before
    drain(env.container)
    assert env.fake.verbs() == ["create", "create"]


def test_reimage_to_an_exact_version_spelled_with_leading_zeros(env: Env) -> None:
    """The catalog treats 1.01.0 as 1.1.0 (as Azure does) when it accepts the request; the engine must find
    the same image when it builds the instance's spec."""
    env.create_set(1)

    operation = env.action("reimage", {"exactVersion": "1.01.0"})
    drain(env.container)

    assert env.operation(operation.id).status == "Succeeded"
    assert env.instances()[0].image_version == "1.1.0"
    assert env.fake.specs[env.key(0)].image.path.name == "1.1.0"


def test_reimage_all_remakes_the_instance_with_fresh_disks(env: Env) -> None:
    """Azure's reimageAll renews every disk, data disks included."""
    env.create_set(2)
    env.fake.write_file(env.key(0), 0, "data", "gone after reimageAll")

    operation = env.action("reimageall", {"instanceIds": ["0"]})
    drain(env.container)

    assert env.operation(operation.id).status == "Succeeded"
    assert env.fake.calls_on(env.key(0)) == ["create", "delete", "create"]
    assert env.fake.read_file(env.key(0), 0, "data") is None
    assert_settled(env, [0, 1])


def test_actions_on_a_set_being_deleted_are_refused(env: Env) -> None:
    env.create_set(1)
    env.service.delete_set(SUB, GROUP, NAME)

    with pytest.raises(ArmError) as caught:
        env.action("restart")

    assert (caught.value.status, caught.value.code) == (409, "OperationNotAllowed")


def test_action_with_nothing_to_do_succeeds_at_once(env: Env) -> None:
    env.create_set(1)
    env.protect(0, protectFromScaleSetActions=True)

    operation = env.action("restart")

    assert env.operation(operation.id).status == "Succeeded"
    assert env.tasks(operation.id) == []


# -- observation ---------------------------------------------------------------------------------------------


def test_observe_shows_an_instance_that_stopped_on_its_own(env: Env) -> None:
    env.create_set(2)
    env.fake.crash(env.key(0), "init exited with status 137")

    assert env.container.executor.observe() == 1

    zero, one = env.instances()
    assert (zero.power_state, zero.status_message) == ("stopped", "init exited with status 137")
    assert zero.provisioning_state == "succeeded"
    assert one.power_state == "running"
    assert env.container.executor.observe() == 0


def test_observe_shows_an_instance_the_provider_lost_as_unknown(env: Env) -> None:
    env.create_set(1)
    env.fake.delete_instance(env.key(0))

    assert env.container.executor.observe() == 1
    assert env.instances()[0].power_state == "unknown"


def test_observe_leaves_busy_instances_alone(env: Env) -> None:
    env.create_set(2)
    env.service.vm_action(SUB, GROUP, NAME, "1", "restart")  # pending, not run yet
    env.fake.crash(env.key(1), "crashed while a restart waits")
    pending = env.instances()[1]

    assert env.container.executor.observe() == 0

    one = env.instances()[1]
    assert (one.provisioning_state, one.power_state, one.status_message) == (
        pending.provisioning_state,
        pending.power_state,
        pending.status_message,
    )
    drain(env.container)
    assert env.instances()[1].power_state == "running"


# -- ordering ------------------------------------------------------------------------------------------------


def test_tasks_for_one_instance_run_in_order_and_never_together(env: Env) -> None:
    env.create_set(3)
    env.action("restart")
    env.action("stop")
    env.action("start")
    env.action("deallocate", {"instanceIds": ["1"]})

    drain(env.container)

    for instance_id in range(3):
        expected = ["create", "restart", "stop", "start"] + (["deallocate"] if instance_id == 1 else [])
        assert env.fake.calls_on(env.key(instance_id)) == expected
    assert env.fake.overlaps == []
    assert [i.power_state for i in env.instances()] == ["running", "deallocated", "running"]


def test_a_busy_instance_is_not_claimed_again(tmp_path: Path, clock: FakeClock) -> None:
    gate = threading.Event()
    fake = FakeProvider(gate=gate)
    container = make_container(tmp_path / "data", fake, clock)
    try:
        publish(container, tmp_path, "1.0.0")
        container.scalesets.put_group(SUB, GROUP, {"location": "eastus"})
        container.scalesets.put_set(SUB, GROUP, NAME, set_body(2))
        container.scalesets.set_action(SUB, GROUP, NAME, "restart", None)

        assert container.executor.run_pass() == 2  # the two creates
        fake.wait_blocked(2)
        assert container.executor.run_pass() == 0  # the restarts wait for their instance
        gate.set()
        drain(container)

        uid = container.scalesets.get_set(SUB, GROUP, NAME).uid
        for instance_id in range(2):
            assert fake.calls_on(f"{uid}/{instance_id}") == ["create", "restart"]
        assert fake.overlaps == []
    finally:
        gate.set()
        container.close()


class BusyOnce(Database):
    """The real database, whose next write fails as a busy SQLite does (`database is locked`)."""

    def __init__(self, real: Database) -> None:
        self.__dict__.update(real.__dict__)
        self.failures = 1

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        if self.failures:
            self.failures -= 1
            raise OperationalError("COMMIT", {}, Exception("database is locked"))
        with super().write() as session:
            yield session


def test_outcomes_whose_write_failed_are_written_by_the_next_pass(env: Env) -> None:
    """Finished tasks are recorded in one transaction per pass; if it fails, none of them is lost (else
    their tasks stay running and block their instances until a restart)."""
    operation = env.create_set(3, settle=False)
    executor = env.container.executor
    executor.run_pass()  # claims the three creates; the workers finish them
    deadline = time.monotonic() + 5
    while len(executor._finished) < 3:
        assert time.monotonic() < deadline, "the workers did not finish"
        time.sleep(0.002)

    real = executor._db
    executor._db = BusyOnce(real)
    with pytest.raises(OperationalError):
        executor.record_finished()
    assert open_tasks(env.container) == 3
    assert executor.record_finished() == 3  # the next pass writes them all
    executor._db = real

    assert open_tasks(env.container) == 0
    assert_settled(env, [0, 1, 2])
    assert env.operation(operation.id).status == "Succeeded"
