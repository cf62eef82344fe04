"""Where a new instance goes: its zone, fault domain and update domain.

Azure spreads a Uniform scale set's instances evenly over the set's zones, and inside each zone over
fault domains (`platformFaultDomainCount`) and five update domains. We do the same by always choosing the
least-used slot, so that scale-in followed by scale-out refills the gaps instead of piling onto domain 0.

Worked example: zones ("1", "2", "3"), 5 fault domains, 7 new instances on an empty set give
zone 1, 2, 3, 1, 2, 3, 1 and, inside zone 1, (fd 0, ud 0), (fd 1, ud 1), (fd 2, ud 2).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

UPDATE_DOMAIN_COUNT = 5
DEFAULT_FAULT_DOMAIN_COUNT = 5
MAX_FAULT_DOMAIN_COUNT = 5


@dataclass(frozen=True)
class Placement:
    zone: str | None
    fault_domain: int
    update_domain: int


def _least_used_zone(zones: Sequence[str | None], placed: Sequence[Placement]) -> str | None:
    counts = Counter(p.zone for p in placed)
    # min() keeps the first of equals, so ties go to the lowest zone / domain number.
    return min(zones, key=lambda zone: counts[zone])


def _least_used_domain(domain_count: int, used: Iterable[int]) -> int:
    counts = Counter(used)
    return min(range(domain_count), key=lambda domain: counts[domain])


def place_instances(
    existing: Iterable[Placement], zones: Sequence[str], fault_domain_count: int, count: int
) -> list[Placement]:
    """Placements for `count` new instances next to `existing` ones, balanced as Azure balances them."""
    placed = list(existing)
    new: list[Placement] = []
    zone_options: Sequence[str | None] = list(zones) if zones else [None]
    for _ in range(count):
        zone = _least_used_zone(zone_options, placed)
        in_zone = [p for p in placed if p.zone == zone]
        placement = Placement(
            zone=zone,
            fault_domain=_least_used_domain(fault_domain_count, (p.fault_domain for p in in_zone)),
            update_domain=_least_used_domain(UPDATE_DOMAIN_COUNT, (p.update_domain for p in in_zone)),
        )
        placed.append(placement)
        new.append(placement)
    return new
