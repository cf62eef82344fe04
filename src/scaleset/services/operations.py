"""Long-running operations and the per-instance tasks they are made of.

An API call that changes instances commits, in one transaction, the new desired state, an Operation row
and one Task row per instance action; only then does the engine act (persist before acting, M-26). The
operation is finished by the engine when its last task is done.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from scaleset.domain.errors import ArmError
from scaleset.store.tables import (
    BlockedImageVersion,
    Instance,
    LoadBalancer,
    Operation,
    ResourceGroup,
    RollingUpgrade,
    ScaleSet,
    ScaleSetModel,
    Task,
    UpgradeInstance,
)

# What the instance shows while a task for it waits or runs, as Azure's instance view shows it.
TRANSITIONS: dict[str, tuple[str | None, str | None]] = {
    # action: (provisioning state, power state); None leaves it as it is
    "create": ("creating", "starting"),
    "start": (None, "starting"),
    "stop": (None, "stopping"),
    "deallocate": (None, "deallocating"),
    "restart": ("updating", "starting"),
    "reimage": ("updating", "starting"),
    "reimageall": ("updating", "starting"),
    "delete": ("deleting", "stopping"),
    "restore": ("updating", "starting"),
    "extensions": ("updating", None),
}


# Operations their own loop finishes (a rolling upgrade ends when its run does, not when its tasks do).
ENGINE_FINISHED_KINDS = ("rolling_upgrade", "rolling_cancel")

# A task is open until it is done or failed: settling means acted, but the guest has not reported yet.
OPEN_TASK_STATES = ("pending", "running", "settling")

_T = TypeVar("_T")


def start_operation(
    session: Session,
    *,
    subscription: str,
    location: str,
    kind: str,
    resource_id: str,
    now: datetime,
    payload: dict[str, Any] | None = None,
) -> Operation:
    operation = Operation(
        id=str(uuid.uuid4()),
        subscription=subscription,
        location=location,
        kind=kind,
        resource_id=resource_id,
        payload=payload or {},
        status="InProgress",
        error=None,
        start_time=now,
        end_time=None,
    )
    session.add(operation)
    return operation


def add_task(session: Session, operation: Operation, instance: Instance, action: str, now: datetime) -> Task:
    provisioning, power = TRANSITIONS[action]
    if provisioning is not None:
        instance.provisioning_state = provisioning
    if power is not None:
        instance.power_state = power
    instance.updated_at = now
    if instance.id is None:
        session.flush()  # the instance needs its row id before a task can point at it
    task = Task(
        operation_id=operation.id,
        instance_row_id=instance.id,
        action=action,
        status="pending",
        error="",
        attempts=0,
        created_at=now,
        updated_at=now,
    )
    session.add(task)
    return task


# SQLite allows 32 766 bound parameters per statement (999 before 3.32); IN lists stay well below.
IN_CHUNK = 900


def chunks(items: Sequence[_T], size: int = IN_CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def finish_operation(operation: Operation, now: datetime, error: ArmError | None) -> None:
    operation.status = "Failed" if error else "Succeeded"
    operation.error = error.to_body() if error else None
    operation.end_time = now


def get_operation(session: Session, subscription: str, operation_id: str) -> Operation:
    operation = session.get(Operation, operation_id)
    if operation is None or operation.subscription != subscription:
        raise ArmError(404, "NotFound", f"The operation '{operation_id}' could not be found.")
    return operation


def has_open_tasks(session: Session, operation_id: str) -> bool:
    return (
        session.scalar(
            select(Task.id)
            .where(Task.operation_id == operation_id, Task.status.in_(OPEN_TASK_STATES))
            .limit(1)
        )
        is not None
    )


FAILURE_CODES = {"create": "VMProvisioningFailed", "delete": "VMDeletionFailed"}


def complete_if_done(session: Session, operation_id: str, now: datetime) -> bool:
    """Finish the operation when none of its tasks is left to run; True when it finished now.

    It asks whether *one* open task is left, not for all of them: it runs after every finished task, and
    loading every open task each time made an operation of N tasks cost O(N²)."""
    operation = session.get(Operation, operation_id)
    if operation is None or operation.status != "InProgress" or operation.kind in ENGINE_FINISHED_KINDS:
        return False
    if has_open_tasks(session, operation_id):
        return False
    session.flush()
    failed = session.scalars(
        select(Task).where(Task.operation_id == operation_id, Task.status == "failed").order_by(Task.id)
    ).first()
    error = None
    if failed is not None:
        failures = session.scalar(
            select(func.count()).where(Task.operation_id == operation_id, Task.status == "failed")
        )
        error = ArmError(
            500 if failed.action == "delete" else 409,
            FAILURE_CODES.get(failed.action, "InstanceOperationFailed"),
            f"{failures} instance action(s) failed; the first: {failed.action}: {failed.error}",
        )
    finish_operation(operation, now, error)
    _finish_resources(session, operation, failed=failed is not None)
    return True


def _finish_resources(session: Session, operation: Operation, failed: bool) -> None:
    """What finishing an operation means for the resources it was about."""
    payload = operation.payload or {}
    if operation.kind == "set_update":
        scale_set = session.get(ScaleSet, payload.get("set_id"))
        if scale_set is not None and scale_set.provisioning_state != "Deleting":
            scale_set.provisioning_state = "Failed" if failed else "Succeeded"
    elif operation.kind == "set_delete" and not failed:
        _remove_set(session, int(payload["set_id"]))
    elif operation.kind == "group_delete" and not failed:
        group_id = int(payload["group_id"])
        for set_id in list(session.scalars(select(ScaleSet.id).where(ScaleSet.group_id == group_id))):
            _remove_set(session, set_id)
        session.execute(delete(LoadBalancer).where(LoadBalancer.group_id == group_id))
        session.execute(delete(ResourceGroup).where(ResourceGroup.id == group_id))
    elif operation.kind in ("set_delete", "group_delete"):
        # An instance could not be deleted: the resources stay, marked failed, and can be deleted again.
        for scale_set in _sets_of(session, operation):
            scale_set.provisioning_state = "Failed"
        group = session.get(ResourceGroup, payload["group_id"]) if "group_id" in payload else None
        if group is not None:
            group.provisioning_state = "Succeeded"


def _sets_of(session: Session, operation: Operation) -> list[ScaleSet]:
    payload = operation.payload or {}
    if "set_id" in payload:
        scale_set = session.get(ScaleSet, payload["set_id"])
        return [scale_set] if scale_set else []
    return list(session.scalars(select(ScaleSet).where(ScaleSet.group_id == payload.get("group_id"))))


def _remove_set(session: Session, set_id: int) -> None:
    runs = select(RollingUpgrade.id).where(RollingUpgrade.set_id == set_id)
    session.execute(delete(UpgradeInstance).where(UpgradeInstance.upgrade_id.in_(runs)))
    session.execute(delete(RollingUpgrade).where(RollingUpgrade.set_id == set_id))
    session.execute(delete(Instance).where(Instance.set_id == set_id))
    session.execute(delete(ScaleSetModel).where(ScaleSetModel.set_id == set_id))
    # Blocked image versions are keyed by the set's uid (no foreign key holds the delete up): they go too.
    uid = select(ScaleSet.uid).where(ScaleSet.id == set_id).scalar_subquery()
    session.execute(delete(BlockedImageVersion).where(BlockedImageVersion.set_uid == uid))
    session.execute(delete(ScaleSet).where(ScaleSet.id == set_id))
