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

from collections.abc import Callable, Collection, Iterable, Sequence
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

    `instances` are the rows not being deleted; `healthy` is asked once per counted row, in row order (a
    load-balancer probe may be sent), never for an `uncounted` one. `taken` and `uncounted` hold row ids
    (`Instance.id`), not instance ids.
    """
    return candidates_of_many(
        instances,
        lambda rows: [healthy(row) for row in rows],
        target_model_version,
        taken=taken,
        uncounted=uncounted,
    )


def candidates_of_many(
    instances: Iterable[Row],
    healthy_many: Callable[[Sequence[Row]], Sequence[bool]],
    target_model_version: int,
    *,
    taken: Collection[int] = (),
    uncounted: Collection[int] = (),
) -> CandidateView:
    """`candidates_of` with every counted row's health asked at once: `healthy_many(rows)` gives a verdict
    per row, in order (probes may then be sent together), and is called once, with the counted rows."""
    counted = [row for row in instances if row.id not in uncounted]
    verdicts = healthy_many(counted)
    unhealthy = sorted([row.instance_id for row, ok in zip(counted, verdicts, strict=True) if not ok])
    candidates = tuple(
        [
            Candidate(
                row.instance_id,
                row.zone,
                row.update_domain,
                ok,
                row.model_version >= target_model_version,
                row.protect_from_scale_set_actions,
            )
            for row, ok in zip(counted, verdicts, strict=True)
            if row.id not in taken
        ]
    )
    return CandidateView(candidates, len(counted), tuple(unhealthy))
