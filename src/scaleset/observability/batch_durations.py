"""How long rolling-upgrade batches took, read back from what the engine already persists.

No engine hook records a batch: the rows say when it started and when it was judged.

- **started**: when the batch's tasks were committed (`tasks.created_at`; the engine writes a batch's
  members and their tasks in one step, persisting before acting).
- **judged**: when the engine decided the batch (healthy, failed or out of time). That step stamps every
  member's `updated_at`, and also writes any follow-up task (a rollback, or deleting the instance a
  maxSurge replacement stood in for). Later steps only touch those rows again (a rollback finishing), so
  the judgement is the earliest of the members' `updated_at` and of the batch's tasks made after it started.

A batch counts once it is judged (no member is still `upgrading`); its outcome is `failed` when any member
failed (whether rolled back or not), else `succeeded`. A batch with no task at all (every member already
on the target model) took no time and is left out. Judged batches never change, so each is read once and
kept: a scrape reads only the runs that are active or have not been read since they finished.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from scaleset.domain.rolling import ACTIVE_STATUSES
from scaleset.store.tables import RollingUpgrade, Task, UpgradeInstance

# Batches of a health-gated upgrade last from seconds (no health source) to the 5-minute health wait and
# beyond (slow boots, maxSurge); Prometheus buckets are cumulative upper bounds.
BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_FAILED_STATES = ("failed", "rolling_back", "rolled_back", "rollback_failed")


@dataclass(frozen=True)
class JudgedBatch:
    upgrade_id: str
    batch: int
    kind: str
    outcome: str  # succeeded | failed
    seconds: float


@dataclass
class DurationHistogram:
    """Cumulative bucket counts and the sum, as Prometheus wants them, for one (kind, outcome)."""

    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: int = 0
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[index] += 1
        self.total += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        return [(str(float(b)), float(c)) for b, c in zip(BUCKETS, self.counts, strict=True)] + [
            ("+Inf", float(self.total))
        ]


def _aware(moment: datetime) -> datetime:
    # SQLite hands datetimes back without their zone; they were stored as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _BatchSummary:
    batch: int
    open: int
    failed: int
    earliest_update: datetime


def _batch_summaries(session: Session, upgrade_id: str, after_batch: int) -> list[_BatchSummary]:
    rows = session.execute(
        select(
            UpgradeInstance.batch,
            func.sum(case((UpgradeInstance.state == "upgrading", 1), else_=0)),
            func.sum(case((UpgradeInstance.state.in_(_FAILED_STATES), 1), else_=0)),
            func.min(UpgradeInstance.updated_at),
        )
        .where(UpgradeInstance.upgrade_id == upgrade_id, UpgradeInstance.batch > after_batch)
        .group_by(UpgradeInstance.batch)
        .order_by(UpgradeInstance.batch)
    )
    return [_BatchSummary(int(b), int(o or 0), int(f or 0), _aware(u)) for b, o, f, u in rows]


def _task_times_by_batch(
    session: Session, upgrade_id: str, operation_id: str, batches: Sequence[int], since: datetime | None
) -> dict[int, list[datetime]]:
    """Creation times of the tasks on each batch's instances (and their maxSurge replacements), made at or
    after `since` (a batch starts only once the one before it was judged, so older tasks are not theirs)."""
    batch_of_row: dict[int, int] = {}
    for batch, row_id, surge_row_id in session.execute(
        select(UpgradeInstance.batch, UpgradeInstance.instance_row_id, UpgradeInstance.surge_row_id).where(
            UpgradeInstance.upgrade_id == upgrade_id, UpgradeInstance.batch.in_(list(batches))
        )
    ):
        batch_of_row[row_id] = batch
        if surge_row_id is not None:
            batch_of_row[surge_row_id] = batch
    times: dict[int, list[datetime]] = {}
    tasks = select(Task.instance_row_id, Task.created_at).where(Task.operation_id == operation_id)
    if since is not None:
        tasks = tasks.where(Task.created_at >= since)
    for row_id, created_at in session.execute(tasks):
        if row_id in batch_of_row:
            times.setdefault(batch_of_row[row_id], []).append(_aware(created_at))
    return times


def judge_time(earliest_update: datetime, task_times: Iterable[datetime]) -> tuple[datetime, datetime]:
    """(started, judged) of one batch, from its members' earliest `updated_at` and its tasks' times."""
    ordered = sorted(set(task_times))
    started = ordered[0]
    later_tasks = [t for t in ordered if t > started]
    judged = min([earliest_update, *later_tasks[:1]])
    return started, max(judged, started)


class BatchDurations:
    """Every judged batch in the database, read incrementally; `histograms()` for the collector."""

    def __init__(self) -> None:
        self._read_through: dict[str, int] = {}  # run id → highest batch number already counted
        self._judged_until: dict[str, datetime] = {}  # run id → when that batch was judged
        self._finished: set[str] = set()  # runs read after they ended: nothing more will come
        self._histograms: dict[tuple[str, str], DurationHistogram] = {}
        self._lock = threading.Lock()  # two scrapes at once must not count a batch twice

    def histograms(self) -> dict[tuple[str, str], DurationHistogram]:
        """(kind, outcome) → histogram; a copy, safe to read while another scrape refreshes."""
        with self._lock:
            return {
                key: DurationHistogram(list(h.counts), h.total, h.sum) for key, h in self._histograms.items()
            }

    def refresh(self, session: Session) -> list[JudgedBatch]:
        """Read batches judged since the last refresh; returns them (already counted)."""
        with self._lock:
            return self._refresh(session)

    def _refresh(self, session: Session) -> list[JudgedBatch]:
        runs = session.execute(
            select(RollingUpgrade.id, RollingUpgrade.kind, RollingUpgrade.operation_id, RollingUpgrade.status)
        ).all()
        found: list[JudgedBatch] = []
        for upgrade_id, kind, operation_id, status in runs:
            if upgrade_id in self._finished or operation_id is None:
                continue
            found += self._read_run(session, upgrade_id, kind, operation_id)
            if status not in ACTIVE_STATUSES:
                self._finished.add(upgrade_id)
        for judged in found:
            self._histograms.setdefault((judged.kind, judged.outcome), DurationHistogram()).observe(
                judged.seconds
            )
        return found

    def _read_run(self, session: Session, upgrade_id: str, kind: str, operation_id: str) -> list[JudgedBatch]:
        after = self._read_through.get(upgrade_id, 0)
        summaries = _batch_summaries(session, upgrade_id, after)
        judged: list[_BatchSummary] = []
        for summary in summaries:
            if summary.open:  # batches are judged in order: the rest are not yet
                break
            judged.append(summary)
        if not judged:
            return []
        times = _task_times_by_batch(
            session, upgrade_id, operation_id, [s.batch for s in judged], self._judged_until.get(upgrade_id)
        )
        self._read_through[upgrade_id] = judged[-1].batch
        found = []
        for summary in judged:
            if summary.batch not in times:
                continue
            started, ended = judge_time(summary.earliest_update, times[summary.batch])
            self._judged_until[upgrade_id] = ended
            outcome = "failed" if summary.failed else "succeeded"
            found.append(
                JudgedBatch(upgrade_id, summary.batch, kind, outcome, (ended - started).total_seconds())
            )
        return found
