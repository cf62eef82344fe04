"""Availability first across regions and zones (M-21; azure-api.md §4.2, §4.4 "Availability-first"):
the rollout phases of a platform upgrade, and the decisions that keep one version from reaching too much
of the fleet at once.

The rules:

1. Phases. A rollout of one version (of an image or an extension) goes phase by phase; a phase is a list
   of regions. A target (a scale set, or a standalone VM's hidden set) in phase *p* starts only when every
   target of the phases before *p* has upgraded successfully. A failure in phase *p* halts every later
   phase for that version: they never start (a newer version is a new rollout).
2. Pairs. Paired regions (`domain/regions.py`) are never in one phase, so never upgraded together.
3. Zones. Inside a region, instances of different availability zones are never in flight together, across
   scale sets and VMs: a batch in zone *z* waits while another platform run of the region has instances of
   another zone in flight. Instances without a zone (a regional set, a VM without `zones`) count as a zone
   of their own, "regional": they never go together with zonal instances of another run, but regional
   instances of several runs may (a regional instance is in no availability zone, so two of them cannot
   be "in different zones"; mixing them with a zone could be, as their host zone is not known).
4. VMs. Inside a phase, standalone VMs go in the waves of `plan_vm_batches` (availability sets one update
   domain at a time, single VMs of a subscription in chunks): a VM of wave *w* starts when the VMs of
   the waves before *w* in its phase have upgraded successfully.

The default phases (`DEFAULT_PHASES`), modelled on Azure's safe deployment practice (a canary region, then
a pilot, then broad waves that keep each pair apart):

    >>> [list(p) for p in DEFAULT_PHASES.phases[:2]]
    [['westcentralus'], ['eastus2']]
    >>> DEFAULT_PHASES.phase_of("eastus"), DEFAULT_PHASES.phase_of("westus")
    (2, 3)

A configuration is a JSON list of phases, each a list of region names; regions it does not list go after
it, in as few extra phases as keep pairs apart:

    >>> phases = parse_phases([["eastus"], ["eastus2"]])
    >>> [list(p) for p in phases.phases][:3]  # doctest: +ELLIPSIS
    [['eastus'], ['eastus2'], ['westus', 'centralus', 'westus2', 'westus3', 'northcentralus', ...]]
    >>> parse_phases([["eastus", "westus"]])
    Traceback (most recent call last):
    ...
    ValueError: phase 1 holds the paired regions 'eastus' and 'westus'; pairs must be in different phases

Pure: the service (`services/rollouts.py`) gathers the targets and their state from the tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scaleset.domain.regions import REGIONS, normalize_location
from scaleset.domain.vm_batches import VmRef, plan_vm_batches

# What a target's run says of one rollout (a version of an image or of an extension):
#   waiting    it has not started towards the version (held back, or busy with another run)
#   running    its run towards the version is active
#   succeeded  its run completed with every member upgraded, or it already runs the version (or newer)
#   failed     its run faulted, rolled back, was cancelled, or left a member failed: later phases halt
#   excluded   it will not run by itself (a deferral waiting for approval): it neither holds back nor halts
TargetState = Literal["waiting", "running", "succeeded", "failed", "excluded"]
PhaseState = Literal["waiting", "running", "succeeded", "halted"]
REGIONAL = "regional"  # the zone of an instance without one, for the zone rule


def paired(a: str, b: str) -> bool:
    """Whether two regions are a pair (either one names the other: Azure's pairs are not all mutual,
    West US 3 pairs with East US whose own pair is West US).

    >>> paired("eastus", "westus"), paired("westus3", "eastus"), paired("eastus", "eastus2")
    (True, True, False)
    """
    first, second = REGIONS.get(a), REGIONS.get(b)
    return (first is not None and first.pair == b) or (second is not None and second.pair == a)


@dataclass(frozen=True)
class RolloutPhases:
    """The phases, in order, covering every known region (see `parse_phases`)."""

    phases: tuple[tuple[str, ...], ...]
    configured: int  # how many phases the configuration listed; the rest hold the regions it left out

    def phase_of(self, location: str) -> int:
        """The 0-based phase of a region; a region scaleset does not know goes in a phase after all."""
        region = normalize_location(location)
        for index, regions in enumerate(self.phases):
            if region in regions:
                return index
        return len(self.phases)

    def as_json(self) -> list[list[str]]:
        return [list(regions) for regions in self.phases]


def parse_phases(raw: Any, *, what: str = "the rollout phases") -> RolloutPhases:
    """Validate a configuration (a list of phases, each a non-empty list of region names) and complete it
    with the regions it leaves out. Raises ValueError saying what is wrong: not a list of lists of
    strings, an unknown region, a region twice, paired regions in one phase."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{what} must be a non-empty JSON list of phases, each a list of region names")
    phases: list[tuple[str, ...]] = []
    seen: dict[str, int] = {}
    for number, phase in enumerate(raw, start=1):
        if not isinstance(phase, list) or not phase or not all(isinstance(r, str) for r in phase):
            raise ValueError(f"phase {number} must be a non-empty list of region names")
        regions: list[str] = []
        for name in phase:
            region = normalize_location(name)
            if region not in REGIONS:
                known = ", ".join(sorted(REGIONS))
                raise ValueError(f"phase {number}: unknown region {name!r}; the regions are {known}")
            if region in seen:
                raise ValueError(f"region {region!r} is in phase {seen[region]} and phase {number}")
            for other in regions:
                if paired(region, other):
                    raise ValueError(
                        f"phase {number} holds the paired regions {other!r} and {region!r}; "
                        "pairs must be in different phases"
                    )
            seen[region] = number
            regions.append(region)
        phases.append(tuple(regions))
    return RolloutPhases(tuple(phases) + _spread(r for r in REGIONS if r not in seen), len(phases))


def _spread(regions: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """`regions` in as few phases as keep pairs apart, greedily in the given order."""
    phases: list[list[str]] = []
    for region in regions:
        for phase in phases:
            if not any(paired(region, other) for other in phase):
                phase.append(region)
                break
        else:
            phases.append([region])
    return tuple(tuple(phase) for phase in phases)


# Azure's safe deployment: a canary region first, then a pilot region, then broad waves; every pair split.
# West Central US is a small region (Azure's own pilot), East US 2 a large one that has its pair
# (Central US) in the last wave. Phase 3 takes the first region of each remaining pair, phase 4 the other.
DEFAULT_PHASE_LIST: list[list[str]] = [
    ["westcentralus"],
    ["eastus2"],
    [
        "eastus",
        "westus2",
        "southcentralus",
        "northeurope",
        "swedencentral",
        "germanywestcentral",
        "uksouth",
        "francecentral",
        "japaneast",
        "australiaeast",
    ],
    [
        "westus",
        "centralus",
        "westus3",
        "northcentralus",
        "westeurope",
        "swedensouth",
        "germanynorth",
        "ukwest",
        "francesouth",
        "japanwest",
        "australiasoutheast",
    ],
]
DEFAULT_PHASES = parse_phases(DEFAULT_PHASE_LIST, what="the default phases")


# ------------------------------------------------------------------------------------------ decisions
def phase_state(states: Sequence[TargetState]) -> PhaseState:
    """A phase is halted when a target failed, succeeded when every target that takes part succeeded
    (an empty phase too), running when one runs or succeeded, else waiting.

    >>> phase_state(["succeeded", "excluded"]), phase_state(["succeeded", "failed"]), phase_state([])
    ('succeeded', 'halted', 'succeeded')
    >>> phase_state(["waiting", "waiting"]), phase_state(["succeeded", "waiting"])
    ('waiting', 'running')
    """
    if "failed" in states:
        return "halted"
    taking_part = [s for s in states if s != "excluded"]
    if all(s == "succeeded" for s in taking_part):
        return "succeeded"
    if any(s in ("running", "succeeded") for s in taking_part):
        return "running"
    return "waiting"


def may_start_phase(phase: int, earlier: Mapping[int, Sequence[TargetState]]) -> str | None:
    """None when a target of `phase` may start, given the states of the targets of every phase (by
    0-based index); else why not. Only the phases before `phase` matter.

    >>> may_start_phase(1, {0: ["succeeded"], 1: ["waiting"]}) is None
    True
    >>> may_start_phase(2, {0: ["succeeded"], 1: ["running", "succeeded"]})
    'phase 2 has not upgraded successfully yet (1 of 2 target(s) done)'
    >>> may_start_phase(2, {0: ["failed"], 1: []})
    'phase 1 failed: the rollout of this version is halted'
    """
    for index in sorted(p for p in earlier if p < phase):
        states = earlier[index]
        state = phase_state(states)
        if state == "halted":
            return f"phase {index + 1} failed: the rollout of this version is halted"
        if state != "succeeded":
            taking_part = [s for s in states if s != "excluded"]
            done = sum(1 for s in taking_part if s == "succeeded")
            return (
                f"phase {index + 1} has not upgraded successfully yet "
                f"({done} of {len(taking_part)} target(s) done)"
            )
    return None


def vm_wave_of(vms: Sequence[VmRef], key: str) -> int | None:
    """The 0-based wave of the VM `key` among `vms` (the VMs of one phase), or None when it is not there.

    >>> vms = [VmRef("a", "S", "as1", 0), VmRef("b", "S", "as1", 1), VmRef("c", "S", None, 0)]
    >>> [vm_wave_of(vms, k) for k in ("a", "b", "c", "x")]
    [0, 1, 2, None]
    """
    for index, wave in enumerate(plan_vm_batches(vms)):
        if key in wave:
            return index
    return None


def may_start_vm(wave: int, earlier_waves: Mapping[int, Sequence[TargetState]]) -> str | None:
    """None when a VM of `wave` may start, given the states of the VMs of every wave of its phase.

    >>> may_start_vm(1, {0: ["succeeded", "excluded"]}) is None
    True
    >>> may_start_vm(1, {0: ["running"]})
    'VM wave 1 of this phase has not upgraded successfully yet'
    """
    for index in sorted(w for w in earlier_waves if w < wave):
        state = phase_state(earlier_waves[index])
        if state == "halted":
            return f"VM wave {index + 1} of this phase failed: the rollout of this version is halted"
        if state != "succeeded":
            return f"VM wave {index + 1} of this phase has not upgraded successfully yet"
    return None


def zone_of(zone: str | None) -> str:
    return zone or REGIONAL


def may_start_zone(batch_zones: Iterable[str | None], in_flight: Iterable[str | None]) -> str | None:
    """None when a batch whose instances are in `batch_zones` may start while the other platform runs of
    its region have instances of `in_flight` zones upgrading; else why not.

    >>> may_start_zone(["1"], ["1", None]) is None, may_start_zone([None], [None]) is None
    (False, True)
    >>> may_start_zone(["2"], ["1"])
    'another platform upgrade has instances of zone 1 in flight in this region'

    A batch that spans zones (platform runs never cut one, `platform_run_policy`; a guard) goes only when
    nothing else of the region is in flight:

    >>> may_start_zone(["1", "2"], []) is None, may_start_zone(["1", "2"], ["1"]) is None
    (True, False)
    """
    mine = {zone_of(z) for z in batch_zones}
    flying = {zone_of(z) for z in in_flight}
    if len(mine) > 1 and flying:
        return f"a batch over zones {', '.join(sorted(mine))} waits until the region has nothing in flight"
    others = flying - mine
    if others:
        zones = ", ".join(sorted(others))
        return f"another platform upgrade has instances of zone {zones} in flight in this region"
    return None
