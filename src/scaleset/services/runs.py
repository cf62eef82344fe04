"""Rolling-upgrade runs as rows: the policy a run uses, the one active run of a set, starting one.

Shared by the scale-set service (a model change in Rolling mode starts a run) and the upgrade service
(the rolling-upgrade API).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.domain.errors import ArmError
from scaleset.domain.rolling import ACTIVE_STATUSES, CANCELLED, COMPLETED, FAULTED, ROLLING_FORWARD
from scaleset.domain.scaleset_spec import DEFAULT_ROLLING_POLICY
from scaleset.services.operations import start_operation
from scaleset.services.set_rows import write_model_version
from scaleset.store.tables import (
    BlockedImageVersion,
    Operation,
    ResourceGroup,
    RollingUpgrade,
    ScaleSet,
    ScaleSetModel,
)

Json = dict[str, Any]


def effective_policy(document: Json) -> Json:
    """The set's rolling-upgrade policy with Azure's defaults filled in: what a run uses and echoes."""
    given = (document["properties"]["upgradePolicy"].get("rollingUpgradePolicy")) or {}
    return {**DEFAULT_ROLLING_POLICY, **given}


def active_run(session: Session, set_id: int) -> RollingUpgrade | None:
    return session.scalars(
        select(RollingUpgrade).where(
            RollingUpgrade.set_id == set_id, RollingUpgrade.status.in_(ACTIVE_STATUSES)
        )
    ).first()


def blocked_image_versions(session: Session, scale_set: ScaleSet) -> frozenset[str]:
    """The image versions automatic upgrades must not offer the set (rolled back there, not cleared)."""
    return frozenset(
        session.scalars(
            select(BlockedImageVersion.image_version).where(
                BlockedImageVersion.set_uid == scale_set.uid, BlockedImageVersion.cleared_at.is_(None)
            )
        )
    )


def new_model_version(
    session: Session,
    scale_set: ScaleSet,
    exact_image_version: str,
    now: datetime,
    *,
    extensions_afresh: bool = False,
    extension_overrides: Mapping[str, str] | None = None,
) -> int:
    """Record the set's current model again as a new version, so instances can be told apart by the
    version they run: a new image under `latest`; with `extensions_afresh`, every extension re-resolved to
    its newest allowed version (extensionRollingUpgrade); with `extension_overrides` ({name: version}),
    those extensions moved to those versions (the automatic extension upgrade). Other pins carry over
    (services/extension_pins.py)."""
    current = session.get(ScaleSetModel, (scale_set.id, scale_set.model_version))
    assert current is not None
    return write_model_version(
        session,
        scale_set,
        copy.deepcopy(current.model),
        exact_image_version,
        now,
        extensions_afresh=extensions_afresh,
        extension_overrides=extension_overrides,
    )


def begin_run(
    session: Session,
    scale_set: ScaleSet,
    *,
    kind: str,
    started_by: str,
    rollback_on_breach: bool,
    now: datetime,
    policy: Json | None = None,
) -> RollingUpgrade:
    """Write a run towards the set's newest model, and the operation that waits for it.

    `policy` overrides the set's rolling policy (automatic OS upgrades run Azure's default unless the set
    asks for its own, `domain/auto_upgrade.py`)."""
    group = session.get(ResourceGroup, scale_set.group_id)
    assert group is not None
    operation = start_operation(
        session,
        subscription=scale_set.subscription,
        location=scale_set.location,
        kind="rolling_upgrade",
        resource_id=_set_resource_id(scale_set, group.name),
        now=now,
        payload={"set_id": scale_set.id},
    )
    run = RollingUpgrade(
        id=str(uuid.uuid4()),
        set_id=scale_set.id,
        kind=kind,
        started_by=started_by,
        operation_id=operation.id,
        policy=policy if policy is not None else effective_policy(scale_set.document),
        rollback_on_breach=rollback_on_breach,
        target_model_version=scale_set.model_version,
        target_image_version=scale_set.exact_image_version,
        status=ROLLING_FORWARD,
        phase="ready",
        batch_number=0,
        cancel_requested=False,
        error=None,
        last_action="Start",
        last_action_time=now,
        start_time=now,
    )
    session.add(run)
    operation.payload = {"set_id": scale_set.id, "upgrade_id": run.id}
    return run


def _set_resource_id(scale_set: ScaleSet, group_name: str) -> str:
    return (
        f"/subscriptions/{scale_set.subscription}/resourceGroups/{group_name}"
        f"/providers/Microsoft.Compute/virtualMachineScaleSets/{scale_set.name}"
    )


def finish_run(
    session: Session,
    run: RollingUpgrade,
    operation: Operation,
    status: str,
    now: datetime,
    error: Json | None,
) -> None:
    run.status, run.phase, run.end_time, run.deadline, run.not_before = status, "done", now, None, None
    run.error = error if status == FAULTED else None
    operation.end_time = now
    if status == COMPLETED:
        operation.status, operation.error = "Succeeded", None
    elif status == CANCELLED:
        operation.status = "Canceled"
        operation.error = ArmError(409, "OperationPreempted", "The rolling upgrade was cancelled.").to_body()
    else:
        operation.status, operation.error = "Failed", error
    # Whoever waits on a cancel of this run is answered now.
    for waiting in session.scalars(
        select(Operation).where(
            Operation.kind == "rolling_cancel",
            Operation.status == "InProgress",
            Operation.resource_id == operation.resource_id,
        )
    ):
        waiting.status, waiting.end_time = "Succeeded", now


def stop_runs_of_deleted_set(session: Session, scale_set: ScaleSet, now: datetime) -> None:
    """A set being deleted takes its running upgrade with it: the run ends Cancelled, its waiters answered."""
    run = active_run(session, scale_set.id)
    operation = session.get(Operation, run.operation_id) if run is not None and run.operation_id else None
    if run is not None and operation is not None:
        finish_run(session, run, operation, CANCELLED, now, None)
