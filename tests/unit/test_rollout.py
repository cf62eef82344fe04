"""The rollout phases and the availability-first decisions (domain/rollout.py, M-21): configuration
validation, the default phases, phase and wave gating, the zone rule; the module's worked examples; the
platform run policy that keeps platform batches inside one zone; loading a phases file."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaleset.domain import rollout
from scaleset.domain.auto_upgrade import platform_run_policy
from scaleset.domain.regions import REGIONS
from scaleset.domain.rollout import (
    DEFAULT_PHASES,
    may_start_phase,
    may_start_zone,
    paired,
    parse_phases,
    phase_state,
)
from scaleset.services.rollouts import load_rollout_phases, version_key

REGION_NAMES = sorted(REGIONS)


def test_the_worked_examples() -> None:
    assert doctest.testmod(rollout).failed == 0


def test_the_default_puts_every_region_once_pairs_apart_canary_first() -> None:
    flat = [r for phase in DEFAULT_PHASES.phases for r in phase]
    assert sorted(flat) == REGION_NAMES  # every region, once
    assert DEFAULT_PHASES.configured == len(DEFAULT_PHASES.phases) == 4  # nothing left over
    assert [len(p) for p in DEFAULT_PHASES.phases[:2]] == [1, 1]  # a canary, then a pilot
    for phase in DEFAULT_PHASES.phases:
        assert not any(paired(a, b) for a in phase for b in phase if a != b)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "non-empty JSON list"),
        ({"phases": []}, "non-empty JSON list"),
        ([["eastus"], []], "phase 2 must be a non-empty list"),
        ([["eastus", 3]], "phase 1 must be a non-empty list"),
        ([["atlantis"]], "phase 1: unknown region 'atlantis'"),
        ([["eastus"], ["East US"]], "region 'eastus' is in phase 1 and phase 2"),
        ([["eastus2", "centralus"]], "paired regions 'eastus2' and 'centralus'"),
        ([["eastus", "westus3"]], "paired regions 'eastus' and 'westus3'"),  # pairs one way only
    ],
)
def test_a_bad_configuration_says_what_is_wrong(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_phases(raw)


def test_region_names_are_read_as_arm_reads_them() -> None:
    phases = parse_phases([["West Europe"], ["North Europe"]])
    assert phases.phases[:2] == (("westeurope",), ("northeurope",))
    assert phases.phase_of("West Europe") == 0 and phases.phase_of("northeurope") == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(REGION_NAMES), min_size=1, max_size=6), min_size=1, max_size=5))
def test_any_accepted_configuration_is_complete_and_keeps_pairs_apart(raw: list[list[str]]) -> None:
    """Whatever is accepted covers every region exactly once, keeps the configured phases first and in
    order, and never holds a pair in one phase (the regions it left out included)."""
    try:
        phases = parse_phases(raw)
    except ValueError:
        flat = [r for p in raw for r in p]
        # Refused only for a region twice or a pair in one phase.
        assert len(set(flat)) < len(flat) or any(paired(a, b) for p in raw for a in p for b in p)
        return
    flat = [r for p in phases.phases for r in p]
    assert sorted(flat) == REGION_NAMES
    assert [list(p) for p in phases.phases[: phases.configured]] == raw
    for phase in phases.phases:
        assert not any(paired(a, b) for a in phase for b in phase)
    assert all(phases.phase_of(r) >= phases.configured for r in REGION_NAMES if r not in raw_flat(raw))


def raw_flat(raw: list[list[str]]) -> set[str]:
    return {r for p in raw for r in p}


def test_an_unknown_location_goes_after_every_phase() -> None:
    assert DEFAULT_PHASES.phase_of("moon") == len(DEFAULT_PHASES.phases)


def test_phase_states() -> None:
    assert phase_state(["succeeded", "failed", "running"]) == "halted"
    assert phase_state(["excluded"]) == "succeeded"
    assert phase_state(["running", "waiting"]) == "running"
    assert phase_state(["waiting", "excluded"]) == "waiting"


def test_a_phase_starts_only_after_every_earlier_phase_succeeded() -> None:
    states = {0: ["succeeded"], 1: ["succeeded", "excluded"], 2: ["waiting"], 3: ["waiting"]}
    assert may_start_phase(0, states) is None
    assert may_start_phase(2, states) is None
    assert may_start_phase(3, states) == "phase 3 has not upgraded successfully yet (0 of 1 target(s) done)"
    # A failure anywhere before halts; one later does not matter to an earlier phase.
    failed = {0: ["succeeded"], 1: ["failed", "succeeded"], 2: ["waiting"]}
    assert "halted" in (may_start_phase(2, failed) or "")
    assert may_start_phase(1, failed) is None
    # Phases with no target at all do not hold anything back.
    assert may_start_phase(3, {0: ["succeeded"], 3: ["waiting"]}) is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.sampled_from(["1", "2", "3"])), min_size=1, max_size=4),
    st.lists(st.one_of(st.none(), st.sampled_from(["1", "2", "3"])), max_size=6),
)
def test_the_zone_rule_never_admits_a_second_zone(batch: list[str | None], flying: list[str | None]) -> None:
    """Admitted means: what is in flight and the batch are, together, of one zone (regional counting as
    one), unless nothing else was in flight."""
    admitted = may_start_zone(batch, flying) is None
    zones = {z or "regional" for z in batch + flying}
    if flying:
        assert admitted == (len(zones) == 1)
    else:
        assert admitted


def test_platform_runs_never_batch_across_zones_whatever_the_set_says() -> None:
    own = {"maxBatchInstancePercent": 50, "enableCrossZoneUpgrade": True}
    policy, _ = platform_run_policy(
        {
            "mode": "Rolling",
            "rollingUpgradePolicy": own,
            "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True, "useRollingUpgradePolicy": True},
        }
    )
    assert policy["maxBatchInstancePercent"] == 50  # the set's own policy is used ...
    assert policy["enableCrossZoneUpgrade"] is False  # ... but not to mix zones


def test_loading_a_phases_file(tmp_path: Path) -> None:
    assert load_rollout_phases(None) is DEFAULT_PHASES
    good = tmp_path / "good.json"
    good.write_text(json.dumps([["eastus"], ["westus"]]))
    assert load_rollout_phases(good).phases[:2] == (("eastus",), ("westus",))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([["eastus", "westus"]]))
    with pytest.raises(ValueError, match=r"bad.json: phase 1 holds the paired regions"):
        load_rollout_phases(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("[[")
    with pytest.raises(ValueError, match=r"broken.json: not JSON"):
        load_rollout_phases(broken)
    with pytest.raises(ValueError, match=r"missing.json: cannot be read"):
        load_rollout_phases(tmp_path / "missing.json")


def test_versions_order_by_their_numbers() -> None:
    assert version_key("1.10.0") > version_key("1.9.9")
    assert version_key("2.1") > version_key("2.0.5")
    assert version_key("latest") == ()
