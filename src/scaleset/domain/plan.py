"""A rolling upgrade's plan, before it runs: batches, skipped instances, worst disruption, duration and the
gate's verdict (M-4, M-5, M-6, M-10, M-17, M-21; docs/plan-preview.md).

`preview_upgrade` replays what the rolling engine does before each batch (`domain/rolling.py`
`_next_batch`): `plan_batches` over the candidates still left, the front batch cut by `fit_batch` to the
unhealthy budget, the chosen instances taken. It assumes that nothing changes while the upgrade runs and
that every batch succeeds: instances not yet upgraded keep the health they have now, and upgraded ones
are healthy when their batch is judged. Under that assumption the real run starts exactly these batches
(`tests/unit/test_plan.py` runs one and compares).

Definitions (all figures use the set's instance count, skipped instances included):

- **Out of service while a batch runs**: the instances unhealthy at that moment outside the batch, plus
  the batch's members (each is reimaged or its extensions replaced). With maxSurge the old instances keep
  serving until their replacements are healthy, so only the unhealthy ones count; a batch for which the
  instance quota has no room upgrades in place (Azure's fallback), and then its members count again.
  The **worst** is the largest of these over the plan; it exceeds the unhealthy budget only when
  `fit_batch` has to take one instance anyway (it always does, so that an upgrade moves): with instances
  already down, or in a set whose budget is 0 (4 instances at 20 %).
- **Duration**: per batch, the pause between batches plus the health wait. The shortest is the quickest
  verdict the health source can give (one probe interval for a load-balancer probe, interval × number of
  probes for the Application Health extension, nothing for the instance-state fallback); the longest is
  the whole health wait (5 minutes, or the Application Health grace period). The time the actions
  themselves take (reimage, boot) is not included: the health wait starts when they finish.
- **Gate**: with more than maxUnhealthyInstancePercent of the set unhealthy now, the run would stop
  before its next batch with `MaxUnhealthyInstancePercentExceededBeforeRollingUpgrade` (…`InRollingUpgrade`
  once a batch has run), and the plan has no batches. A running upgrade that was cancelled starts no
  further batch (`Cancelling`); one with nothing left completes (`NothingToDo`).

Worked example (domain/batches.py example 5): ids 0–9, update domain id % 5, 20 %, instance 2 protected
and 7 already current, all healthy, load-balancer probe every 5 s, no pause: batches (0, 5), (1, 6),
(3, 8), (4, 9); skipped 2 Protected, 7 AlreadyCurrent; at worst 2 out of service (budget 2); between
4 × 5 s = 20 s and 4 × 5 min = 20 min.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from scaleset.domain.batches import (
    Candidate,
    Skipped,
    exceeds_percent,
    fit_batch,
    plan_batches,
    unhealthy_budget,
)
from scaleset.domain.rolling import UNHEALTHY_BEFORE, UNHEALTHY_DURING, RunPolicy
from scaleset.domain.scaleset_spec import APPLICATION_HEALTH_TYPES

# Where a set's health comes from (engine/health.py checks them in this order).
LOAD_BALANCER_PROBE = "LoadBalancerProbe"
APPLICATION_HEALTH_EXTENSION = "ApplicationHealthExtension"
INSTANCE_STATE = "InstanceState"

# The gate's verdicts.
PROCEED = "Proceed"
STOP = "Stop"
NOTHING_TO_DO = "NothingToDo"
CANCELLING = "Cancelling"

# Azure's Application Health defaults (azure-api.md §4.5).
_APP_HEALTH_INTERVAL = 5
_APP_HEALTH_PROBES = 1


@dataclass(frozen=True)
class HealthTiming:
    """How long the health wait after a batch can take."""

    source: str
    quickest: timedelta  # the soonest a healthy batch is judged healthy
    timeout: timedelta  # the health wait: after it, a member not healthy has failed


@dataclass(frozen=True)
class PlannedInstance:
    instance_id: int
    zone: str | None
    update_domain: int
    healthy: bool


@dataclass(frozen=True)
class PlannedBatch:
    number: int  # as the run numbers its batches (UpgradeInstance.batch): 1 is the first
    instances: tuple[PlannedInstance, ...]
    out_of_service: int
    surge: bool  # replaced by new instances (maxSurge) rather than upgraded in place

    @property
    def instance_ids(self) -> tuple[int, ...]:
        return tuple(i.instance_id for i in self.instances)

    @property
    def update_domain(self) -> int:
        # A batch never spans update domains (domain/batches.py).
        return self.instances[0].update_domain

    @property
    def zones(self) -> tuple[str, ...]:
        return tuple(sorted({i.zone for i in self.instances if i.zone is not None}))


@dataclass(frozen=True)
class Gate:
    verdict: str  # PROCEED | STOP | NOTHING_TO_DO | CANCELLING
    message: str
    code: str | None = None  # Azure's error code when the run would stop


@dataclass(frozen=True)
class UpgradePlan:
    instance_count: int
    batch_size: int
    unhealthy_budget: int
    unhealthy_ids: tuple[int, ...]
    gate: Gate
    batches: tuple[PlannedBatch, ...]
    skipped: tuple[Skipped, ...]
    worst_out_of_service: int
    peak_instance_count: int  # the most instances the set has at once (more than its size with maxSurge)
    pause: timedelta
    timing: HealthTiming
    shortest: timedelta
    longest: timedelta

    def summary(self) -> str:
        """One line for people."""
        skipped = f"{len(self.skipped)} skipped" if self.skipped else "none skipped"
        if self.gate.verdict != PROCEED:
            return f"{self.gate.message}; {skipped}."
        largest = max(len(b.instances) for b in self.batches)
        return (
            f"{len(self.batches)} batch{'es' if len(self.batches) != 1 else ''} of at most {largest} "
            f"(of {self.instance_count} instances, {skipped}); at worst {self.worst_out_of_service} out of "
            f"service (budget {self.unhealthy_budget}); {format_duration(self.shortest)} to "
            f"{format_duration(self.longest)} of health waits and pauses."
        )


# ------------------------------------------------------------------------------------------- planning
def preview_upgrade(
    candidates: Sequence[Candidate],
    instance_count: int,
    unhealthy_ids: Collection[int],
    policy: RunPolicy,
    timing: HealthTiming,
    *,
    surge_quota: int | None = None,
    batches_started: int = 0,
    cancel_requested: bool = False,
) -> UpgradePlan:
    """The batches the engine would run from here, assuming nothing changes and every batch succeeds.

    `candidates`, `instance_count` and `unhealthy_ids` are one look at the set (`engine/candidates.py`);
    `surge_quota` is the set's instance quota when the policy asks for maxSurge (None: in place);
    `batches_started` counts the batches a running upgrade has already started, and `cancel_requested`
    says whether it was cancelled (it then starts no further batch).
    """
    batch_policy = policy.batches
    count = instance_count
    budget = unhealthy_budget(batch_policy.max_unhealthy_instance_percent, count)
    unhealthy = set(unhealthy_ids)
    opening = plan_batches(candidates, batch_policy, count)
    gate = _gate(
        bool(opening.batches),
        len(unhealthy),
        count,
        batch_policy.max_unhealthy_instance_percent,
        batches_started,
        cancel_requested,
    )
    batches: tuple[PlannedBatch, ...] = ()
    if gate.verdict == PROCEED:
        batches = _replay(candidates, count, unhealthy, policy, surge_quota, batches_started)
    per_batch_least = policy.pause_between_batches + timing.quickest
    per_batch_most = policy.pause_between_batches + timing.timeout
    return UpgradePlan(
        instance_count=count,
        batch_size=opening.batch_size,
        unhealthy_budget=budget,
        unhealthy_ids=tuple(sorted(unhealthy)),
        gate=gate,
        batches=batches,
        skipped=opening.skipped,
        worst_out_of_service=max([len(unhealthy), *(b.out_of_service for b in batches)]),
        peak_instance_count=count + max([0, *(len(b.instances) for b in batches if b.surge)]),
        pause=policy.pause_between_batches,
        timing=timing,
        shortest=per_batch_least * len(batches),
        longest=per_batch_most * len(batches),
    )


def _gate(
    has_work: bool, unhealthy: int, count: int, percent: int, batches_started: int, cancel_requested: bool
) -> Gate:
    # The engine's order (domain/rolling.py `_next_batch`): a cancel ends the run before anything else,
    # and nothing left finishes it before the health gate is looked at.
    if cancel_requested:
        return Gate(CANCELLING, "the running upgrade was cancelled: it starts no further batch")
    if not has_work:
        return Gate(NOTHING_TO_DO, "nothing to upgrade: every instance is already current or protected")
    if exceeds_percent(unhealthy, count, percent):
        code = UNHEALTHY_BEFORE if batches_started == 0 else UNHEALTHY_DURING
        return Gate(
            STOP,
            f"the upgrade would stop before its next batch ({code}): {unhealthy} of {count} instances "
            f"are unhealthy, more than {percent}% (maxUnhealthyInstancePercent)",
            code,
        )
    return Gate(PROCEED, f"{unhealthy} of {count} instances unhealthy, within {percent}%")


def _replay(
    candidates: Sequence[Candidate],
    count: int,
    unhealthy: set[int],
    policy: RunPolicy,
    surge_quota: int | None,
    batches_started: int,
) -> tuple[PlannedBatch, ...]:
    """The engine's loop, one batch per turn; `unhealthy` loses each batch's members as they recover."""
    remaining = list(candidates)
    unhealthy = set(unhealthy)
    planned: list[PlannedBatch] = []
    while True:
        front = plan_batches(remaining, policy.batches, count).first()
        if not front:
            return tuple(planned)
        by_id = {c.instance_id: c for c in remaining}
        batch = [by_id[i] for i in front]
        unhealthy_in_batch = sum(1 for c in batch if not c.healthy)
        chosen = set(fit_batch(batch, len(unhealthy) - unhealthy_in_batch, policy.batches, count))
        members = [c for c in batch if c.instance_id in chosen]
        # The engine checks the quota against the live instances before every batch (`_surge_fits`);
        # with earlier batches' old instances deleted, that is the set's size.
        surge = surge_quota is not None and count + len(members) <= surge_quota
        taken_down = 0 if surge else sum(1 for c in members if c.instance_id not in unhealthy)
        planned.append(
            PlannedBatch(
                number=batches_started + len(planned) + 1,
                instances=tuple(
                    PlannedInstance(c.instance_id, c.zone, c.update_domain, c.healthy) for c in members
                ),
                out_of_service=len(unhealthy) + taken_down,
                surge=surge,
            )
        )
        remaining = [c for c in remaining if c.instance_id not in chosen]
        unhealthy -= chosen


# ------------------------------------------------------------------------------------------ health timing
def health_timing(
    model: Mapping[str, Any], probe_interval_seconds: int | None, health_wait: timedelta
) -> HealthTiming:
    """The health source of a model (a `virtualMachineProfile`) and how soon it can give a verdict.

    `probe_interval_seconds` is the interval of the load-balancer probe the model names (None when it
    names none, or the probe is gone); `health_wait` is engine/rolling.py `health_wait(model)`.
    Examples: a probe every 5 s → (LoadBalancerProbe, 5 s); Application Health with intervalInSeconds 10
    and numberOfProbes 3 → 30 s; neither → InstanceState, 0 s (healthy once running and provisioned).
    """
    if ((model.get("networkProfile") or {}).get("healthProbe") or {}).get("id"):
        # A probe that is gone makes every instance "unknown": no verdict comes before the wait ends.
        quickest = timedelta(seconds=probe_interval_seconds) if probe_interval_seconds else health_wait
        return HealthTiming(LOAD_BALANCER_PROBE, quickest, health_wait)
    for extension in (model.get("extensionProfile") or {}).get("extensions") or []:
        properties = (extension.get("properties") or {}) if isinstance(extension, Mapping) else {}
        if str(properties.get("type", "")).lower() in APPLICATION_HEALTH_TYPES:
            settings = properties.get("settings") or {}
            interval = _positive(settings.get("intervalInSeconds"), _APP_HEALTH_INTERVAL)
            probes = _positive(settings.get("numberOfProbes"), _APP_HEALTH_PROBES)
            return HealthTiming(
                APPLICATION_HEALTH_EXTENSION,
                min(timedelta(seconds=interval * probes), health_wait),
                health_wait,
            )
    return HealthTiming(INSTANCE_STATE, timedelta(0), health_wait)


def _positive(value: Any, default: int) -> int:
    # Settings were validated when the model was stored; anything else falls back to Azure's default.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def format_duration(span: timedelta) -> str:
    """ISO 8601, as Azure writes durations: 0 → PT0S, 90 s → PT1M30S, 25 min → PT25M, 2 h → PT2H."""
    seconds = int(span.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    return text + (f"{seconds}S" if seconds or text == "PT" else "")
