"""Zone, fault-domain and update-domain placement of new instances (M-5, M-21)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from scaleset.domain.placement import UPDATE_DOMAIN_COUNT, Placement, place_instances

ZONE_CHOICES: list[tuple[str, ...]] = [(), ("1",), ("1", "2"), ("1", "2", "3")]
zone_sets = st.sampled_from(ZONE_CHOICES)
fault_domain_counts = st.integers(min_value=1, max_value=5)


def spread(counts: Counter[object], slots: Sequence[object]) -> int:
    """Most-used minus least-used slot, counting empty slots as zero."""
    values = [counts[slot] for slot in slots]
    return max(values) - min(values)


def zones_of(zones: Sequence[str]) -> list[str | None]:
    return list(zones) if zones else [None]


def test_worked_example_from_the_module_docstring() -> None:
    placed = place_instances([], ("1", "2", "3"), 5, 7)

    assert [p.zone for p in placed] == ["1", "2", "3", "1", "2", "3", "1"]
    assert [(p.fault_domain, p.update_domain) for p in placed if p.zone == "1"] == [(0, 0), (1, 1), (2, 2)]


def test_without_zones_instances_have_no_zone_and_fill_domains_in_turn() -> None:
    placed = place_instances([], (), 3, 7)

    assert {p.zone for p in placed} == {None}
    assert [p.fault_domain for p in placed] == [0, 1, 2, 0, 1, 2, 0]
    assert [p.update_domain for p in placed] == [0, 1, 2, 3, 4, 0, 1]


def test_one_fault_domain_still_spreads_update_domains() -> None:
    placed = place_instances([], (), 1, 6)

    assert {p.fault_domain for p in placed} == {0}
    assert [p.update_domain for p in placed] == [0, 1, 2, 3, 4, 0]


def test_refill_goes_to_the_gap_left_by_scale_in() -> None:
    placed = place_instances([], ("1", "2"), 5, 10)
    # Scale-in took zone 2's instance in fault domain 3 / update domain 3.
    gap = Placement("2", 3, 3)
    remaining = list(placed)
    remaining.remove(gap)

    assert place_instances(remaining, ("1", "2"), 5, 1) == [gap]


@given(zones=zone_sets, fault_domains=fault_domain_counts, count=st.integers(0, 60))
def test_zones_and_domains_are_balanced_within_one(
    zones: tuple[str, ...], fault_domains: int, count: int
) -> None:
    placed = place_instances([], zones, fault_domains, count)

    assert len(placed) == count
    assert spread(Counter(p.zone for p in placed), zones_of(zones)) <= 1
    for zone in zones_of(zones):
        in_zone = [p for p in placed if p.zone == zone]
        assert spread(Counter(p.fault_domain for p in in_zone), range(fault_domains)) <= 1
        assert spread(Counter(p.update_domain for p in in_zone), range(UPDATE_DOMAIN_COUNT)) <= 1
        assert all(0 <= p.fault_domain < fault_domains for p in in_zone)


@given(zones=zone_sets, fault_domains=fault_domain_counts, count=st.integers(0, 30), more=st.integers(0, 30))
def test_placing_in_two_steps_equals_placing_at_once(
    zones: tuple[str, ...], fault_domains: int, count: int, more: int
) -> None:
    first = place_instances([], zones, fault_domains, count)
    second = place_instances(first, zones, fault_domains, more)

    assert first + second == place_instances([], zones, fault_domains, count + more)


@given(
    zones=zone_sets,
    fault_domains=fault_domain_counts,
    count=st.integers(1, 40),
    data=st.data(),
)
def test_refill_after_scale_in_goes_to_the_emptiest_slots(
    zones: tuple[str, ...], fault_domains: int, count: int, data: st.DataObject
) -> None:
    placed = place_instances([], zones, fault_domains, count)
    removed = data.draw(st.sets(st.integers(0, count - 1)), label="removed indexes")
    remaining = [p for index, p in enumerate(placed) if index not in removed]

    refill = place_instances(remaining, zones, fault_domains, len(removed))

    # Each new instance took a least-used zone, then the least-used domains inside that zone.
    existing = list(remaining)
    for new in refill:
        zone_counts = Counter(p.zone for p in existing)
        assert zone_counts[new.zone] == min(zone_counts[z] for z in zones_of(zones))
        in_zone = [p for p in existing if p.zone == new.zone]
        fds = Counter(p.fault_domain for p in in_zone)
        uds = Counter(p.update_domain for p in in_zone)
        assert fds[new.fault_domain] == min(fds[d] for d in range(fault_domains))
        assert uds[new.update_domain] == min(uds[d] for d in range(UPDATE_DOMAIN_COUNT))
        existing.append(new)
    # Refilling as many as were removed balances the zones again.
    assert spread(Counter(p.zone for p in existing), zones_of(zones)) <= 1
