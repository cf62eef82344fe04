"""Rolling-upgrade batch planning (M-4, M-10, M-21, M-26): the docstring examples, then properties."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleset.domain.batches import (
    ALREADY_CURRENT,
    PROTECTED,
    BatchPlan,
    BatchPolicy,
    Candidate,
    Skipped,
    batch_size,
    exceeds_percent,
    fit_batch,
    plan_batches,
    unhealthy_budget,
)

DEFAULT = BatchPolicy()
fast = settings(max_examples=200, deadline=None)


def regional_set(
    count: int = 10,
    unhealthy: Sequence[int] = (),
    current: Sequence[int] = (),
    protected: Sequence[int] = (),
) -> list[Candidate]:
    """Ids 0..count-1 in no zone, update domain id % 5: the set of the module's examples 1, 4, 5."""
    return [
        Candidate(i, None, i % 5, i not in unhealthy, current=i in current, protected=i in protected)
        for i in range(count)
    ]


def three_zone_set() -> list[Candidate]:
    """Example 2: ids 0-4 in zone "1", 5-9 in "2", 10-14 in "3", update domain id % 5."""
    return [Candidate(i, str(i // 5 + 1), i % 5, True) for i in range(15)]


def by_id(candidates: Sequence[Candidate]) -> dict[int, Candidate]:
    return {candidate.instance_id: candidate for candidate in candidates}


# -------------------------------------------------------------------------------- worked examples
def test_example_1_ten_instances_over_five_update_domains() -> None:
    plan = plan_batches(regional_set(), DEFAULT)

    assert plan.batch_size == 2
    assert plan.batches == ((0, 5), (1, 6), (2, 7), (3, 8), (4, 9))
    assert plan.skipped == ()
    assert plan.first() == (0, 5)


def test_example_1_at_100_percent_update_domains_still_split_the_set() -> None:
    plan = plan_batches(regional_set(), BatchPolicy(max_batch_instance_percent=100))

    assert plan.batch_size == 10
    assert plan.batches == ((0, 5), (1, 6), (2, 7), (3, 8), (4, 9))


def test_example_2_three_zones_never_share_a_batch() -> None:
    plan = plan_batches(three_zone_set(), DEFAULT)

    assert plan.batch_size == 3
    assert plan.batches == tuple((i,) for i in range(15))


def test_example_2_cross_zone_batches_are_update_domains() -> None:
    plan = plan_batches(three_zone_set(), BatchPolicy(enable_cross_zone_upgrade=True))

    assert plan.batch_size == 3
    assert plan.batches == ((0, 5, 10), (1, 6, 11), (2, 7, 12), (3, 8, 13), (4, 9, 14))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_example_3_five_or_fewer_instances_go_one_at_a_time(count: int) -> None:
    assert batch_size(20, count) == 1


def test_example_3_four_instances_in_one_update_domain() -> None:
    candidates = [Candidate(i, None, 0, True) for i in range(4)]

    assert batch_size(20, 5) == 1
    assert batch_size(20, 4) == 1
    assert plan_batches(candidates, DEFAULT).batches == ((0,), (1,), (2,), (3,))


def test_example_4_unhealthy_first() -> None:
    candidates = regional_set(unhealthy=(6, 8))

    prioritized = plan_batches(candidates, BatchPolicy(prioritize_unhealthy_instances=True))

    assert prioritized.batches == ((6,), (8,), (0, 5), (1,), (2, 7), (3,), (4, 9))
    assert plan_batches(candidates, DEFAULT).batches == ((0, 5), (1, 6), (2, 7), (3, 8), (4, 9))


def test_example_5_protected_and_current_are_skipped() -> None:
    plan = plan_batches(regional_set(current=(7,), protected=(2,)), DEFAULT)

    assert plan.batch_size == 2
    assert plan.batches == ((0, 5), (1, 6), (3, 8), (4, 9))
    assert plan.skipped == (Skipped(2, PROTECTED), Skipped(7, ALREADY_CURRENT))


def test_protected_wins_over_current() -> None:
    plan = plan_batches(regional_set(current=(3,), protected=(3,)), DEFAULT)

    assert plan.skipped == (Skipped(3, "Protected"),)


def test_example_6_one_unhealthy_elsewhere_shrinks_the_batch() -> None:
    candidates = by_id(regional_set())

    assert unhealthy_budget(20, 10) == 2
    assert fit_batch([candidates[0], candidates[5]], 1, DEFAULT, 10) == (0,)


def test_fit_batch_docstring_examples() -> None:
    healthy = by_id(regional_set())
    sick_zero = by_id(regional_set(unhealthy=(0,)))

    assert fit_batch([sick_zero[0], sick_zero[5]], 1, DEFAULT, 10) == (0, 5)
    assert fit_batch([healthy[0], healthy[5]], 0, DEFAULT, 10) == (0, 5)
    assert fit_batch([healthy[0], healthy[5]], 2, DEFAULT, 10) == (0,)
    assert fit_batch([], 0, DEFAULT, 10) == ()


def test_nothing_to_do() -> None:
    plan = plan_batches(regional_set(current=range(10)), DEFAULT)

    assert plan.batches == ()
    assert plan.first() == ()
    assert plan_batches([], DEFAULT) == BatchPlan(batch_size=0, batches=(), skipped=())


def test_zone_none_first_then_zone_names_as_strings() -> None:
    candidates = [Candidate(1, "2", 0, True), Candidate(2, "10", 0, True), Candidate(3, None, 1, True)]

    assert plan_batches(candidates, DEFAULT).batches == ((3,), (2,), (1,))


def test_instance_count_counts_instances_not_listed() -> None:
    assert plan_batches(regional_set(), DEFAULT, instance_count=20).batch_size == 4


def test_instance_count_below_the_candidates_is_refused() -> None:
    with pytest.raises(ValueError, match="instance_count"):
        plan_batches(regional_set(), DEFAULT, instance_count=9)


# ---------------------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize(
    ("percent", "count", "size"), [(20, 10, 2), (20, 5, 1), (20, 4, 1), (5, 100, 5), (20, 0, 0), (100, 7, 7)]
)
def test_batch_size(percent: int, count: int, size: int) -> None:
    assert batch_size(percent, count) == size


def test_exceeds_percent_is_strict_and_exact() -> None:
    assert exceeds_percent(3, 10, 20)
    assert not exceeds_percent(2, 10, 20)
    assert not exceeds_percent(3, 15, 20)
    assert not exceeds_percent(29, 100, 29)  # 0.29 * 100 == 28.999999999999996 in floats
    assert exceeds_percent(1, 0, 20)
    assert not exceeds_percent(0, 0, 20)


# --------------------------------------------------------------------------------------- from_json
def test_from_json_reads_azure_keys() -> None:
    policy = BatchPolicy.from_json(
        {
            "maxBatchInstancePercent": 50,
            "maxUnhealthyInstancePercent": 30,
            "maxUnhealthyUpgradedInstancePercent": 10,
            "enableCrossZoneUpgrade": True,
            "prioritizeUnhealthyInstances": "true",
            "pauseTimeBetweenBatches": "PT0S",
        }
    )

    assert policy == BatchPolicy(50, 30, True, True)


def test_from_json_missing_or_null_keys_take_defaults() -> None:
    assert BatchPolicy.from_json({}) == DEFAULT
    assert BatchPolicy.from_json({"maxBatchInstancePercent": None, "enableCrossZoneUpgrade": None}) == DEFAULT


@pytest.mark.parametrize(
    "policy",
    [{"maxBatchInstancePercent": "20"}, {"maxBatchInstancePercent": True}, {"enableCrossZoneUpgrade": "yes"}],
)
def test_from_json_refuses_wrong_types(policy: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="rollingUpgradePolicy"):
        BatchPolicy.from_json(policy)


# --------------------------------------------------------------------------------------- properties
# Few, broad property tests: hypothesis spends most of its time generating sets, so each test checks
# several invariants of one generated plan to keep the module well under 5 s.
percents = st.integers(min_value=5, max_value=100)
policies = st.builds(BatchPolicy, percents, percents, st.booleans(), st.booleans())
ZONE_CHOICES = (None, "1", "2", "3", "10")
UPDATE_DOMAINS = 5


def decode_candidate(instance_id: int, code: int) -> Candidate:
    """One random instance from one integer: far cheaper for hypothesis than drawing five fields."""
    zone, rest = divmod(code, UPDATE_DOMAINS * 16)
    update_domain, flags = divmod(rest, 16)
    return Candidate(
        instance_id,
        ZONE_CHOICES[zone],
        update_domain,
        healthy=bool(flags & 1),
        current=bool(flags & 2),
        protected=flags & 12 == 12,  # one in four, so most sets still have work to do
    )


# Ids follow list positions; the planner's order never depends on input order (tested below).
scale_sets = st.lists(st.integers(0, len(ZONE_CHOICES) * UPDATE_DOMAINS * 16 - 1), max_size=25).map(
    lambda codes: [decode_candidate(instance_id, code) for instance_id, code in enumerate(codes)]
)


class Case(NamedTuple):
    candidates: list[Candidate]
    policy: BatchPolicy
    instance_count: int
    plan: BatchPlan
    by_instance_id: dict[int, Candidate]

    def candidate(self, instance_id: int) -> Candidate:
        return self.by_instance_id[instance_id]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    candidates = draw(scale_sets)
    policy = draw(policies)
    # Sometimes the set has instances the caller did not list (instance_count > len(candidates)).
    count = len(candidates) + draw(st.integers(0, 10))
    return Case(candidates, policy, count, plan_batches(candidates, policy, count), by_id(candidates))


def is_skipped(candidate: Candidate) -> bool:
    return candidate.current or candidate.protected


def part_key(candidate: Candidate, policy: BatchPolicy) -> tuple[object, ...]:
    """What a batch must be uniform in: update domain, zone unless cross-zone, health if prioritized."""
    zone = None if policy.enable_cross_zone_upgrade else candidate.zone
    health = candidate.healthy if policy.prioritize_unhealthy_instances else None
    return (zone, candidate.update_domain, health)


def run_order(candidate: Candidate, policy: BatchPolicy) -> tuple[object, ...]:
    """The documented order: unhealthy first if asked, zone None then names, update domain, id."""
    zone = None if policy.enable_cross_zone_upgrade else candidate.zone
    unhealthy_rank = (candidate.healthy,) if policy.prioritize_unhealthy_instances else ()
    return (*unhealthy_rank, zone is not None, zone or "", candidate.update_domain, candidate.instance_id)


@fast
@given(cases())
def test_each_pending_instance_runs_once_in_a_batch_within_size_and_boundaries(case: Case) -> None:
    plan, policy = case.plan, case.policy
    flat = [i for batch in plan.batches for i in batch]

    assert sorted(flat) == sorted(c.instance_id for c in case.candidates if not is_skipped(c))
    assert [s.instance_id for s in plan.skipped] == sorted(
        c.instance_id for c in case.candidates if is_skipped(c)
    )
    assert plan.batch_size == batch_size(policy.max_batch_instance_percent, case.instance_count)
    for batch in plan.batches:
        members = [case.candidate(i) for i in batch]
        assert 1 <= len(batch) <= plan.batch_size
        assert len({c.update_domain for c in members}) == 1
        if not policy.enable_cross_zone_upgrade:
            assert len({c.zone for c in members}) == 1
        assert len({part_key(c, policy) for c in members}) == 1
    # Groups are cut from the front, so only the last batch of a group may be short.
    for batch, after in zip(plan.batches, plan.batches[1:], strict=False):
        if part_key(case.candidate(batch[0]), policy) == part_key(case.candidate(after[0]), policy):
            assert len(batch) == plan.batch_size


@fast
@given(cases(), st.data())
def test_order_is_deterministic_and_unhealthy_first_only_when_asked(case: Case, data: st.DataObject) -> None:
    plan, policy = case.plan, case.policy
    flat = [i for batch in plan.batches for i in batch]
    unhealthy_flags = [not case.candidate(batch[0]).healthy for batch in plan.batches]

    assert flat == sorted(flat, key=lambda i: run_order(case.candidate(i), policy))
    if policy.prioritize_unhealthy_instances:
        assert unhealthy_flags == sorted(unhealthy_flags, reverse=True)
    else:
        all_healthy = [c._replace(healthy=True) for c in case.candidates]
        assert plan_batches(all_healthy, policy, case.instance_count) == plan
    shuffled = data.draw(st.permutations(case.candidates))
    assert plan_batches(shuffled, policy, case.instance_count) == plan


@fast
@given(cases(), st.booleans())
def test_replanning_after_the_first_batch_gives_the_rest_of_the_plan(case: Case, remove: bool) -> None:
    """The engine replans after every batch and the preview must match the run (M-26)."""
    done = set(case.plan.first())
    if remove:
        after = [c for c in case.candidates if c.instance_id not in done]
    else:
        after = [c._replace(current=c.current or c.instance_id in done) for c in case.candidates]

    assert plan_batches(after, case.policy, case.instance_count).batches == case.plan.batches[1:]

    run: list[tuple[int, ...]] = []
    remaining = case.candidates
    while first := plan_batches(remaining, case.policy, case.instance_count).first():
        run.append(first)
        remaining = [c for c in remaining if c.instance_id not in first]
    assert tuple(run) == case.plan.batches


@fast
@given(cases(), st.integers(0, 60))
def test_fit_batch_keeps_the_longest_prefix_within_budget(case: Case, unhealthy_elsewhere: int) -> None:
    budget = unhealthy_budget(case.policy.max_unhealthy_instance_percent, case.instance_count)

    def out_of_service(members: Sequence[Candidate]) -> int:
        return unhealthy_elsewhere + sum(c.healthy for c in members)

    for ids in case.plan.batches:
        batch = [case.candidate(i) for i in ids]
        fitted = fit_batch(batch, unhealthy_elsewhere, case.policy, case.instance_count)

        assert 1 <= len(fitted) <= len(batch)
        assert fitted == ids[: len(fitted)]
        assert len(fitted) == 1 or out_of_service(batch[: len(fitted)]) <= budget
        assert len(fitted) == len(batch) or out_of_service(batch[: len(fitted) + 1]) > budget


@fast
@given(st.integers(0, 1000), st.integers(0, 1000), percents)
def test_budget_and_exceeds_percent_agree(count: int, instance_count: int, percent: int) -> None:
    assert (count > unhealthy_budget(percent, instance_count)) == exceeds_percent(
        count, instance_count, percent
    )


@fast
@given(percents, st.integers(1, 1000))
def test_batch_size_is_the_floor_but_at_least_one(percent: int, count: int) -> None:
    assert batch_size(percent, count) == max(1, math.floor(percent * count / 100))
