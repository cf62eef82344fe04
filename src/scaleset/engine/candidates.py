"""The set's instances as the batch planner sees them, built one way for the rolling engine and the plan
preview (M-4, M-10, M-26).

A preview is only worth something if the real upgrade then runs the batches it showed. Both therefore
turn instance rows and health verdicts into `Candidate`s here, with the same rules:

- an instance row the run does not count at all (`uncounted`: a maxSurge replacement whose old instance
  still exists) is neither a candidate nor part of the instance count or the unhealthy count;
- every other live instance counts towards the set's size, and towards its unhealthy count when its
  health verdict says so — whether or not the run has already taken it;
- an instance the run has taken (`taken`: members of earlier batches, maxSurge replacements) is not a
  candidate again;
- a candidate is current when it already runs the target model version (or a newer one), and protected
  when `protectFromScaleSetActions` is set; `plan_batches` skips both.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from scaleset.domain.batches import Candidate


class InstanceRow(Protocol):
    """What the planner reads of an instance row (`store.tables.Instance` has it all)."""

    @property
    def id(self) -> int: ...

    @property
    def instance_id(self) -> int: ...

    @property
    def zone(self) -> str | None: ...

    @property
    def update_domain(self) -> int: ...

    @property
    def model_version(self) -> int: ...

    @property
    def protect_from_scale_set_actions(self) -> bool: ...


Row = TypeVar("Row", bound=InstanceRow)


@dataclass(frozen=True)
class CandidateView:
    """What one look at the set gives the planner."""

    candidates: tuple[Candidate, ...]  # live instances the run may still take
    instance_count: int  # live instances the run counts, taken ones included
    unhealthy_ids: tuple[int, ...]  # instance ids of the counted instances that are not healthy now

    @property
    def unhealthy_count(self) -> int:
        return len(self.unhealthy_ids)


def candidates_of(
    instances: Iterable[Row],
    healthy: Callable[[Row], bool],
    target_model_version: int,
    *,
    taken: Collection[int] = (),
    uncounted: Collection[int] = (),
) -> CandidateView:
    """The candidates of a run towards `target_model_version`, from the set's live instance rows.

    `instances` are the rows not being deleted; `healthy` is asked once per counted row (a load-balancer
    probe may be sent), never for an `uncounted` one. `taken` and `uncounted` hold row ids (`Instance.id`),
    not instance ids.
    """
    candidates: list[Candidate] = []
    unhealthy: list[int] = []
    counted = 0
    for instance in instances:
        if instance.id in uncounted:
            continue
        counted += 1
        is_healthy = healthy(instance)
        if not is_healthy:
            unhealthy.append(instance.instance_id)
        if instance.id in taken:
            continue
        candidates.append(
            Candidate(
                instance_id=instance.instance_id,
                zone=instance.zone,
                update_domain=instance.update_domain,
                healthy=is_healthy,
                current=instance.model_version >= target_model_version,
                protected=instance.protect_from_scale_set_actions,
            )
        )
    return CandidateView(tuple(candidates), counted, tuple(sorted(unhealthy)))
