"""What the API asks of rolling upgrades: start (OS, extensions, a model rollout), cancel, and status.

Starting writes the run and its operation in one transaction; the rolling-upgrade loop
(`engine/rolling.py`) moves it from there. One run at a time per set: a second start, or a cancel with
nothing running, is 409 OperationNotAllowed (azure-api.md §1.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.catalog.extensions import ExtensionCatalog
from scaleset.catalog.service import ImageCatalog
from scaleset.domain.errors import ArmError, operation_not_allowed
from scaleset.domain.rolling import ACTIVE_STATUSES, Member, counts
from scaleset.domain.scaleset_spec import image_request
from scaleset.engine.clock import Clock
from scaleset.services.lookups import require_set
from scaleset.services.operations import start_operation
from scaleset.services.runs import active_run, new_model_version
from scaleset.services.scalesets import set_id_of
from scaleset.services.user_runs import begin_user_run, operation_of, refuse_unless_run_can_start
from scaleset.store.db import Database
from scaleset.store.tables import (
    Instance,
    Operation,
    ResourceGroup,
    RollingUpgrade,
    ScaleSet,
    UpgradeInstance,
)

Json = dict[str, Any]


@dataclass(frozen=True)
class RunStatus:
    """A run as `rollingUpgrades/latest` and the history show it; counts are computed from its members."""

    run: RollingUpgrade
    location: str
    progress: dict[str, int]
    rolled_back: int
    rollback_failed: int


class UpgradeService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        catalog: ImageCatalog,
        extensions: ExtensionCatalog,
        wake_engine: Callable[[], None],
    ) -> None:
        self._db = db
        self._clock = clock
        self._catalog = catalog
        self._extensions = extensions
        self._wake = wake_engine

    def start_os_upgrade(self, subscription: str, group: str, name: str) -> Operation:
        """POST osRollingUpgrade: every instance onto the newest image the model allows.

        A manually started OS upgrade has no automatic rollback (Azure's rule); only the set's
        `rollbackFailedInstancesOnPolicyBreach` rolls failed instances back.
        """
        with self._db.read() as session:
            scale_set = require_set(session, subscription, group, name)
        newest = self._catalog.find(scale_set.location, image_request(scale_set.document))
        if newest is None:
            request = image_request(scale_set.document)
            raise ArmError(404, "ImageNotFound", f"No image version matches {request.urn} any more.")
        return self._start(subscription, group, name, "os", newest.version)

    def start_extension_upgrade(self, subscription: str, group: str, name: str) -> Operation:
        """POST extensionRollingUpgrade: every instance's extensions onto their newest allowed versions."""
        return self._start(subscription, group, name, "extension", None)

    def _start(
        self, subscription: str, group: str, name: str, kind: str, image_version: str | None
    ) -> Operation:
        now = self._clock.now()
        with self._db.write() as session:
            scale_set = require_set(session, subscription, group, name)
            refuse_unless_run_can_start(session, scale_set, name)
            if kind == "os" and image_version is not None and image_version != scale_set.exact_image_version:
                new_model_version(session, scale_set, image_version, now)
            elif kind == "extension":
                new_model_version(
                    session, scale_set, scale_set.exact_image_version, now, extensions_afresh=True
                )
            operation = operation_of(session, begin_user_run(session, scale_set, kind, now))
        self._wake()
        return operation

    def cancel(self, subscription: str, group: str, name: str) -> Operation:
        """POST rollingUpgrades/cancel: the run stops after its current batch (Cancelled)."""
        now = self._clock.now()
        with self._db.write() as session:
            scale_set = require_set(session, subscription, group, name)
            run = active_run(session, scale_set.id)
            if run is None:
                raise operation_not_allowed(f"There is no rolling upgrade running on the scale set '{name}'.")
            run.cancel_requested = True
            run.last_action = "Cancel"
            run.last_action_time = now
            group_row = session.get(ResourceGroup, scale_set.group_id)
            assert group_row is not None
            operation = start_operation(
                session,
                subscription=subscription,
                location=scale_set.location,
                kind="rolling_cancel",
                resource_id=set_id_of(subscription, group_row.name, scale_set.name),
                now=now,
                payload={"set_id": scale_set.id, "upgrade_id": run.id},
            )
        self._wake()
        return operation

    def follow_up(self, run_id: str) -> None:
        """When a run ends and the model moved on while it ran, a set in Rolling mode rolls again towards
        the newest model (a run's target is fixed when it starts, so this cannot loop)."""
        now = self._clock.now()
        with self._db.write() as session:
            run = session.get(RollingUpgrade, run_id)
            scale_set = session.get(ScaleSet, run.set_id) if run is not None else None
            if run is None or scale_set is None or run.status != "Completed":
                return
            if scale_set.document["properties"]["upgradePolicy"]["mode"] != "Rolling":
                return
            if scale_set.model_version <= run.target_model_version or active_run(session, scale_set.id):
                return
            begin_user_run(session, scale_set, "model", now)
        self._wake()

    def latest(self, subscription: str, group: str, name: str) -> RunStatus:
        with self._db.read() as session:
            scale_set = require_set(session, subscription, group, name)
            run = session.scalars(
                select(RollingUpgrade)
                .where(RollingUpgrade.set_id == scale_set.id)
                .order_by(RollingUpgrade.start_time.desc(), RollingUpgrade.id)
            ).first()
            if run is None:
                raise ArmError(
                    404,
                    "NotFound",
                    f"The scale set '{name}' has had no rolling upgrade.",
                )
            return run_status(session, run, scale_set)


def run_status(session: Session, run: RollingUpgrade, scale_set: ScaleSet) -> RunStatus:
    rows = list(session.scalars(select(UpgradeInstance).where(UpgradeInstance.upgrade_id == run.id)))
    members = [Member(r.instance_row_id, r.instance_id, r.batch, r.state, "none", False) for r in rows]  # type: ignore[arg-type]
    pending = 0
    if run.status in ACTIVE_STATUSES:
        taken = {r.instance_row_id for r in rows} | {
            r.surge_row_id for r in rows if r.surge_row_id is not None
        }
        live = session.scalars(
            select(Instance).where(Instance.set_id == scale_set.id, Instance.provisioning_state != "deleting")
        )
        pending = sum(
            1
            for i in live
            if i.id not in taken
            and i.model_version < run.target_model_version
            and not i.protect_from_scale_set_actions
        )
    return RunStatus(
        run=run,
        location=scale_set.location,
        progress=counts(members, pending),
        rolled_back=sum(1 for r in rows if r.state == "rolled_back"),
        rollback_failed=sum(1 for r in rows if r.state == "rollback_failed"),
    )
