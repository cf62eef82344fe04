"""The rolling-upgrade plan preview (docs/plan-preview.md; M-4, M-5, M-6, M-10, M-17, M-21, M-26).

Three layers: the pure plan (`domain/plan.py`) on domain/batches.py's worked examples and, as a property,
against the engine's own decision function step by step; the candidates (`engine/candidates.py`); and the
preview on the simulated fleet, followed by the real upgrade, whose batches must be the previewed ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleset.domain.batches import BatchPolicy, Candidate, Skipped
from scaleset.domain.errors import ArmError
from scaleset.domain.plan import (
    APPLICATION_HEALTH_EXTENSION,
    CANCELLING,
    INSTANCE_STATE,
    LOAD_BALANCER_PROBE,
    NOTHING_TO_DO,
    PROCEED,
    STOP,
    HealthTiming,
    UpgradePlan,
    format_duration,
    health_timing,
    preview_upgrade,
)
from scaleset.domain.rolling import (
    COMPLETED,
    FAULTED,
    UNHEALTHY_BEFORE,
    UNHEALTHY_DURING,
    Finish,
    RunPolicy,
    RunView,
    StartBatch,
    plan_next_step,
)
from scaleset.engine.candidates import candidates_of
from scaleset.services.plan import PlanPreview, PlanService, policy_overrides
from tests.fleet import (
    BOOT_SECONDS,
    GROUP,
    NAME,
    PROBE_ID,
    SUB,
    Fleet,
    fleet_on_copy,
    prepare_data,
)
from tests.support import scale_set_body

FIVE_SECONDS_PROBE = HealthTiming(LOAD_BALANCER_PROBE, timedelta(seconds=5), timedelta(minutes=5))
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ten(**changes: Any) -> list[Candidate]:
    """domain/batches.py example 1: ids 0–9, regional, update domain id % 5, all healthy."""
    return [
        Candidate(
            i,
            None,
            i % 5,
            healthy=i not in changes.get("unhealthy", ()),
            current=i in changes.get("current", ()),
            protected=i in changes.get("protected", ()),
        )
        for i in range(10)
    ]


def policy(pause: timedelta = timedelta(0), **batches: Any) -> RunPolicy:
    return RunPolicy(batches=BatchPolicy(**batches), pause_between_batches=pause)


def ids(plan: UpgradePlan) -> list[tuple[int, ...]]:
    return [b.instance_ids for b in plan.batches]


def unhealthy_of(candidates: Sequence[Candidate]) -> list[int]:
    return [c.instance_id for c in candidates if not c.healthy]


def preview(candidates: list[Candidate], run_policy: RunPolicy, **kwargs: Any) -> UpgradePlan:
    return preview_upgrade(
        candidates, len(candidates), unhealthy_of(candidates), run_policy, FIVE_SECONDS_PROBE, **kwargs
    )


# -- the pure plan on domain/batches.py's examples ---------------------------------------------------------


def test_example_1_five_batches_one_per_update_domain_and_the_duration_range() -> None:
    plan = preview(ten(), policy())
    assert ids(plan) == [(0, 5), (1, 6), (2, 7), (3, 8), (4, 9)]
    assert [b.update_domain for b in plan.batches] == [0, 1, 2, 3, 4]
    assert [b.number for b in plan.batches] == [1, 2, 3, 4, 5]
    assert (plan.gate.verdict, plan.batch_size, plan.unhealthy_budget) == (PROCEED, 2, 2)
    assert plan.worst_out_of_service == 2
    # 5 batches × (no pause + one 5 s probe interval) … 5 × (no pause + 5 min health wait).
    assert (plan.shortest, plan.longest) == (timedelta(seconds=25), timedelta(minutes=25))
    assert plan.summary().startswith("5 batches of at most 2 (of 10 instances, none skipped)")


def test_example_1_at_100_percent_update_domains_still_split_the_set() -> None:
    assert ids(preview(ten(), policy(max_batch_instance_percent=100))) == [
        (0, 5),
        (1, 6),
        (2, 7),
        (3, 8),
        (4, 9),
    ]


def test_example_2_zones_are_never_mixed_unless_cross_zone() -> None:
    candidates = [Candidate(i, str(i // 5 + 1), i % 5, healthy=True) for i in range(15)]
    plan = preview(candidates, policy())
    assert ids(plan) == [(i,) for i in range(15)]
    assert [b.zones for b in plan.batches][:6] == [("1",)] * 5 + [("2",)]
    cross = preview(candidates, policy(enable_cross_zone_upgrade=True))
    assert ids(cross) == [(0, 5, 10), (1, 6, 11), (2, 7, 12), (3, 8, 13), (4, 9, 14)]
    assert {b.zones for b in cross.batches} == {("1", "2", "3")}
    assert cross.worst_out_of_service == 3  # a batch of 3 (20 % of 15); the budget is 3 too
    assert not cross.worst_out_of_service > cross.unhealthy_budget


def test_example_3_small_sets_go_one_instance_at_a_time() -> None:
    candidates = [Candidate(i, None, 0, healthy=True) for i in range(4)]
    plan = preview(candidates, policy())
    assert ids(plan) == [(0,), (1,), (2,), (3,)]
    assert plan.batch_size == 1


def test_example_4_prioritized_unhealthy_instances_go_first() -> None:
    plan = preview(ten(unhealthy=(6, 8)), policy(prioritize_unhealthy_instances=True))
    assert ids(plan) == [(6,), (8,), (0, 5), (1,), (2, 7), (3,), (4, 9)]
    # While 6 is upgraded, 6 and 8 are out of service; then only 8; then a healthy pair.
    assert [b.out_of_service for b in plan.batches][:3] == [2, 1, 2]
    assert plan.unhealthy_ids == (6, 8)


def test_example_5_protected_and_current_instances_are_skipped_with_their_reason() -> None:
    plan = preview(ten(protected=(2,), current=(7,)), policy())
    assert ids(plan) == [(0, 5), (1, 6), (3, 8), (4, 9)]
    assert plan.skipped == (Skipped(2, "Protected"), Skipped(7, "AlreadyCurrent"))
    assert (plan.shortest, plan.longest) == (timedelta(seconds=20), timedelta(minutes=20))


def test_example_6_unhealthy_instances_elsewhere_shrink_batches_as_fit_batch_does() -> None:
    """Without prioritization 6 and 8 stay down until their batches: (0, 5) becomes (0,) then (5,) — the
    run replans after each batch — and the set has 3 out of service, one over its budget of 2."""
    plan = preview(ten(unhealthy=(6, 8)), policy())
    assert ids(plan) == [(0,), (5,), (1, 6), (2,), (7,), (3, 8), (4, 9)]
    assert plan.worst_out_of_service == 3
    assert plan.worst_out_of_service > plan.unhealthy_budget


def test_the_gate_stops_before_the_first_batch_with_azures_code() -> None:
    plan = preview(ten(unhealthy=(1, 2, 3)), policy())
    assert (plan.gate.verdict, plan.gate.code) == (STOP, UNHEALTHY_BEFORE)
    assert plan.batches == ()
    assert "3 of 10 instances are unhealthy, more than 20%" in plan.gate.message
    assert plan.summary().startswith("the upgrade would stop before its next batch")
    assert (plan.shortest, plan.longest) == (timedelta(0), timedelta(0))
    # A running upgrade that already ran a batch stops with the other code.
    later = preview(ten(unhealthy=(1, 2, 3)), policy(), batches_started=2)
    assert later.gate.code == UNHEALTHY_DURING
    # A more tolerant policy lets it through.
    assert (
        preview(ten(unhealthy=(1, 2, 3)), policy(max_unhealthy_instance_percent=30)).gate.verdict == PROCEED
    )


def test_a_cancelled_run_starts_no_further_batch() -> None:
    plan = preview(ten(unhealthy=(1, 2, 3)), policy(), batches_started=1, cancel_requested=True)
    assert (plan.gate.verdict, plan.batches, plan.longest) == (CANCELLING, (), timedelta(0))
    assert plan.summary().startswith("the running upgrade was cancelled")


def test_nothing_to_do_beats_the_gate_as_in_the_engine() -> None:
    plan = preview(ten(current=range(10), unhealthy=(1, 2, 3)), policy())
    assert (plan.gate.verdict, plan.batches) == (NOTHING_TO_DO, ())
    assert len(plan.skipped) == 10


def test_max_surge_keeps_old_instances_in_service_while_the_quota_allows() -> None:
    plan = preview(ten(), policy(), surge_quota=12)
    assert ids(plan) == [(0, 5), (1, 6), (2, 7), (3, 8), (4, 9)]
    assert all(b.surge for b in plan.batches)
    assert [b.out_of_service for b in plan.batches] == [0, 0, 0, 0, 0]
    assert plan.peak_instance_count == 12
    # fit_batch counts every member against the budget, surge or not (the engine's rule), so with 9 down
    # the pairs shrink to single instances; a quota of 11 has room for those, and (4, 9) goes in place.
    tight = preview(ten(unhealthy=(9,)), policy(), surge_quota=11)
    assert ids(tight) == [(0,), (5,), (1,), (6,), (2,), (7,), (3,), (8,), (4, 9)]
    assert [b.surge for b in tight.batches] == [True] * 8 + [False]
    assert [b.out_of_service for b in tight.batches] == [1] * 8 + [2]
    assert (tight.worst_out_of_service, tight.peak_instance_count) == (2, 11)


def test_pause_counts_once_per_batch() -> None:
    plan = preview(ten(), policy(pause=timedelta(minutes=10)))
    assert plan.shortest == 5 * (timedelta(minutes=10) + timedelta(seconds=5))
    assert plan.longest == 5 * timedelta(minutes=15)


# -- the plan is the engine's decisions, step by step ------------------------------------------------------


def engine_decisions(
    candidates: list[Candidate], count: int, unhealthy: set[int], run_policy: RunPolicy
) -> tuple[list[tuple[int, ...]], Finish]:
    """Drive domain/rolling.py `plan_next_step` as the engine does, every batch succeeding: its members
    are taken (no longer candidates) and healthy when the next batch is planned."""
    remaining = list(candidates)
    unhealthy = set(unhealthy)
    started: list[tuple[int, ...]] = []
    while True:
        view = RunView(
            phase="ready",
            batch_number=len(started),
            not_before=None,
            deadline=None,
            cancel_requested=False,
            rollback_on_breach=False,
            policy=run_policy,
            health_wait=timedelta(minutes=5),
            instance_count=count,
            unhealthy_count=len(unhealthy),
            candidates=tuple(remaining),
            members=(),
        )
        step = plan_next_step(view, NOW)
        if isinstance(step, Finish):
            return started, step
        assert isinstance(step, StartBatch)
        started.append(step.instance_ids)
        remaining = [c for c in remaining if c.instance_id not in step.instance_ids]
        unhealthy -= set(step.instance_ids)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[Candidate], int, RunPolicy]:
    size = draw(st.integers(1, 30))
    zones = draw(st.sampled_from([[None], ["1", "2"], ["1", "2", "3"]]))
    candidates = [
        Candidate(
            instance_id=i,
            zone=draw(st.sampled_from(zones)),
            update_domain=draw(st.integers(0, 4)),
            healthy=draw(st.booleans()) or draw(st.booleans()),
            current=draw(st.integers(0, 5)) == 0,
            protected=draw(st.integers(0, 7)) == 0,
        )
        for i in range(size)
    ]
    already_taken = draw(st.integers(0, 5))  # healthy instances a running upgrade took earlier
    run_policy = policy(
        max_batch_instance_percent=draw(st.integers(5, 100)),
        max_unhealthy_instance_percent=draw(st.integers(5, 100)),
        enable_cross_zone_upgrade=draw(st.booleans()),
        prioritize_unhealthy_instances=draw(st.booleans()),
    )
    return candidates, size + already_taken, run_policy


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_the_preview_is_what_the_engine_decides(fleet: tuple[list[Candidate], int, RunPolicy]) -> None:
    candidates, count, run_policy = fleet
    unhealthy = set(unhealthy_of(candidates))
    plan = preview_upgrade(candidates, count, unhealthy, run_policy, FIVE_SECONDS_PROBE)
    started, finish = engine_decisions(candidates, count, unhealthy, run_policy)
    assert ids(plan) == started
    if plan.gate.verdict == STOP:
        assert (finish.status, finish.error_code, started) == (FAULTED, plan.gate.code, [])
    else:
        assert finish.status == COMPLETED
        assert (plan.gate.verdict == NOTHING_TO_DO) == (started == [])
    assert plan.longest == len(started) * timedelta(minutes=5)


# -- health timing and durations -------------------------------------------------------------------------


def test_health_timing_follows_the_health_source() -> None:
    wait = timedelta(minutes=5)
    probe_model = {"networkProfile": {"healthProbe": {"id": PROBE_ID}}}
    assert health_timing(probe_model, 15, wait) == HealthTiming(
        LOAD_BALANCER_PROBE, timedelta(seconds=15), wait
    )
    # A probe that is gone gives no verdict before the wait ends.
    assert health_timing(probe_model, None, wait).quickest == wait
    app_health = {
        "extensionProfile": {
            "extensions": [
                {
                    "name": "health",
                    "properties": {
                        "type": "ApplicationHealthLinux",
                        "settings": {"intervalInSeconds": 10, "numberOfProbes": 3, "gracePeriod": 600},
                    },
                }
            ]
        }
    }
    grace = timedelta(seconds=600)
    assert health_timing(app_health, None, grace) == HealthTiming(
        APPLICATION_HEALTH_EXTENSION, timedelta(seconds=30), grace
    )
    assert health_timing({}, None, wait) == HealthTiming(INSTANCE_STATE, timedelta(0), wait)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "PT0S"), (90, "PT1M30S"), (1500, "PT25M"), (7200, "PT2H"), (3723, "PT1H2M3S")]
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


# -- candidates ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: int
    instance_id: int
    zone: str | None
    update_domain: int
    model_version: int
    protect_from_scale_set_actions: bool = False


def test_candidates_count_taken_instances_but_not_uncounted_ones() -> None:
    rows = [
        Row(10, 0, "1", 0, 2),  # current
        Row(11, 1, "1", 1, 1, protect_from_scale_set_actions=True),
        Row(12, 2, "2", 0, 1),  # taken by an earlier batch, unhealthy now
        Row(13, 3, "2", 1, 1),  # unhealthy
        Row(14, 4, "1", 2, 2),  # a maxSurge replacement whose old instance still exists
    ]
    asked: list[int] = []

    def healthy(row: Row) -> bool:
        asked.append(row.id)
        return row.instance_id not in (2, 3)

    view = candidates_of(rows, healthy, 2, taken={12}, uncounted={14})
    assert view.candidates == (
        Candidate(0, "1", 0, healthy=True, current=True),
        Candidate(1, "1", 1, healthy=True, protected=True),
        Candidate(3, "2", 1, healthy=False),
    )
    assert (view.instance_count, view.unhealthy_ids, view.unhealthy_count) == (4, (2, 3), 2)
    assert asked == [10, 11, 12, 13]


# -- query validation ------------------------------------------------------------------------------------


def test_policy_overrides_are_validated_like_a_put() -> None:
    assert policy_overrides({"maxbatchinstancepercent": "50", "maxSurge": "true"}) == {
        "maxBatchInstancePercent": 50,
        "maxSurge": True,
    }
    for bad in ({"maxBatchInstancePercent": "150"}, {"maxBatchInstancePercent": "half"}, {"batch": "1"}):
        with pytest.raises(ArmError) as refused:
            policy_overrides(bad)
        assert (refused.value.status, refused.value.code) == (400, "InvalidParameter")


# -- the preview on the simulated fleet, then the real upgrade -------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_data(tmp_path_factory.mktemp("plan-prepared"))


@pytest.fixture
def fleet(tmp_path: Path, prepared: Path) -> Iterator[Fleet]:
    yield from fleet_on_copy(prepared, tmp_path)


def zoned_body(capacity: int, custom_data: str = "echo v1", **rolling: Any) -> dict[str, Any]:
    body = scale_set_body(
        capacity,
        version="latest",
        zones=["1", "2"],
        custom_data=custom_data,
        upgradePolicy={"mode": "Manual", "rollingUpgradePolicy": rolling},
    )
    body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": PROBE_ID}}
    return body


def service(fleet: Fleet) -> PlanService:
    c = fleet.container
    return PlanService(c.db, c.catalog, c.health, c.loadbalancers.probe_settings, c.settings.instance_quota)


def test_the_real_upgrade_runs_the_previewed_batches(fleet: Fleet) -> None:
    """12 instances in zones 1 and 2 (six each, update domains 0–4 and 0 again); instance 4 stopped and
    protected, instance 11 already on the new model. The preview must name the real run's batches
    exactly, including the first batch that fit_batch shrinks because instance 4 is down."""
    fleet.create(zoned_body(12))
    fleet.container.scalesets.set_action(SUB, GROUP, NAME, "stop", {"instanceIds": ["4"]})
    fleet.run()
    fleet.container.scalesets.update_vm(
        SUB, GROUP, NAME, "4", {"properties": {"protectionPolicy": {"protectFromScaleSetActions": True}}}
    )
    fleet.container.scalesets.put_set(SUB, GROUP, NAME, zoned_body(12, custom_data="echo v2"))
    fleet.container.scalesets.manual_upgrade(SUB, GROUP, NAME, {"instanceIds": ["11"]})
    fleet.run()
    fleet.clock.advance(BOOT_SECONDS)
    rows = {i.instance_id: i for i in fleet.instances()}
    assert {(i.zone, i.update_domain) for n, i in rows.items() if n in (0, 10)} == {("1", 0)}

    before: PlanPreview = service(fleet).preview(SUB, GROUP, NAME, "os")
    plan = before.plan
    assert (before.target_model_version, before.active_run) == (2, None)  # no newer image: the model
    assert plan.skipped == (Skipped(4, "Protected"), Skipped(11, "AlreadyCurrent"))
    assert plan.unhealthy_ids == (4,)
    assert ids(plan) == [(0,), (10,), (2,), (6,), (8,), (1,), (3,), (5,), (7,), (9,)]
    for batch in plan.batches:
        for member in batch.instances:
            assert (member.zone, member.update_domain) == (
                rows[member.instance_id].zone,
                rows[member.instance_id].update_domain,
            )

    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run(until=lambda: len(fleet.batches()) == 1)
    # While the first batch runs, the preview is of the running upgrade: the rest of the same plan.
    during = service(fleet).preview(SUB, GROUP, NAME, "os")
    assert during.active_run is not None and during.active_run.batches_started == 1
    assert [(b.number, b.instance_ids) for b in during.plan.batches] == [
        (b.number, b.instance_ids) for b in plan.batches[1:]
    ]
    fleet.run()

    assert fleet.latest()["properties"]["runningStatus"]["code"] == "Completed"
    assert [tuple(b) for b in fleet.batches()] == ids(plan)
    assert service(fleet).preview(SUB, GROUP, NAME, "os").plan.gate.verdict == NOTHING_TO_DO


def test_a_max_surge_run_replaces_the_previewed_batches(fleet: Fleet) -> None:
    """maxSurge: the batches are the same; the old instances stay in service, so nothing is out of
    service, and the set grows by one batch at a time."""
    fleet.create(zoned_body(6, maxSurge=True))
    fleet.publish("1.1.0")
    plan = service(fleet).preview(SUB, GROUP, NAME, "os").plan
    assert plan.batch_size == 1
    assert all(b.surge for b in plan.batches)
    assert (plan.worst_out_of_service, plan.peak_instance_count) == (0, 7)

    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run()

    assert fleet.latest()["properties"]["runningStatus"]["code"] == "Completed"
    assert [tuple(b) for b in fleet.batches()] == ids(plan)
    assert {m.action for m in fleet.members()} == {"surge"}


def test_a_cancelled_run_previews_no_further_batch(fleet: Fleet) -> None:
    fleet.create(zoned_body(6))
    fleet.publish("1.1.0")
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run(until=lambda: len(fleet.batches()) == 1)
    fleet.container.upgrades.cancel(SUB, GROUP, NAME)
    during = service(fleet).preview(SUB, GROUP, NAME, "os")
    assert during.active_run is not None and during.active_run.cancel_requested
    assert (during.plan.gate.verdict, during.plan.batches) == (CANCELLING, ())
    fleet.run()
    assert len(fleet.batches()) == 1


def test_a_gate_stop_in_the_preview_is_the_real_runs_fault(fleet: Fleet) -> None:
    fleet.create(zoned_body(10))
    fleet.container.scalesets.set_action(SUB, GROUP, NAME, "stop", {"instanceIds": ["1", "2", "3"]})
    fleet.run()
    fleet.publish("1.1.0")

    preview_ = service(fleet).preview(SUB, GROUP, NAME, "os")
    assert preview_.target_image_version == "1.1.0"
    assert (preview_.plan.gate.verdict, preview_.plan.gate.code) == (STOP, UNHEALTHY_BEFORE)
    # What if the budget were larger: the same set would go ahead.
    tolerant = service(fleet).preview(SUB, GROUP, NAME, "os", {"maxUnhealthyInstancePercent": 30})
    assert tolerant.plan.gate.verdict == PROCEED

    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run()
    latest = fleet.latest()["properties"]
    assert (latest["runningStatus"]["code"], latest["error"]["code"]) == ("Faulted", preview_.plan.gate.code)
    assert fleet.members() == []


def test_unknown_upgrade_kind_and_missing_set_are_arm_errors(fleet: Fleet) -> None:
    with pytest.raises(ArmError) as missing:
        service(fleet).preview(SUB, GROUP, "nope", "os")
    assert (missing.value.status, missing.value.code) == (404, "ResourceNotFound")
    with pytest.raises(ArmError) as bad:
        service(fleet).preview(SUB, GROUP, NAME, "kernel")
    assert (bad.value.status, bad.value.code) == (400, "InvalidParameter")
