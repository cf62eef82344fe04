"""Preview a rolling upgrade: read the set, its instances and their health as the rolling engine reads
them, and ask the pure planner (`domain/plan.py`) what the upgrade would do (docs/plan-preview.md).

Nothing is written. The target is the one a start would pick now (`services/upgrades.py`): an OS upgrade
targets a new model version when a newer image version is allowed, else the current model; an extension
upgrade always targets a new model version; a model rollout targets the current model. While an upgrade
runs, the preview is of that upgrade: its target and policy, the instances it has not taken yet, its
batch numbers, and the batch in flight assumed to succeed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.catalog.service import ImageCatalog
from scaleset.domain.errors import ArmError, invalid
from scaleset.domain.plan import UpgradePlan, health_timing, preview_upgrade
from scaleset.domain.scaleset_spec import _validate_rolling_policy, image_request
from scaleset.engine.candidates import candidates_of
from scaleset.engine.health import HealthReader
from scaleset.engine.rolling import facts_of, health_wait, run_policy
from scaleset.services.loadbalancers import ProbeSettings
from scaleset.services.lookups import live_instances, require_set
from scaleset.services.runs import active_run, effective_policy
from scaleset.store.db import Database
from scaleset.store.tables import Instance, RollingUpgrade, ScaleSet, ScaleSetModel, UpgradeInstance

Json = dict[str, Any]
UPGRADE_KINDS = ("os", "extension", "model")
POLICY_TARGET = "rollingUpgradePolicy"
_PERCENT_KEYS = {
    "maxbatchinstancepercent",
    "maxunhealthyinstancepercent",
    "maxunhealthyupgradedinstancepercent",
}
_INTEGER = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class ActiveRun:
    id: str
    kind: str
    status: str
    batches_started: int
    cancel_requested: bool


@dataclass(frozen=True)
class PlanPreview:
    """A plan and what it was made for."""

    kind: str
    target_model_version: int
    target_image_version: str
    policy: Json  # the effective rollingUpgradePolicy, overrides applied
    plan: UpgradePlan
    active_run: ActiveRun | None


def policy_overrides(raw: Mapping[str, str]) -> Json:
    """What-if policy fields given as query parameters (`maxBatchInstancePercent=50`), validated as a
    scale-set PUT validates `rollingUpgradePolicy`; unknown names and bad values are 400 InvalidParameter."""
    typed: Json = {}
    for key, value in raw.items():
        typed[key] = int(value) if key.lower() in _PERCENT_KEYS and _INTEGER.match(value) else value
    return _validate_rolling_policy(typed, POLICY_TARGET)


class PlanService:
    def __init__(
        self,
        db: Database,
        catalog: ImageCatalog,
        health: HealthReader,
        probe_settings: Callable[[str], ProbeSettings | None],
        instance_quota: int,
    ) -> None:
        self._db = db
        self._catalog = catalog
        self._health = health
        self._probe_settings = probe_settings
        self._instance_quota = instance_quota

    def preview(
        self, subscription: str, group: str, name: str, kind: str = "os", overrides: Json | None = None
    ) -> PlanPreview:
        if kind not in UPGRADE_KINDS:
            raise invalid("upgrade", f"'upgrade' is '{kind}'; it must be one of {', '.join(UPGRADE_KINDS)}.")
        with self._db.read() as session:
            scale_set = require_set(session, subscription, group, name)
            run = active_run(session, scale_set.id)
            if run is not None:
                return self._preview_run(session, scale_set, run, overrides or {})
            target, image = self._target(scale_set, kind)
            policy = {**effective_policy(scale_set.document), **(overrides or {})}
            plan = self._plan(session, scale_set, target, policy, taken=set(), uncounted=set())
            return PlanPreview(kind, target, image, policy, plan, None)

    # ----------------------------------------------------------------------------------------- steps
    def _target(self, scale_set: ScaleSet, kind: str) -> tuple[int, str]:
        """The model version (and exact image version) a start of `kind` would target now."""
        if kind == "extension":
            return scale_set.model_version + 1, scale_set.exact_image_version
        if kind == "model":
            return scale_set.model_version, scale_set.exact_image_version
        request = image_request(scale_set.document)
        newest = self._catalog.find(scale_set.location, request)
        if newest is None:
            raise ArmError(404, "ImageNotFound", f"No image version matches {request.urn} any more.")
        if newest.version != scale_set.exact_image_version:
            return scale_set.model_version + 1, newest.version
        return scale_set.model_version, scale_set.exact_image_version

    def _preview_run(
        self, session: Session, scale_set: ScaleSet, run: RollingUpgrade, overrides: Json
    ) -> PlanPreview:
        members = list(session.scalars(select(UpgradeInstance).where(UpgradeInstance.upgrade_id == run.id)))
        live = {i.id for i in live_instances(session, scale_set)}
        surge_rows = {m.surge_row_id for m in members if m.surge_row_id is not None}
        # As the engine counts them (engine/rolling.py `_observe`): a replacement counts towards the set
        # only once the instance it replaces is gone.
        uncounted = {
            m.surge_row_id
            for m in members
            if m.surge_row_id is not None and m.surge_row_id in live and m.instance_row_id in live
        }
        # The batch in flight is assumed to succeed, as every later one is.
        in_flight = {
            m.surge_row_id if m.surge_row_id is not None else m.instance_row_id
            for m in members
            if m.batch == run.batch_number and m.state == "upgrading"
        }
        policy = {**run.policy, **overrides}
        plan = self._plan(
            session,
            scale_set,
            run.target_model_version,
            policy,
            taken={m.instance_row_id for m in members} | surge_rows,
            uncounted=uncounted,
            assume_healthy=in_flight,
            batches_started=run.batch_number,
            cancel_requested=run.cancel_requested,
        )
        active = ActiveRun(run.id, run.kind, run.status, run.batch_number, run.cancel_requested)
        return PlanPreview(run.kind, run.target_model_version, run.target_image_version, policy, plan, active)

    def _plan(
        self,
        session: Session,
        scale_set: ScaleSet,
        target: int,
        policy: Json,
        *,
        taken: set[int],
        uncounted: set[int],
        assume_healthy: set[int] | None = None,
        batches_started: int = 0,
        cancel_requested: bool = False,
    ) -> UpgradePlan:
        models: dict[int, Json] = {}

        def model(version: int) -> Json:
            if version not in models:
                row = session.get(ScaleSetModel, (scale_set.id, version))
                models[version] = row.model if row else {}
            return models[version]

        def healthy(instance: Instance) -> bool:
            if assume_healthy and instance.id in assume_healthy:
                return True
            return self._health.is_healthy(model(instance.model_version), facts_of(scale_set, instance))

        view = candidates_of(
            live_instances(session, scale_set), healthy, target, taken=taken, uncounted=uncounted
        )
        # A target not written yet (a start would write it) copies the current model.
        target_model = model(min(target, scale_set.model_version))
        probe_id = ((target_model.get("networkProfile") or {}).get("healthProbe") or {}).get("id")
        probe = self._probe_settings(str(probe_id)) if probe_id else None
        timing = health_timing(
            target_model, probe.interval_seconds if probe else None, health_wait(target_model)
        )
        return preview_upgrade(
            view.candidates,
            view.instance_count,
            view.unhealthy_ids,
            run_policy(policy),
            timing,
            surge_quota=self._surge_quota(scale_set) if bool(policy.get("maxSurge")) else None,
            batches_started=batches_started,
            cancel_requested=cancel_requested,
        )

    def _surge_quota(self, scale_set: ScaleSet) -> int:
        # The engine's rule (engine/rolling.py `_surge_fits`): the set's tag, else the server's setting.
        tag = (scale_set.document.get("tags") or {}).get("scaleset:instanceQuota")
        return int(tag or self._instance_quota)
