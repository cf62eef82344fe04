"""Rolling-upgrade runs a user starts: a model rollout in Rolling mode, the rolling-upgrade API, a walk.

Such a run is `started_by` User and rolls failed instances back only when the policy it runs with asks
(`rollbackFailedInstancesOnPolicyBreach`); the platform's automatic runs follow their own rules
(services/platform.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from scaleset.domain.errors import operation_not_allowed
from scaleset.services.runs import active_run, begin_run, effective_policy
from scaleset.store.tables import Operation, RollingUpgrade, ScaleSet

Json = dict[str, Any]


def refuse_unless_run_can_start(session: Session, scale_set: ScaleSet, name: str) -> None:
    """409 OperationNotAllowed while the set is being deleted or already runs an upgrade (one at a time)."""
    if scale_set.provisioning_state == "Deleting":
        raise operation_not_allowed(f"The scale set '{name}' is being deleted.")
    if active_run(session, scale_set.id) is not None:
        raise operation_not_allowed(
            f"A rolling upgrade is already running on '{name}'; cancel it or wait for it to end."
        )


def begin_user_run(
    session: Session, scale_set: ScaleSet, kind: str, now: datetime, policy: Json | None = None
) -> RollingUpgrade:
    """Write a user's run towards the set's newest model, with `policy` in place of the set's own (written
    in the same transaction as the run, so the engine never sees the set's policy instead)."""
    chosen = policy if policy is not None else effective_policy(scale_set.document)
    return begin_run(
        session,
        scale_set,
        kind=kind,
        started_by="User",
        rollback_on_breach=bool(chosen.get("rollbackFailedInstancesOnPolicyBreach")),
        now=now,
        policy=policy,
    )


def operation_of(session: Session, run: RollingUpgrade) -> Operation:
    """The operation that waits for `run` (written with it)."""
    operation = session.get(Operation, run.operation_id)
    assert operation is not None
    return operation
