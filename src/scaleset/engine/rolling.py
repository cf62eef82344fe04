"""The rolling-upgrade loop: observe a run, ask the pure planner for one step, persist it, let the
executor act (M-4, M-10, M-26).

Every step is one write transaction that records the run's new phase *and* the tasks it implies, so a
server killed at any moment finds the run exactly where its last committed step left it: the tasks of
a started batch are rerun by the executor (provider actions are idempotent), a batch that was waiting
for health waits again, a rollback goes on. Nothing here calls a provider except to read health.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.domain.batches import BatchPolicy, Candidate
from scaleset.domain.durations import parse_duration
from scaleset.domain.errors import ArmError
from scaleset.domain.model_change import change_action
from scaleset.domain.rolling import (
    ACTIVE_STATUSES,
    CANCELLED,
    DEFAULT_HEALTH_WAIT,
    FAULTED,
    ROLLING_BACK,
    ArmHealthWait,
    Finish,
    FinishRollback,
    JudgeBatch,
    Member,
    RunPolicy,
    RunView,
    StartBatch,
    Step,
    TaskState,
    Wait,
    plan_next_step,
)
from scaleset.engine.clock import Clock
from scaleset.engine.health import HealthReader, InstanceFacts
from scaleset.services.operations import OPEN_TASK_STATES, add_task
from scaleset.services.runs import finish_run
from scaleset.store.db import Database
from scaleset.store.tables import (
    Instance,
    Operation,
    RollingUpgrade,
    ScaleSet,
    ScaleSetModel,
    Task,
    UpgradeInstance,
)

log = logging.getLogger("scaleset.rolling")
Json = dict[str, Any]

# Makes `count` new instances of a set on its newest model, with a create task each (maxSurge).
CreateInstances = Callable[[Session, Operation, ScaleSet, int], list[Instance]]
APPLICATION_HEALTH = ("applicationhealthlinux", "applicationhealthwindows")


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands datetimes back without their zone; they were stored as UTC.
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_policy(policy: Json) -> RunPolicy:
    return RunPolicy(
        batches=BatchPolicy.from_json(policy),
        max_unhealthy_upgraded_instance_percent=int(policy.get("maxUnhealthyUpgradedInstancePercent", 20)),
        pause_between_batches=timedelta(
            seconds=parse_duration(str(policy.get("pauseTimeBetweenBatches") or "PT0S"))
        ),
    )


def health_wait(model: Json) -> timedelta:
    """Five minutes, or the Application Health extension's grace period when it sets one (Azure)."""
    for extension in (model.get("extensionProfile") or {}).get("extensions") or []:
        properties = extension.get("properties") or {}
        if str(properties.get("type", "")).lower() in APPLICATION_HEALTH:
            grace = (properties.get("settings") or {}).get("gracePeriod")
            if isinstance(grace, int) and grace > 0:
                return timedelta(seconds=grace)
    return DEFAULT_HEALTH_WAIT


def facts_of(scale_set: ScaleSet, instance: Instance) -> InstanceFacts:
    return InstanceFacts(
        key=f"{scale_set.uid}/{instance.instance_id}",
        address=instance.address,
        os_disk_generation=instance.os_disk_generation,
        power_state=instance.power_state,
        provisioning_state=instance.provisioning_state,
    )


@dataclass
class _Observed:
    view: RunView
    run: RollingUpgrade
    scale_set: ScaleSet


class RollingEngine:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        health: HealthReader,
        wake_executor: Callable[[], None],
        create_instances: CreateInstances,
        instance_quota: int = 1000,
    ) -> None:
        self._db = db
        self._clock = clock
        self._health = health
        self._wake = wake_executor
        self._create_instances = create_instances
        self._instance_quota = instance_quota
        self.on_finish: list[Callable[[str], None]] = []

    # ------------------------------------------------------------------------------------ passes
    def active_runs(self) -> list[str]:
        with self._db.read() as session:
            return list(
                session.scalars(
                    select(RollingUpgrade.id)
                    .where(RollingUpgrade.status.in_(ACTIVE_STATUSES))
                    .order_by(RollingUpgrade.start_time)
                )
            )

    def step_all(self) -> bool:
        """One step of every active run; True when a run is still active (the loop should come back soon)."""
        runs = self.active_runs()
        for run_id in runs:
            try:
                self.step(run_id)
            except Exception:  # one broken run must not stop the others; the next pass retries it
                log.exception("rolling upgrade %s: step failed", run_id)
        return bool(runs)

    def step(self, run_id: str) -> Step:
        now = self._clock.now()
        with self._db.read() as session:
            observed = self._observe(session, run_id)
        if observed is None:
            return Wait(None, "no such run")
        step = plan_next_step(observed.view, now)
        if isinstance(step, Wait):
            return step
        finished = False
        with self._db.write() as session:
            run = session.get(RollingUpgrade, run_id)
            # Someone else (another pass, a cancel) moved the run since we looked: look again next pass.
            if (
                run is None
                or run.phase != observed.run.phase
                or run.batch_number != observed.run.batch_number
            ):
                return Wait(None, "the run changed under us")
            scale_set = session.get(ScaleSet, run.set_id)
            assert scale_set is not None
            finished = self._apply(session, run, scale_set, step, now)
        log.info("rolling upgrade %s (set %s): %s", run_id, observed.scale_set.name, step.summary)
        self._wake()
        if finished:
            for callback in self.on_finish:
                callback(run_id)
        return step

    # ------------------------------------------------------------------------------- observation
    def _observe(self, session: Session, run_id: str) -> _Observed | None:
        run = session.get(RollingUpgrade, run_id)
        if run is None or run.status not in ACTIVE_STATUSES:
            return None
        scale_set = session.get(ScaleSet, run.set_id)
        if scale_set is None:
            return None
        models: dict[int, Json] = {}

        def model(version: int) -> Json:
            if version not in models:
                row = session.get(ScaleSetModel, (scale_set.id, version))
                models[version] = row.model if row else {}
            return models[version]

        instances = {
            i.id: i
            for i in session.scalars(
                select(Instance).where(
                    Instance.set_id == scale_set.id, Instance.provisioning_state != "deleting"
                )
            )
        }
        member_rows = list(
            session.scalars(select(UpgradeInstance).where(UpgradeInstance.upgrade_id == run.id))
        )
        tasks = self._latest_tasks(session, run)
        surge_rows = {m.surge_row_id for m in member_rows if m.surge_row_id is not None}
        # A replacement counts towards the set only once the instance it replaces is gone.
        extras = {
            m.surge_row_id
            for m in member_rows
            if m.surge_row_id in instances and m.instance_row_id in instances
        }

        def healthy(instance: Instance) -> bool:
            return self._health.is_healthy(model(instance.model_version), facts_of(scale_set, instance))

        members = []
        for row in member_rows:
            watched = (
                instances.get(row.surge_row_id)
                if row.surge_row_id is not None
                else instances.get(row.instance_row_id)
            )
            task_state: TaskState = (
                "none"
                if row.action == "none"
                else _task_state(tasks.get(row.surge_row_id or row.instance_row_id))
            )
            is_current = row.batch == run.batch_number and row.state == "upgrading"
            members.append(
                Member(
                    row_id=row.instance_row_id,
                    instance_id=row.instance_id,
                    batch=row.batch,
                    state=row.state,  # type: ignore[arg-type]
                    task=task_state,
                    healthy=bool(
                        watched is not None and is_current and task_state == "done" and healthy(watched)
                    ),
                )
            )
        taken = {row.instance_row_id for row in member_rows}
        candidates: list[Candidate] = []
        unhealthy = 0
        if run.phase == "ready":
            for instance in instances.values():
                if instance.id in extras:
                    continue
                is_healthy = healthy(instance)
                unhealthy += 0 if is_healthy else 1
                if instance.id in taken or instance.id in surge_rows:
                    continue
                candidates.append(
                    Candidate(
                        instance_id=instance.instance_id,
                        zone=instance.zone,
                        update_domain=instance.update_domain,
                        healthy=is_healthy,
                        current=instance.model_version >= run.target_model_version,
                        protected=instance.protect_from_scale_set_actions,
                    )
                )
        view = RunView(
            phase=run.phase,
            batch_number=run.batch_number,
            not_before=_aware(run.not_before),
            deadline=_aware(run.deadline),
            cancel_requested=run.cancel_requested,
            rollback_on_breach=run.rollback_on_breach,
            policy=run_policy(run.policy),
            health_wait=health_wait(model(run.target_model_version)),
            instance_count=len(instances) - len(extras),
            unhealthy_count=unhealthy,
            candidates=tuple(candidates),
            members=tuple(members),
        )
        return _Observed(view, run, scale_set)

    @staticmethod
    def _latest_tasks(session: Session, run: RollingUpgrade) -> dict[int, Task]:
        """The newest task of this run for each instance row."""
        latest: dict[int, Task] = {}
        for task in session.scalars(
            select(Task).where(Task.operation_id == run.operation_id).order_by(Task.id)
        ):
            latest[task.instance_row_id] = task
        return latest

    # ------------------------------------------------------------------------------------ acting
    def _apply(
        self, session: Session, run: RollingUpgrade, scale_set: ScaleSet, step: Step, now: datetime
    ) -> bool:
        """Persist one step; True when the run finished."""
        operation = session.get(Operation, run.operation_id) if run.operation_id else None
        assert operation is not None, "every run has its operation"
        if isinstance(step, StartBatch):
            self._start_batch(session, run, scale_set, operation, step.instance_ids, now)
            return False
        if isinstance(step, ArmHealthWait):
            run.deadline = step.deadline
            return False
        if isinstance(step, JudgeBatch):
            return self._judge(session, run, scale_set, operation, step, now)
        if isinstance(step, FinishRollback):
            for row in self._members(session, run, step.rolled_back):
                row.state, row.updated_at = "rolled_back", now
            for row in self._members(session, run, step.rollback_failed):
                row.state, row.updated_at = "rollback_failed", now
            finish_run(session, run, operation, FAULTED, now, run.error)
            return True
        if isinstance(step, Finish):
            error = (
                ArmError(409, step.error_code, step.summary).to_body()
                if step.error_code is not None
                else None
            )
            finish_run(session, run, operation, step.status, now, error)
            return True
        return False

    def _start_batch(
        self,
        session: Session,
        run: RollingUpgrade,
        scale_set: ScaleSet,
        operation: Operation,
        instance_ids: Sequence[int],
        now: datetime,
    ) -> None:
        target = session.get(ScaleSetModel, (scale_set.id, run.target_model_version))
        assert target is not None
        instances = list(
            session.scalars(
                select(Instance).where(
                    Instance.set_id == scale_set.id, Instance.instance_id.in_(list(instance_ids))
                )
            )
        )
        run.batch_number += 1
        run.phase = "upgrading"
        run.deadline = None
        run.not_before = None
        surge = bool(run.policy.get("maxSurge")) and self._surge_fits(session, scale_set, len(instances))
        new_instances = self._create_instances(session, operation, scale_set, len(instances)) if surge else []
        # Read once per model version, not per instance (the identity map holds a row only while it is
        # referenced, so a repeated get would read and parse the model again).
        models: dict[int, ScaleSetModel | None] = {}
        for index, instance in enumerate(instances):
            if instance.model_version not in models:
                models[instance.model_version] = session.get(
                    ScaleSetModel, (scale_set.id, instance.model_version)
                )
            before = models[instance.model_version]
            action = change_action(
                before.model if before else {},
                target.model,
                instance.image_version,
                target.exact_image_version,
            )
            if action == "none" and run.kind == "extension":
                action = "extensions"
            member = UpgradeInstance(
                upgrade_id=run.id,
                instance_row_id=instance.id,
                instance_id=instance.instance_id,
                batch=run.batch_number,
                state="succeeded" if action == "none" and not surge else "upgrading",
                action="surge" if surge else action,
                before_model_version=instance.model_version,
                before_image_version=instance.image_version,
                before_os_disk_generation=instance.os_disk_generation,
                surge_row_id=new_instances[index].id if surge else None,
                error="",
                updated_at=now,
            )
            session.add(member)
            if surge:
                continue  # the old instance is left alone until its replacement is healthy
            instance.model_version = run.target_model_version
            instance.image_version = target.exact_image_version
            instance.updated_at = now
            if action == "reimage":
                instance.os_disk_generation += 1
            if action != "none":
                add_task(session, operation, instance, action, now)

    def _surge_fits(self, session: Session, scale_set: ScaleSet, extra: int) -> bool:
        """maxSurge needs room for `extra` more instances; otherwise the batch upgrades in place (Azure)."""
        live = len(
            list(
                session.scalars(
                    select(Instance.id).where(
                        Instance.set_id == scale_set.id, Instance.provisioning_state != "deleting"
                    )
                )
            )
        )
        quota = int(
            (scale_set.document.get("tags") or {}).get("scaleset:instanceQuota") or self._instance_quota
        )
        return live + extra <= quota

    def _judge(
        self,
        session: Session,
        run: RollingUpgrade,
        scale_set: ScaleSet,
        operation: Operation,
        step: JudgeBatch,
        now: datetime,
    ) -> bool:
        tasks = self._latest_tasks(session, run)
        for row in self._members(session, run, step.succeeded):
            row.state, row.updated_at = "succeeded", now
            if row.action == "surge":
                # The replacement is healthy: the old instance goes.
                old = session.get(Instance, row.instance_row_id)
                if old is not None:
                    add_task(session, operation, old, "delete", now)
        for row in self._members(session, run, step.failed):
            task = tasks.get(row.surge_row_id or row.instance_row_id)
            row.state, row.updated_at = "failed", now
            row.error = (
                task.error
                if task is not None and task.status == "failed"
                else f"not healthy within the health wait of batch {row.batch}"
            )
        if step.outcome == "continue":
            run.phase, run.not_before, run.deadline = "ready", step.not_before, None
            return False
        error = ArmError(409, step.error_code or "RollingUpgradeFailed", step.summary).to_body()
        if step.outcome == "cancel":
            finish_run(session, run, operation, CANCELLED, now, None)
            return True
        if step.outcome == "fault":
            finish_run(session, run, operation, FAULTED, now, error)
            return True
        # Roll back every failed instance of the run, this batch's and earlier ones'.
        run.status, run.phase, run.error = ROLLING_BACK, "rolling_back", error
        failed = session.scalars(
            select(UpgradeInstance).where(
                UpgradeInstance.upgrade_id == run.id, UpgradeInstance.state == "failed"
            )
        )
        for row in failed:
            row.state, row.updated_at = "rolling_back", now
            self._roll_back(session, operation, row, now)
        return False

    def _roll_back(self, session: Session, operation: Operation, row: UpgradeInstance, now: datetime) -> None:
        if row.action == "surge":
            new = session.get(Instance, row.surge_row_id) if row.surge_row_id is not None else None
            if new is not None:
                add_task(session, operation, new, "delete", now)
            return
        instance = session.get(Instance, row.instance_row_id)
        if instance is None:
            return
        instance.model_version = row.before_model_version
        instance.image_version = row.before_image_version
        instance.updated_at = now
        if row.action == "reimage":
            # The OS disk the instance had before the batch comes back (the provider kept it).
            instance.os_disk_generation = row.before_os_disk_generation
            add_task(session, operation, instance, "restore", now)
        else:
            # An extensions-only change: the previous model's extensions, reinstalled on a fresh OS disk.
            instance.os_disk_generation += 1
            add_task(session, operation, instance, "reimage", now)

    @staticmethod
    def _members(session: Session, run: RollingUpgrade, row_ids: Sequence[int]) -> list[UpgradeInstance]:
        if not row_ids:
            return []
        return list(
            session.scalars(
                select(UpgradeInstance).where(
                    UpgradeInstance.upgrade_id == run.id, UpgradeInstance.instance_row_id.in_(list(row_ids))
                )
            )
        )


def _task_state(task: Task | None) -> TaskState:
    if task is None:
        return "open"  # written in the same transaction as the member: not there means not yet visible
    if task.status in OPEN_TASK_STATES:
        return "open"
    return "failed" if task.status == "failed" else "done"
