"""The rolling-upgrade loop: observe a run, ask the pure planner for one step, persist it, let the
executor act (M-4, M-10, M-26).

Every step is one write transaction that records the run's new phase *and* the tasks it implies, so a
server killed at any moment finds the run exactly where its last committed step left it: the tasks of
a started batch are rerun by the executor (provider actions are idempotent), a batch that was waiting
for health waits again, a rollback goes on. Nothing here calls a provider except to read health.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, insert, literal, select, update
from sqlalchemy.orm import Session, aliased

from scaleset.domain.batches import BatchPolicy, Candidate
from scaleset.domain.durations import parse_duration
from scaleset.domain.errors import ArmError
from scaleset.domain.model_change import change_action
from scaleset.domain.rolling import (
    ACTIVE_STATUSES,
    CANCELLED,
    DEFAULT_HEALTH_WAIT,
    FAULTED,
    HEALTH_POLL,
    ROLLING_BACK,
    ArmHealthWait,
    Finish,
    FinishRestore,
    FinishRollback,
    JudgeBatch,
    Member,
    MemberState,
    RunPolicy,
    RunView,
    StartBatch,
    Step,
    TaskState,
    Wait,
    plan_next_step,
)
from scaleset.engine.candidates import candidates_of_many
from scaleset.engine.clock import Clock
from scaleset.engine.health import HealthPass, HealthReader, InstanceFacts
from scaleset.observability.logs import log_context
from scaleset.services.operations import OPEN_TASK_STATES, TRANSITIONS, add_task, chunks
from scaleset.services.runs import finish_run
from scaleset.store.db import Database, raw_rows, rows_by_ids, select_in
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
# (session, run, its set, the batch's instance ids) → None to start the batch now, or why it waits
AdmitBatch = Callable[[Session, RollingUpgrade, ScaleSet, Sequence[int]], str | None]
APPLICATION_HEALTH = ("applicationhealthlinux", "applicationhealthwindows")
MODEL_CACHE_SIZE = 4096


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
    run: _RunRow
    set_name: str


@dataclass(frozen=True)
class _Planned:
    """A run looked at and the step it takes next (not a Wait), chosen at `now`."""

    observed: _Observed
    step: Step
    now: datetime


# What the loop reads of an instance, as plain columns (an ORM object each would cost several times more,
# and an upgrade of 100 000 instances looks at instances a few million times).
_INSTANCE_COLUMNS = (
    Instance.id,
    Instance.instance_id,
    Instance.zone,
    Instance.update_domain,
    Instance.model_version,
    Instance.protect_from_scale_set_actions,
    Instance.address,
    Instance.os_disk_generation,
    Instance.power_state,
    Instance.provisioning_state,
)
_MEMBER_COLUMNS = (
    UpgradeInstance.instance_row_id,
    UpgradeInstance.instance_id,
    UpgradeInstance.batch,
    UpgradeInstance.state,
    UpgradeInstance.action,
    UpgradeInstance.surge_row_id,
)


# A result row of the column selects above (typed loosely: rows of several shapes pass through here).
_Row = Any
# instance id, instance row (with the _INSTANCE_COLUMNS) → healthy now?
_Healthy = Callable[[int, _Row], bool]


class _MemberRow(NamedTuple):
    """A member row as the loop reads it (a named tuple: SQLAlchemy rows are slow to read by name, and
    these are read millions of times in an upgrade of 100 000 instances)."""

    instance_row_id: int
    instance_id: int
    batch: int
    state: MemberState
    action: str
    surge_row_id: int | None

    @property
    def watched_row(self) -> int:
        """The instance whose health and task count: the replacement under maxSurge, else itself."""
        return self.surge_row_id if self.surge_row_id is not None else self.instance_row_id


class _InstanceRow(NamedTuple):
    id: int
    instance_id: int
    zone: str | None
    update_domain: int
    model_version: int
    protect_from_scale_set_actions: bool
    address: str
    os_disk_generation: int
    power_state: str
    provisioning_state: str


@dataclass(frozen=True)
class _Batch:
    """The current batch of a run as of (batch number, phase): its members and, for each member's
    watched instance, the id of its newest task of the run. Neither changes until the next step: only a
    step adds members or tasks to a run, or changes a member's state, and every step moves the phase or
    the batch number. So each pass reads only what does change: the instances and the tasks' statuses."""

    key: tuple[int, str]
    members: tuple[_MemberRow, ...]
    task_ids: tuple[int, ...]


# What the health check of one current member needs, read from its watched instance: (key, address, OS disk
# generation, power state, provisioning state) and the model version the instance runs.
_Look = tuple[tuple[str, str, int, str, str], int]


@dataclass
class _Seen:
    """What the last pass read of a run from the database, and the database's change token read just
    before (`Database.change_token`). While the token stays the same nothing was written anywhere, so the
    next pass takes these instead of reading them again; only health, which moves with time, is asked
    anew. An upgrade waiting for its batch's health spends most of its passes like that.

    This holds only while every input of the planner other than health comes from the database (model
    versions, kept in `_models`, are written once; probe settings are read every pass). Anything else the
    planner comes to depend on must be read outside `_Seen`, or SQLite would keep it where PostgreSQL would
    not; `tests/unit/test_rolling_observation.py` compares every view with a fresh engine's."""

    token: int | None
    run: _RunRow
    # The current batch's members as (row, task state, what its health check needs or None when its health
    # is not looked at), for `batch_key`.
    batch_key: tuple[int, str] | None = None
    looks: list[tuple[_MemberRow, TaskState, _Look | None]] | None = None
    # The health verdicts of the last pass and the members built from them with `looks`.
    current: tuple[list[bool], list[tuple[Member, _MemberRow]]] | None = None
    live_count: int | None = None


@dataclass(frozen=True)
class _Earlier:
    """The members of a run's batches before `batch_number`, with their rows, and the members alone."""

    batch_number: int
    pairs: list[tuple[Member, _MemberRow]]
    members: tuple[Member, ...]


# The same columns by name, for `rows_by_ids` and `raw_rows`.
_MEMBER_FIELDS = ", ".join(column.key for column in _MEMBER_COLUMNS)
assert _MemberRow._fields == tuple(column.key for column in _MEMBER_COLUMNS)
_INSTANCE_FIELDS = tuple(column.key for column in _INSTANCE_COLUMNS)
assert _InstanceRow._fields == _INSTANCE_FIELDS and _INSTANCE_FIELDS[-1] == "provisioning_state"


class _RunRow(NamedTuple):
    """What a pass reads of a run and its set."""

    id: str
    set_id: int
    kind: str
    operation_id: str | None
    policy: Json
    rollback_on_breach: bool
    target_model_version: int
    status: str
    phase: str
    batch_number: int
    not_before: datetime | None
    deadline: datetime | None
    cancel_requested: bool
    roll_back_each_failure: bool
    set_uid: str
    set_name: str


_RUN = (
    select(
        RollingUpgrade.id,
        RollingUpgrade.set_id,
        RollingUpgrade.kind,
        RollingUpgrade.operation_id,
        RollingUpgrade.policy,
        RollingUpgrade.rollback_on_breach,
        RollingUpgrade.target_model_version,
        RollingUpgrade.status,
        RollingUpgrade.phase,
        RollingUpgrade.batch_number,
        RollingUpgrade.not_before,
        RollingUpgrade.deadline,
        RollingUpgrade.cancel_requested,
        RollingUpgrade.roll_back_each_failure,
        ScaleSet.uid,
        ScaleSet.name,
    )
    .join(ScaleSet, ScaleSet.id == RollingUpgrade.set_id)
    .where(RollingUpgrade.id == bindparam("run_id"))
)
assert _RunRow._fields[:14] == tuple(column.key for column in _RUN.selected_columns)[:14]


class RollingEngine:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        health: HealthReader,
        wake_executor: Callable[[], None],
        create_instances: CreateInstances,
        instance_quota: int = 1000,
        admit_batch: AdmitBatch | None = None,
    ) -> None:
        self._db = db
        # Asked before a batch starts (services/rollouts.py: zones of a region one at a time, M-21).
        self._admit_batch = admit_batch
        self._clock = clock
        self._health = health
        self._wake = wake_executor
        self._create_instances = create_instances
        self._instance_quota = instance_quota
        self.on_finish: list[Callable[[str], None]] = []
        # Per active run: the members of the batches before the current one, as of that batch number.
        self._earlier: dict[str, _Earlier] = {}
        self._models: dict[tuple[str, int], Json] = {}
        self._batches: dict[str, _Batch] = {}
        # Per run in the ready phase: the current batch's members as the last pass saw them, judged.
        self._judged: dict[str, tuple[tuple[int, str], list[tuple[Member, _MemberRow]]]] = {}
        # Per active run: what the last pass read, kept while the database does not change (`_Seen`).
        self._seen: dict[str, _Seen] = {}
        # Per active run: its instances' provider keys, each string made once (`_Keys`).
        self._keys: dict[str, _Keys] = {}

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
        return bool(self.step_each())

    def step_each(self) -> list[tuple[str, Step]]:
        """One step of every active run, each run's step beside its id. The runs share one health pass:
        a probe's settings are read once for all of them.

        Every run is looked at before any acts. A step writes only its own run's rows and its own set's
        instances and tasks, so acting on one run cannot make another's look stale (and each act checks
        its own run row again under the write lock); but any write moves the database's change token, and
        with the looks first no run's look has to read again what the last pass read of it because another
        run just stepped (`_Seen`): with a hundred sets judging in the same pass, that was 99 needless reads
        of a batch each."""
        health = self._health.one_pass()
        active = self.active_runs()
        kept = set(self._earlier) | set(self._batches) | set(self._judged) | set(self._seen) | set(self._keys)
        for gone in kept - set(active):
            self._forget(gone)  # ended outside a step (its set deleted, say): nothing to keep for it
        planned: list[tuple[str, _Planned | Step]] = []
        for run_id in active:
            with log_context(upgrade=run_id):
                try:
                    planned.append((run_id, self._plan(run_id, health)))
                except Exception:  # one broken run must not stop the others; the next pass retries it
                    log.exception("rolling upgrade %s: step failed", run_id)
                    planned.append((run_id, Wait(None, "the step failed")))
        steps: list[tuple[str, Step]] = []
        for run_id, plan in planned:
            if not isinstance(plan, _Planned):
                steps.append((run_id, plan))
                continue
            with log_context(upgrade=run_id):
                try:
                    steps.append((run_id, self._carry_out(run_id, plan)))
                except Exception:
                    log.exception("rolling upgrade %s: step failed", run_id)
                    steps.append((run_id, Wait(None, "the step failed")))
        return steps

    def step(self, run_id: str, health: HealthPass | None = None) -> Step:
        # Every line logged while a run steps names it; once observed, its set and batch too
        # (observability/logs.py: structured logs carry the set, the upgrade and the batch).
        with log_context(upgrade=run_id):
            plan = self._plan(run_id, health or self._health.one_pass())
            return self._carry_out(run_id, plan) if isinstance(plan, _Planned) else plan

    def _plan(self, run_id: str, health: HealthPass) -> _Planned | Step:
        """Look at the run and choose its next step; a Wait is the whole step (nothing to write)."""
        now = self._clock.now()
        with self._db.read() as session:
            observed = self._observe(session, run_id, health)
        if observed is None:
            self._forget(run_id)
            return Wait(None, "no such run")
        step = plan_next_step(observed.view, now)
        if isinstance(step, Wait):
            return step
        return _Planned(observed, step, now)

    def _carry_out(self, run_id: str, plan: _Planned) -> Step:
        observed, step = plan.observed, plan.step
        batch = observed.run.batch_number + (1 if isinstance(step, StartBatch) else 0)
        with log_context(set=observed.set_name, batch=batch or None):
            return self._act(run_id, observed, step, plan.now)

    def _act(self, run_id: str, observed: _Observed, step: Step, now: datetime) -> Step:
        finished = False
        with self._db.write() as session:
            run = session.get(RollingUpgrade, run_id)
            # Someone else (another pass, a cancel) moved the run since we looked: look again next pass.
            if (
                run is None
                or run.phase != observed.run.phase
                or run.batch_number != observed.run.batch_number
                or run.cancel_requested != observed.run.cancel_requested
            ):
                return Wait(None, "the run changed under us")
            scale_set = session.get(ScaleSet, run.set_id)
            assert scale_set is not None
            if isinstance(step, StartBatch) and self._admit_batch is not None:
                reason = self._admit_batch(session, run, scale_set, step.instance_ids)
                if reason is not None:
                    return Wait(now + HEALTH_POLL, reason)
            finished = self._apply(session, run, scale_set, step, now)
        log.info("rolling upgrade %s (set %s): %s", run_id, observed.set_name, step.summary)
        if finished:
            self._forget(run_id)
        self._wake()
        if finished:
            for callback in self.on_finish:
                callback(run_id)
        return step

    def _forget(self, run_id: str) -> None:
        self._earlier.pop(run_id, None)
        self._batches.pop(run_id, None)
        self._judged.pop(run_id, None)
        self._seen.pop(run_id, None)
        self._keys.pop(run_id, None)

    # ------------------------------------------------------------------------------- observation
    def _observe(self, session: Session, run_id: str, health: HealthPass) -> _Observed | None:
        token = self._db.change_token()  # before any read it vouches for
        seen = self._seen.get(run_id)
        if token is None or seen is None or seen.token != token:
            found = session.connection().execute(_RUN, {"run_id": run_id}).first()
            if found is None:
                return None
            seen = self._seen[run_id] = _Seen(token, _RunRow._make(found))
        run = seen.run
        if run.status not in ACTIVE_STATUSES:
            return None
        set_id, uid, set_name = run.set_id, run.set_uid, run.set_name
        keys = self._keys.get(run_id)
        if keys is None or keys.uid != uid:
            keys = self._keys[run_id] = _Keys(uid)

        def model(version: int) -> Json:
            # Model versions are written once and never changed: each is read once, keyed by the set's
            # uid (a row id can come back after a delete; a uid cannot).
            key = (uid, version)
            if key not in self._models:
                if len(self._models) >= MODEL_CACHE_SIZE:
                    self._models.clear()
                row = session.get(ScaleSetModel, (set_id, version))
                if row is None:
                    return {}
                self._models[key] = row.model
            return self._models[key]

        # model version → its health check, the health source looked up once per pass
        checks: dict[int, Callable[[str, str, int, str, str], bool]] = {}

        def healthy(instance_id: int, instance: _Row) -> bool:
            check = checks.get(instance.model_version)
            if check is None:
                check = checks[instance.model_version] = health.checker(model(instance.model_version))
            return check(
                keys[instance_id],
                instance.address,
                instance.os_disk_generation,
                instance.power_state,
                instance.provisioning_state,
            )

        def healthy_many(instances: Sequence[_Row]) -> list[bool]:
            """`healthy` of many instance rows at once, in order."""
            return _health_of(health, model, [_look_of(keys, instance) for instance in instances])

        candidates: tuple[Candidate, ...] = ()
        unhealthy = 0
        if run.phase in ("rolling_back", "restoring"):
            members, instance_count = self._observe_all(session, run, set_id, healthy)
        else:
            earlier, current = self._observe_batches(session, run, seen, keys, model, health)
            members = earlier.members + tuple(m for m, _ in current)
            if run.phase == "ready":
                instance_count, candidates, unhealthy = self._candidates(
                    session, run, set_id, [row for _, row in earlier.pairs + current], healthy_many
                )
            else:
                if seen.live_count is None:
                    seen.live_count = _live_count(session, run, set_id)
                instance_count = seen.live_count
        view = RunView(
            phase=run.phase,
            batch_number=run.batch_number,
            not_before=_aware(run.not_before),
            deadline=_aware(run.deadline),
            cancel_requested=run.cancel_requested,
            rollback_on_breach=run.rollback_on_breach,
            policy=run_policy(run.policy),
            health_wait=health_wait(model(run.target_model_version)),
            instance_count=instance_count,
            unhealthy_count=unhealthy,
            candidates=candidates,
            members=members,
            roll_back_each_failure=run.roll_back_each_failure,
        )
        return _Observed(view, run, set_name)

    def _observe_all(
        self, session: Session, run: _RunRow, set_id: int, healthy: _Healthy
    ) -> tuple[tuple[Member, ...], int]:
        """Every member, its task and its instance as they are now (while rolling back, when members of
        any batch change). Returns (members, instance count)."""
        instances = {
            row.id: row
            for row in session.execute(
                select(*_INSTANCE_COLUMNS).where(
                    Instance.set_id == set_id, Instance.provisioning_state != "deleting"
                )
            )
        }
        member_rows = list(
            session.execute(
                select(*_MEMBER_COLUMNS)
                .where(UpgradeInstance.upgrade_id == run.id)
                .order_by(UpgradeInstance.instance_row_id)
            )
        )
        tasks = _latest_task_states(session, run.operation_id)
        # A replacement counts towards the set only once the instance it replaces is gone.
        extras = {
            m.surge_row_id
            for m in member_rows
            if m.surge_row_id in instances and m.instance_row_id in instances
        }
        members = tuple(
            _member(
                row,
                run,
                tasks.get(row.surge_row_id or row.instance_row_id),
                instances.get(row.surge_row_id if row.surge_row_id is not None else row.instance_row_id),
                healthy,
            )
            for row in member_rows
        )
        return members, len(instances) - len(extras)

    def _observe_batches(
        self,
        session: Session,
        run: _RunRow,
        seen: _Seen,
        keys: _Keys,
        model: Callable[[int], Json],
        health: HealthPass,
    ) -> tuple[_Earlier, list[tuple[Member, _MemberRow]]]:
        """Before a batch and while it runs: (members of earlier batches, members of the current batch),
        each with its row.

        Members of earlier batches change only when a batch is judged into a rollback, which leaves
        these phases, so between two batches they are read once and kept; the current batch's rows are
        kept from step to step (`_Batch`). Each pass reads again only its instances and task statuses,
        and not even those while the database has not changed since the last pass (`_Seen`)."""
        cached = self._earlier.get(run.id)
        if cached is None or cached.batch_number != run.batch_number:
            # Batch N + 1 has started: its earlier batches are those before N, kept, and batch N as the
            # last pass before the start saw it judged (nothing changed it since: a start touches only
            # the new batch). Read from the database only when those are not at hand (a restart).
            judged = self._judged.pop(run.id, None)
            last = run.batch_number - 1
            if (
                cached is not None
                and cached.batch_number == last
                and judged is not None
                and judged[0] == (last, "ready")
            ):
                pairs = cached.pairs + judged[1]
            else:
                pairs = self._read_earlier_members(session, run)
            earlier = self._earlier[run.id] = _Earlier(run.batch_number, pairs, tuple(m for m, _ in pairs))
        else:
            earlier = cached
        batch = self._batches.get(run.id)
        if batch is None or batch.key != (run.batch_number, run.phase):
            batch = self._read_batch(session, run)
            self._batches[run.id] = batch
        if not batch.members:
            return earlier, []
        if seen.looks is None or seen.batch_key != batch.key:
            seen.looks, seen.batch_key = self._look_at_batch(session, batch, keys), batch.key
            seen.current = None
        looks = seen.looks
        # Health, the one thing that moves between passes without a write: asked for all members at once,
        # per model version (one health source each), only of those whose health is looked at.
        verdicts = [False] * len(looks)
        watched = [(index, look) for index, (_, _, look) in enumerate(looks) if look is not None]
        answers = _health_of(health, model, [look for _, look in watched])
        for (index, _), answer in zip(watched, answers, strict=True):
            verdicts[index] = answer
        if seen.current is not None and seen.current[0] == verdicts:
            current = seen.current[1]  # nothing changed since the last pass, health included
        else:
            current = [
                (Member(row.instance_row_id, row.instance_id, row.batch, row.state, task_state, verdict), row)
                for (row, task_state, _), verdict in zip(looks, verdicts, strict=True)
            ]
            seen.current = (verdicts, current)
        if run.phase == "ready":
            self._judged[run.id] = ((run.batch_number, run.phase), current)
        return earlier, current

    @staticmethod
    def _look_at_batch(
        session: Session, batch: _Batch, keys: _Keys
    ) -> list[tuple[_MemberRow, TaskState, _Look | None]]:
        """The current batch's members with their task states and, for those whose health counts now (the
        member is upgrading, its action done, its watched instance live), what the health check needs."""
        instances = {
            row[0]: _InstanceRow._make(row)
            for row in rows_by_ids(
                session, "instances", _INSTANCE_FIELDS, [m.watched_row for m in batch.members]
            )
            if row[-1] != "deleting"
        }
        tasks = {
            row_id: status
            for row_id, status in rows_by_ids(session, "tasks", ("instance_row_id", "status"), batch.task_ids)
        }
        looks: list[tuple[_MemberRow, TaskState, _Look | None]] = []
        for row in batch.members:
            watched = instances.get(row.watched_row)
            task_state: TaskState = (
                "none" if row.action == "none" else _task_state(tasks.get(row.watched_row))
            )
            look: _Look | None = None
            if task_state == "done" and row.state == "upgrading" and watched is not None:
                look = _look_of(keys, watched)
            looks.append((row, task_state, look))
        return looks

    @staticmethod
    def _read_batch(session: Session, run: _RunRow) -> _Batch:
        members = tuple(
            _MemberRow._make(row)
            for row in raw_rows(
                session,
                f"SELECT {_MEMBER_FIELDS} FROM upgrade_instances WHERE upgrade_id = ? AND batch = ?"
                " ORDER BY instance_row_id",
                (run.id, run.batch_number),
            )
        )
        newest: dict[int, int] = {}
        for task_id, row_id in select_in(
            session,
            "SELECT id, instance_row_id FROM tasks WHERE operation_id = ? AND instance_row_id IN ({ids})"
            " ORDER BY id",
            [m.watched_row for m in members],
            leading=(run.operation_id,),
        ):
            newest[row_id] = task_id
        return _Batch((run.batch_number, run.phase), members, tuple(newest.values()))

    @staticmethod
    def _read_earlier_members(session: Session, run: _RunRow) -> list[tuple[Member, _MemberRow]]:
        rows = [
            _MemberRow._make(row)
            for row in session.execute(
                select(*_MEMBER_COLUMNS)
                .where(UpgradeInstance.upgrade_id == run.id, UpgradeInstance.batch != run.batch_number)
                .order_by(UpgradeInstance.batch, UpgradeInstance.instance_row_id)
            )
        ]
        if not rows:
            return []
        tasks = _latest_task_states(session, run.operation_id, [row.watched_row for row in rows])
        return [(_member(row, run, tasks.get(row.watched_row), None, _never), row) for row in rows]

    @staticmethod
    def _candidates(
        session: Session,
        run: _RunRow,
        set_id: int,
        member_rows: list[_MemberRow],
        healthy_many: Callable[[Sequence[_Row]], list[bool]],
    ) -> tuple[int, tuple[Candidate, ...], int]:
        """Before a batch: every live instance, its health, and those no batch has taken yet.
        Returns (instance count, candidates, unhealthy count)."""
        # `_InstanceRow._make` without its Python frame per row (a thousand rows a set before each batch):
        # the rows are the SELECT of exactly these fields.
        make = partial(tuple.__new__, _InstanceRow)
        instances: list[_InstanceRow] = [
            make(row)
            for row in rows_by_ids(session, "instances", _INSTANCE_FIELDS, [set_id], key="set_id")
            if row[-1] != "deleting"
        ]
        taken = {row.instance_row_id for row in member_rows}
        uncounted: set[int] = set()
        if any(row.surge_row_id is not None for row in member_rows):
            live = {row.id for row in instances}
            for row in member_rows:
                if row.surge_row_id is not None:
                    taken.add(row.surge_row_id)
                    # A replacement counts towards the set only once the instance it replaces is gone.
                    if row.surge_row_id in live and row.instance_row_id in live:
                        uncounted.add(row.surge_row_id)
        # Built as the plan preview builds them (engine/candidates.py), so a preview shows these batches.
        view = candidates_of_many(
            instances,
            healthy_many,
            run.target_model_version,
            taken=taken,
            uncounted=uncounted,
        )
        return view.instance_count, view.candidates, view.unhealthy_count

    # ------------------------------------------------------------------------------------ acting
    def _apply(
        self, session: Session, run: RollingUpgrade, scale_set: ScaleSet, step: Step, now: datetime
    ) -> bool:
        """Persist one step; True when the run finished."""
        if isinstance(step, ArmHealthWait):
            run.deadline = step.deadline  # the run alone changes: its operation is not read
            return False
        operation = session.get(Operation, run.operation_id) if run.operation_id else None
        assert operation is not None, "every run has its operation"
        if isinstance(step, StartBatch):
            self._start_batch(session, run, scale_set, operation, step.instance_ids, now)
            return False
        if isinstance(step, JudgeBatch):
            return self._judge(session, run, scale_set, operation, step, now)
        if isinstance(step, FinishRollback | FinishRestore):
            for row in self._members(session, run, step.rolled_back):
                row.state, row.updated_at = "rolled_back", now
            for row in self._members(session, run, step.rollback_failed):
                row.state, row.updated_at = "rollback_failed", now
            if isinstance(step, FinishRestore):
                run.phase = "ready"
                return False
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
        """The batch's members, the instances' new model and their tasks, all in this one transaction
        (persist before acting).

        Set-wise: the batch's instances are read as their (model version, image) groups, one
        `change_action` each, and the database copies the members from the instance rows (INSERT …
        SELECT), then changes the instances and writes the tasks from the members, a statement per group or
        action. No row of the batch passes through Python: binding hundreds of rows one by one cost several
        times what SQLite does with them. maxSurge batches are written by `_start_surge`."""
        target = session.get(ScaleSetModel, (scale_set.id, run.target_model_version))
        assert target is not None
        ids = list(instance_ids)
        # (model version, image) → (its lowest instance id, its instance count); ids missing from the set
        # (deleted since the plan) are in no group and so not in the batch.
        groups: dict[tuple[int, str], tuple[int, int]] = {}
        connection = session.connection()
        for chunk in chunks(ids):
            for version, image, first, count in connection.execute(
                _BATCH_GROUPS, {"set_id": scale_set.id, "ids": list(chunk)}
            ):
                seen = groups.get((version, image))
                groups[(version, image)] = (
                    (first, count) if seen is None else (min(first, seen[0]), seen[1] + count)
                )
        run.batch_number += 1
        run.phase = "upgrading"
        run.deadline = None
        run.not_before = None
        size = sum(count for _, count in groups.values())
        if run.policy.get("maxSurge") and self._surge_fits(session, scale_set, size):
            self._start_surge(session, run, scale_set, operation, ids, now)
            return
        # Each group's action. The actions in the order of their first instance, so that the tasks are
        # written in the order one pass over the batch by instance id would write them.
        actions: list[str] = []
        # Only a statement's own parameters: an UPDATE would take a key named after a column as a value.
        batch = {"run": run.id, "batch": run.batch_number}
        for version, image in sorted(groups, key=lambda group: groups[group][0]):
            action = self._action(session, run, scale_set.id, target, version, image)
            if action not in actions:
                actions.append(action)
            for chunk in chunks(ids):
                connection.execute(
                    _MEMBERS_FROM_INSTANCES,
                    {
                        **batch,
                        "now": now,
                        "set_id": scale_set.id,
                        "state": "succeeded" if action == "none" else "upgrading",
                        "action": action,
                        "version": version,
                        "image": image,
                        "ids": list(chunk),
                    },
                )
        for action in actions:
            # The new model, and what the instance shows while its task waits (`add_task`'s transition).
            values: dict[str, Any] = {
                "model_version": run.target_model_version,
                "image_version": target.exact_image_version,
                "updated_at": now,
            }
            if action == "reimage":
                values["os_disk_generation"] = Instance.os_disk_generation + 1
            if action != "none":
                provisioning, power = TRANSITIONS[action]
                if provisioning is not None:
                    values["provisioning_state"] = provisioning
                if power is not None:
                    values["power_state"] = power
            connection.execute(
                update(Instance).where(Instance.id.in_(_MEMBERS_OF_ACTION)).values(**values),
                {**batch, "action": action},
            )
        for action in actions:
            if action != "none":
                connection.execute(
                    _TASKS_FROM_MEMBERS, {**batch, "action": action, "operation": operation.id, "now": now}
                )

    @staticmethod
    def _action(
        session: Session, run: RollingUpgrade, set_id: int, target: ScaleSetModel, version: int, image: str
    ) -> str:
        """What takes an instance on model `version` and `image` to the run's target."""
        before = session.get(ScaleSetModel, (set_id, version))
        change: str = change_action(
            before.model if before else {},
            target.model,
            image,
            target.exact_image_version,
            before.extension_versions if before else None,
            target.extension_versions,
        )
        # An extension upgrade onto a model version without pins, or from one, cannot tell whether the
        # versions differ: the extensions are applied again.
        unknown = before is None or before.extension_versions is None or target.extension_versions is None
        if change == "none" and run.kind == "extension" and unknown:
            change = "extensions"
        return change

    def _start_surge(
        self,
        session: Session,
        run: RollingUpgrade,
        scale_set: ScaleSet,
        operation: Operation,
        instance_ids: list[int],
        now: datetime,
    ) -> None:
        """maxSurge: a new instance on the newest model for each of the batch's, recorded beside it. The
        old instances are left alone until their replacements are healthy (`_judge`)."""
        instances = [
            row
            for chunk in chunks(instance_ids)
            for row in session.execute(
                select(
                    Instance.id,
                    Instance.instance_id,
                    Instance.model_version,
                    Instance.image_version,
                    Instance.os_disk_generation,
                )
                .where(Instance.set_id == scale_set.id, Instance.instance_id.in_(chunk))
                .order_by(Instance.instance_id)
            )
        ]
        new_instances = self._create_instances(session, operation, scale_set, len(instances))
        if not instances:
            return  # every instance of the batch was deleted since the plan: nothing to record
        session.connection().execute(
            insert(UpgradeInstance),
            [
                {
                    "upgrade_id": run.id,
                    "instance_row_id": instance.id,
                    "instance_id": instance.instance_id,
                    "batch": run.batch_number,
                    "state": "upgrading",
                    "action": "surge",
                    "before_model_version": instance.model_version,
                    "before_image_version": instance.image_version,
                    "before_os_disk_generation": instance.os_disk_generation,
                    "surge_row_id": new.id,
                    "error": "",
                    "updated_at": now,
                }
                for instance, new in zip(instances, new_instances, strict=True)
            ],
        )

    def _surge_fits(self, session: Session, scale_set: ScaleSet, extra: int) -> bool:
        """maxSurge needs room for `extra` more instances; otherwise the batch upgrades in place (Azure)."""
        live = session.scalar(
            select(func.count()).where(
                Instance.set_id == scale_set.id, Instance.provisioning_state != "deleting"
            )
        )
        quota = int(
            (scale_set.document.get("tags") or {}).get("scaleset:instanceQuota") or self._instance_quota
        )
        return int(live or 0) + extra <= quota

    def _judge(
        self,
        session: Session,
        run: RollingUpgrade,
        scale_set: ScaleSet,
        operation: Operation,
        step: JudgeBatch,
        now: datetime,
    ) -> bool:
        # A Core statement on the connection: no member of the run is an ORM object in this session yet.
        for chunk in chunks(step.succeeded):
            session.connection().execute(_MARK_SUCCEEDED, {"run": run.id, "rows": list(chunk), "now": now})
        if run.policy.get("maxSurge"):
            for row in self._members(session, run, step.succeeded):
                if row.action == "surge":
                    # The replacement is healthy: the old instance goes.
                    old = session.get(Instance, row.instance_row_id)
                    if old is not None:
                        add_task(session, operation, old, "delete", now)
        failed_rows = self._members(session, run, step.failed)
        tasks = _latest_task_errors(
            session, run.operation_id, [r.surge_row_id or r.instance_row_id for r in failed_rows]
        )
        for row in failed_rows:
            task = tasks.get(row.surge_row_id or row.instance_row_id)
            row.state, row.updated_at = "failed", now
            row.error = (
                task[1]
                if task is not None and task[0] == "failed"
                else f"not healthy within the health wait of batch {row.batch}"
            )
        if step.outcome == "continue":
            run.phase, run.not_before, run.deadline = "ready", step.not_before, None
            return False
        if step.outcome == "restore":
            # Only this batch's failed members: earlier batches' were restored when they were judged.
            run.phase, run.not_before, run.deadline = "restoring", step.not_before, None
            for row in failed_rows:
                row.state, row.updated_at = "rolling_back", now
                self._roll_back(session, operation, row, now)
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
        elif instance.power_state == "running":
            # An extensions-only change: the guest agent goes back to the previous model's extensions, at
            # the versions that model version pins (an older handler version is a downgrade, which the
            # protocol allows), without touching the OS disk.
            add_task(session, operation, instance, "extensions", now)
        else:
            # Stopped or crashed: no guest agent would apply a goal state until something boots it. A
            # fresh OS disk boots it onto the previous model, its extensions at that version's pins.
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


class _Keys(dict[int, str]):
    """The provider keys (`<set uid>/<instance id>`) of one set's instances, by instance id, each made once:
    the same string object every pass, so its hash is computed once and the health reader's and provider's
    dictionaries compare it by identity (an upgrade of 100 000 instances looks up keys over a million
    times)."""

    def __init__(self, uid: str) -> None:
        super().__init__()
        self.uid = uid

    def __missing__(self, instance_id: int) -> str:
        key = self[instance_id] = f"{self.uid}/{instance_id}"
        return key


def _look_of(keys: _Keys, instance: _Row) -> _Look:
    """What the health check of an instance needs, from its row."""
    return (
        (
            keys[instance.instance_id],
            instance.address,
            instance.os_disk_generation,
            instance.power_state,
            instance.provisioning_state,
        ),
        instance.model_version,
    )


def _health_of(health: HealthPass, model: Callable[[int], Json], looks: Sequence[_Look]) -> list[bool]:
    """Health now of many instances, in order: one batched check per model version (each model names its
    health source), so that a load-balancer probe goes to the provider once for them all."""
    verdicts = [False] * len(looks)
    by_model: dict[int, tuple[list[int], list[tuple[str, str, int, str, str]]]] = {}
    for index, (looked, version) in enumerate(looks):
        indexes, of_model = by_model.setdefault(version, ([], []))
        indexes.append(index)
        of_model.append(looked)
    for version, (indexes, of_model) in by_model.items():
        for index, answer in zip(indexes, health.many_checker(model(version))(of_model), strict=True):
            verdicts[index] = answer
    return verdicts


def _task_state(status: str | None) -> TaskState:
    if status is None:
        return "open"  # written in the same transaction as the member: not there means not yet visible
    if status in OPEN_TASK_STATES:
        return "open"
    return "failed" if status == "failed" else "done"


def _member(
    row: _Row, run: _RunRow, task_status: str | None, watched: _Row | None, healthy: _Healthy
) -> Member:
    """One member as the planner sees it. `watched` is the live instance whose health counts (the
    replacement under maxSurge), if any; only a member of the current batch whose action is done is
    looked at for health (probing is not free, and nothing else's health matters to the batch)."""
    task_state: TaskState = "none" if row.action == "none" else _task_state(task_status)
    is_current = row.batch == run.batch_number and row.state == "upgrading"
    return Member(
        row_id=row.instance_row_id,
        instance_id=row.instance_id,
        batch=row.batch,
        state=row.state,
        task=task_state,
        healthy=bool(
            watched is not None
            and is_current
            and task_state == "done"
            and healthy(watched.instance_id, watched)
        ),
    )


def _never(instance_id: int, instance: _Row) -> bool:
    return False


def _newest(rows: Iterable[_Row]) -> dict[int, str]:
    """instance row id → status of its newest task, from (instance_row_id, status) rows in id order."""
    return {row[0]: row[1] for row in rows}


def _latest_task_states(
    session: Session, operation_id: str | None, row_ids: Sequence[int] | None = None
) -> dict[int, str]:
    """The status of the operation's newest task for each instance row (of `row_ids`; None: all)."""
    query = select(Task.instance_row_id, Task.status).where(Task.operation_id == operation_id)
    latest: dict[int, str] = {}
    if row_ids is None:
        return _newest(session.execute(query.order_by(Task.id)))
    for chunk in chunks(row_ids):
        for row_id, status in session.execute(query.where(Task.instance_row_id.in_(chunk)).order_by(Task.id)):
            latest[row_id] = status
    return latest


def _latest_task_errors(
    session: Session, operation_id: str | None, row_ids: Sequence[int]
) -> dict[int, tuple[str, str]]:
    """(status, error) of the operation's newest task for each of these instance rows."""
    latest: dict[int, tuple[str, str]] = {}
    for chunk in chunks(row_ids):
        for row_id, status, error in session.execute(
            select(Task.instance_row_id, Task.status, Task.error)
            .where(Task.operation_id == operation_id, Task.instance_row_id.in_(chunk))
            .order_by(Task.id)
        ):
            latest[row_id] = (status, error)
    return latest


_LIVE_COUNT = (
    select(func.count())
    .select_from(Instance)
    .where(Instance.set_id == bindparam("set_id"), Instance.provisioning_state != "deleting")
)


def _live_count(session: Session, run: _RunRow, set_id: int) -> int:
    """The set's live instances, less the maxSurge replacements whose original is still there."""
    live = session.connection().execute(_LIVE_COUNT, {"set_id": set_id}).scalar()
    if not run.policy.get("maxSurge"):
        return int(live or 0)  # no member of this run has a replacement
    surge, original = aliased(Instance), aliased(Instance)
    extras = session.scalar(
        select(func.count(func.distinct(UpgradeInstance.surge_row_id)))
        .join(surge, (surge.id == UpgradeInstance.surge_row_id) & (surge.provisioning_state != "deleting"))
        .join(
            original,
            (original.id == UpgradeInstance.instance_row_id) & (original.provisioning_state != "deleting"),
        )
        .where(UpgradeInstance.upgrade_id == run.id)
    )
    return int(live or 0) - int(extras or 0)


# `_start_batch`'s statements (its transaction holds no ORM object of these rows, so Core statements on the
# connection are safe, and compiled once).
# A batch's instances by (model version, image): one row per group, with its lowest instance id and size.
_BATCH_GROUPS = (
    select(Instance.model_version, Instance.image_version, func.min(Instance.instance_id), func.count())
    .where(Instance.set_id == bindparam("set_id"), Instance.instance_id.in_(bindparam("ids", expanding=True)))
    .group_by(Instance.model_version, Instance.image_version)
)
# The members of one group, with what each instance runs before the batch (for a rollback).
_MEMBERS_FROM_INSTANCES = insert(UpgradeInstance).from_select(
    [
        "upgrade_id",
        "instance_row_id",
        "instance_id",
        "batch",
        "state",
        "action",
        "before_model_version",
        "before_image_version",
        "before_os_disk_generation",
        "error",
        "updated_at",
    ],
    select(
        bindparam("run", type_=UpgradeInstance.upgrade_id.type),
        Instance.id,
        Instance.instance_id,
        bindparam("batch", type_=UpgradeInstance.batch.type),
        bindparam("state", type_=UpgradeInstance.state.type),
        bindparam("action", type_=UpgradeInstance.action.type),
        Instance.model_version,
        Instance.image_version,
        Instance.os_disk_generation,
        literal("", UpgradeInstance.error.type),
        bindparam("now", type_=UpgradeInstance.updated_at.type),
    )
    .where(
        Instance.set_id == bindparam("set_id"),
        Instance.model_version == bindparam("version"),
        Instance.image_version == bindparam("image"),
        Instance.instance_id.in_(bindparam("ids", expanding=True)),
    )
    .order_by(Instance.instance_id),
)
# The instance rows of the batch's members with one action (`ix_upgrade_instances_upgrade_batch`).
_MEMBERS_OF_ACTION = select(UpgradeInstance.instance_row_id).where(
    UpgradeInstance.upgrade_id == bindparam("run"),
    UpgradeInstance.batch == bindparam("batch"),
    UpgradeInstance.action == bindparam("action"),
)
# Their tasks, as `add_task` writes them, by instance id.
_TASKS_FROM_MEMBERS = insert(Task).from_select(
    ["operation_id", "instance_row_id", "action", "status", "error", "attempts", "created_at", "updated_at"],
    select(
        bindparam("operation", type_=Task.operation_id.type),
        UpgradeInstance.instance_row_id,
        UpgradeInstance.action,
        literal("pending", Task.status.type),
        literal("", Task.error.type),
        literal(0, Task.attempts.type),
        bindparam("now", type_=Task.created_at.type),
        bindparam("now", type_=Task.updated_at.type),
    )
    .where(
        UpgradeInstance.upgrade_id == bindparam("run"),
        UpgradeInstance.batch == bindparam("batch"),
        UpgradeInstance.action == bindparam("action"),
    )
    .order_by(UpgradeInstance.instance_id),
)
# The members a judged batch found healthy.
_MARK_SUCCEEDED = (
    update(UpgradeInstance)
    .where(
        UpgradeInstance.upgrade_id == bindparam("run"),
        UpgradeInstance.instance_row_id.in_(bindparam("rows", expanding=True)),
    )
    .values(state="succeeded", updated_at=bindparam("now", type_=UpgradeInstance.updated_at.type))
)
