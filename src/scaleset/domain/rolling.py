"""One rolling upgrade, one step at a time: the pure decision of what a run does next (M-4, M-10, M-26).

The engine observes a run (`RunView`: its persisted phase, the instances still to do, the members of
its batches with their tasks and health) and asks `plan_next_step(view, now)` for exactly one step; it
persists the step's intent, acts, and asks again on the next pass. Nothing here waits: a run that has
to wait for health says until when (`Wait`), and the engine wakes it then.

A run moves through these phases:

    ready ──StartBatch──▶ upgrading ──ArmHealthWait──▶ upgrading (health wait armed)
      ▲                                                     │
      └──────────── JudgeBatch(continue) ◀──────────────────┤
                                                            ├─ JudgeBatch(cancel)   ─▶ done  Cancelled
                                                            ├─ JudgeBatch(fault)    ─▶ done  Faulted
                                                            └─ JudgeBatch(rollback) ─▶ rolling_back
    rolling_back ──FinishRollback──▶ done Faulted            (RollingBack while the restores run)
    ready ──Finish──▶ done  (Completed: nothing left; Cancelled; Faulted by the gate before a batch)

    With `roll_back_each_failure` (automatic extension upgrades, M-19, M-22) a batch with failed members
    that does not breach the policy is judged `restore` instead of `continue`:
    upgrading ──JudgeBatch(restore)──▶ restoring ──FinishRestore──▶ ready
    (each failed member gets its previous model back, and the run goes on with the next batch).

Azure's gates (azure-api.md §2.2, §4.2), with the set of 10 instances at the default 20 %:

- Before every batch: more than 20 % of the set (3 or more of 10) unhealthy for any reason stops the run
  with `MaxUnhealthyInstancePercentExceededBeforeRollingUpgrade` (no batch yet) or
  `…InRollingUpgrade` (later).
- After a batch: every member must be healthy within the health wait (5 minutes, or the Application
  Health extension's grace period), counted from the moment the batch's last action finished. A member
  whose action failed, or that is not healthy when the wait ends, failed. More than 20 % of the upgraded
  instances failed (of the 2 upgraded after the first batch: 1 is already 50 %) stops the run
  `Faulted` with `MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade`, after rolling the failed
  members back when the run rolls back on a breach.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, NamedTuple

from scaleset.domain.batches import BatchPolicy, Candidate, exceeds_percent, fit_batch, plan_batches

# Azure's RollingUpgradeStatusCode values.
ROLLING_FORWARD = "RollingForward"
ROLLING_BACK = "RollingBack"
COMPLETED = "Completed"
CANCELLED = "Cancelled"
FAULTED = "Faulted"
ACTIVE_STATUSES = (ROLLING_FORWARD, ROLLING_BACK)

# Azure's error codes for a run that stopped on a policy breach.
UNHEALTHY_BEFORE = "MaxUnhealthyInstancePercentExceededBeforeRollingUpgrade"
UNHEALTHY_DURING = "MaxUnhealthyInstancePercentExceededInRollingUpgrade"
UNHEALTHY_UPGRADED = "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"

DEFAULT_HEALTH_WAIT = timedelta(minutes=5)
# While a batch waits for health, look again this often (health is observed, not pushed).
HEALTH_POLL = timedelta(seconds=1)

MemberState = Literal["upgrading", "succeeded", "failed", "rolling_back", "rolled_back", "rollback_failed"]
TaskState = Literal["open", "done", "failed", "none"]


class Member(NamedTuple):
    """An instance a batch of this run took: its state in the run, its task's, and its health now. (A named
    tuple: the engine makes one per member of the current batch every pass it acts, hundreds of thousands in
    an upgrade of 100 000 instances, and a frozen dataclass costs several times more to make.)"""

    row_id: int
    instance_id: int
    batch: int
    state: MemberState
    task: TaskState
    healthy: bool


@dataclass(frozen=True)
class RunPolicy:
    batches: BatchPolicy
    max_unhealthy_upgraded_instance_percent: int = 20
    pause_between_batches: timedelta = timedelta(0)


@dataclass(frozen=True)
class RunView:
    phase: str  # ready | upgrading | rolling_back | done
    batch_number: int  # batches started so far; the current one while upgrading
    not_before: datetime | None
    deadline: datetime | None
    cancel_requested: bool
    rollback_on_breach: bool
    policy: RunPolicy
    health_wait: timedelta
    instance_count: int  # every live instance of the set
    unhealthy_count: int  # live instances not healthy now, for any reason
    candidates: tuple[Candidate, ...]  # live instances no batch of this run has taken yet
    members: tuple[Member, ...]
    # Roll each failed member back as soon as its batch is judged, not only on a breach (M-19, M-22).
    roll_back_each_failure: bool = False


# ------------------------------------------------------------------------------------------- steps
@dataclass(frozen=True)
class Wait:
    """Nothing to do now; look again at `until` (None: when an action finishes)."""

    until: datetime | None
    summary: str


@dataclass(frozen=True)
class StartBatch:
    instance_ids: tuple[int, ...]
    summary: str


@dataclass(frozen=True)
class ArmHealthWait:
    """The batch's actions are done: its members have until `deadline` to be healthy."""

    deadline: datetime
    summary: str


@dataclass(frozen=True)
class JudgeBatch:
    succeeded: tuple[int, ...]  # row ids
    failed: tuple[int, ...]
    outcome: Literal["continue", "restore", "cancel", "fault", "rollback"]
    summary: str
    error_code: str | None = None
    not_before: datetime | None = None  # continue, restore: the pause between batches


@dataclass(frozen=True)
class FinishRestore:
    """The failed members of the batch just judged are back on their previous model: go on."""

    rolled_back: tuple[int, ...]
    rollback_failed: tuple[int, ...]
    summary: str


@dataclass(frozen=True)
class FinishRollback:
    rolled_back: tuple[int, ...]
    rollback_failed: tuple[int, ...]
    summary: str


@dataclass(frozen=True)
class Finish:
    status: str
    summary: str
    error_code: str | None = None


Step = Wait | StartBatch | ArmHealthWait | JudgeBatch | FinishRollback | FinishRestore | Finish


# ---------------------------------------------------------------------------------------- planning
def plan_next_step(view: RunView, now: datetime) -> Step:
    """The one thing the run does next."""
    if view.phase == "ready":
        return _next_batch(view, now)
    if view.phase == "upgrading":
        return _judge_current_batch(view, now)
    if view.phase == "rolling_back":
        return _finish_rollback(view)
    if view.phase == "restoring":
        return _finish_restore(view)
    return Wait(None, "the run is over")


def _next_batch(view: RunView, now: datetime) -> Step:
    # A cancel during the pause between batches ends the run now: there is no current batch to finish.
    if view.cancel_requested:
        return Finish(CANCELLED, "cancelled before the next batch")
    if view.not_before is not None and now < view.not_before:
        return Wait(view.not_before, "pausing between batches")
    plan = plan_batches(view.candidates, view.policy.batches, view.instance_count)
    first = plan.first()
    if not first:
        return Finish(COMPLETED, "every instance runs the target model")
    if exceeds_percent(
        view.unhealthy_count, view.instance_count, view.policy.batches.max_unhealthy_instance_percent
    ):
        code = UNHEALTHY_BEFORE if view.batch_number == 0 else UNHEALTHY_DURING
        return Finish(
            FAULTED,
            f"{view.unhealthy_count} of {view.instance_count} instances are unhealthy, more than "
            f"{view.policy.batches.max_unhealthy_instance_percent}% (maxUnhealthyInstancePercent)",
            code,
        )
    by_id = {c.instance_id: c for c in view.candidates}
    batch = [by_id[i] for i in first]
    unhealthy_in_batch = sum(1 for c in batch if not c.healthy)
    chosen = fit_batch(
        batch, view.unhealthy_count - unhealthy_in_batch, view.policy.batches, view.instance_count
    )
    return StartBatch(chosen, f"batch {view.batch_number + 1}: instances {', '.join(map(str, chosen))}")


def _judge_current_batch(view: RunView, now: datetime) -> Step:
    batch = [m for m in view.members if m.batch == view.batch_number]
    if any(m.task == "open" for m in batch):
        return Wait(None, f"batch {view.batch_number}: waiting for its actions")
    if view.deadline is None:
        return ArmHealthWait(now + view.health_wait, f"batch {view.batch_number}: waiting for health")
    failed = [m for m in batch if m.task == "failed" or (m.task != "none" and not m.healthy)]
    undecided = [m for m in failed if m.task != "failed"]
    if undecided and now < view.deadline:
        return Wait(min(view.deadline, now + HEALTH_POLL), f"batch {view.batch_number}: waiting for health")
    failed_ids = {m.row_id for m in failed}
    succeeded = tuple(m.row_id for m in batch if m.row_id not in failed_ids)
    failed_rows = tuple(sorted(failed_ids))
    earlier_failures = sum(1 for m in view.members if m.batch != view.batch_number and m.state != "succeeded")
    upgraded = len(view.members)
    percent = view.policy.max_unhealthy_upgraded_instance_percent
    if exceeds_percent(earlier_failures + len(failed_rows), upgraded, percent):
        summary = (
            f"{earlier_failures + len(failed_rows)} of {upgraded} upgraded instances are unhealthy, "
            f"more than {percent}% (maxUnhealthyUpgradedInstancePercent)"
        )
        outcome: Literal["rollback", "fault"] = (
            "rollback" if view.rollback_on_breach and failed_rows else "fault"
        )
        return JudgeBatch(succeeded, failed_rows, outcome, summary, UNHEALTHY_UPGRADED)
    if view.roll_back_each_failure and failed_rows:
        # A cancel waits for these restores: the next step in `ready` ends the run.
        return JudgeBatch(
            succeeded,
            failed_rows,
            "restore",
            f"batch {view.batch_number} done: {len(succeeded)} healthy, {len(failed_rows)} failed and "
            "rolled back to their previous model",
            not_before=now + view.policy.pause_between_batches,
        )
    if view.cancel_requested:
        return JudgeBatch(succeeded, failed_rows, "cancel", f"batch {view.batch_number} done; cancelled")
    return JudgeBatch(
        succeeded,
        failed_rows,
        "continue",
        f"batch {view.batch_number} done: {len(succeeded)} healthy, {len(failed_rows)} failed",
        not_before=now + view.policy.pause_between_batches,
    )


def _finish_rollback(view: RunView) -> Step:
    rolling = [m for m in view.members if m.state == "rolling_back"]
    if any(m.task == "open" for m in rolling):
        return Wait(None, "rolling back failed instances")
    return FinishRollback(
        tuple(m.row_id for m in rolling if m.task != "failed"),
        tuple(m.row_id for m in rolling if m.task == "failed"),
        f"rolled back {len(rolling)} instance(s)",
    )


def _finish_restore(view: RunView) -> Step:
    rolling = [m for m in view.members if m.state == "rolling_back"]
    if any(m.task == "open" for m in rolling):
        return Wait(None, f"batch {view.batch_number}: rolling its failed instances back")
    return FinishRestore(
        tuple(m.row_id for m in rolling if m.task != "failed"),
        tuple(m.row_id for m in rolling if m.task == "failed"),
        f"batch {view.batch_number}: rolled {len(rolling)} failed instance(s) back; going on",
    )


def counts(members: Sequence[Member], pending: int) -> dict[str, int]:
    """Azure's `progress` of a run, computed from its members (status is computed, not accumulated)."""
    return {
        "successfulInstanceCount": sum(1 for m in members if m.state == "succeeded"),
        "failedInstanceCount": sum(
            1 for m in members if m.state in ("failed", "rolled_back", "rollback_failed")
        ),
        "inProgressInstanceCount": sum(1 for m in members if m.state in ("upgrading", "rolling_back")),
        "pendingInstanceCount": pending,
    }
