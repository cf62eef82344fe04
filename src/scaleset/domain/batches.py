"""The batches of a rolling upgrade: which instances go together, and in what order.

A `Rolling` set applies a model change in health-gated batches (M-4), and automatic OS and extension
upgrades use the same batches whatever the mode (M-10, M-22; `azure-api.md` §4.1). Azure's rules
(`azure-api.md` §2.2, §4.2):

- a batch holds at most ⌊maxBatchInstancePercent × instance count / 100⌋ instances, and at least one;
  the count is every instance of the set, including those the upgrade skips;
- instances in different availability zones are never in one batch unless `enableCrossZoneUpgrade`;
- a batch stays inside one update domain, cross-zone or not (M-17, M-21);
- with `prioritizeUnhealthyInstances`, every unhealthy instance is upgraded before any healthy one;
- instances already on the target model ("AlreadyCurrent") and instances protected from scale-set
  actions ("Protected") are skipped.

Where Azure does not say how it cuts batches, this module picks one fixed order, so that a plan preview
and the real run agree and a restarted control plane recomputes the same remaining batches (M-26):
instances are grouped by (zone, update domain) — by update domain alone with cross-zone — groups run in
zone order (a regional set's zone None first, then zone names sorted as strings) and update domain
order, and each group is cut into chunks of at most the batch size from its lowest instance id.

Worked examples (each one is a test in `tests/unit/test_batches.py`):

1. 10 instances, ids 0–9, regional, update domain = id % 5, maxBatchInstancePercent 20:
   batch size ⌊20 × 10 / 100⌋ = 2, five batches, one per update domain:
   (0, 5), (1, 6), (2, 7), (3, 8), (4, 9).
   At 100 % the batch size is 10 but update domains still split the set: the same five batches.
2. 15 instances in 3 zones (ids 0–4 in zone "1", 5–9 in "2", 10–14 in "3"), update domain = id % 5,
   20 %: batch size 3, but every (zone, update domain) group holds one instance, so there are 15
   batches of one: (0,), (1,), …, (14,). With enableCrossZoneUpgrade the groups are the five update
   domains: (0, 5, 10), (1, 6, 11), (2, 7, 12), (3, 8, 13), (4, 9, 14).
3. Scale sets with 5 or fewer instances have 1 VM per upgrade batch (Azure's words): at 20 %,
   ⌊20 × 5 / 100⌋ = 1 and ⌊20 × 4 / 100⌋ = 0, raised to the minimum of 1. Four instances in update
   domain 0 give (0,), (1,), (2,), (3,).
4. Example 1 with instances 6 and 8 unhealthy and prioritizeUnhealthyInstances: each update domain
   splits into its unhealthy and its healthy part, unhealthy parts first:
   (6,), (8,), (0, 5), (1,), (2, 7), (3,), (4, 9) — seven batches instead of five, the price of putting
   the broken instances first without ever mixing update domains.
5. Example 1 with instance 2 protected and instance 7 already current: both skipped, update domain 2
   has nothing left, the batch size stays 2 (the set still has 10 instances):
   (0, 5), (1, 6), (3, 8), (4, 9); skipped 2 "Protected", 7 "AlreadyCurrent".
6. `fit_batch`: in example 1 (maxUnhealthyInstancePercent 20, so at most 2 of 10 may be out of service)
   with 1 instance unhealthy elsewhere, the healthy batch (0, 5) shrinks to (0,).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple

ALREADY_CURRENT = "AlreadyCurrent"
PROTECTED = "Protected"

_DEFAULT_PERCENT = 20


class Candidate(NamedTuple):
    """One instance of the set as the planner sees it. (A named tuple: the engine makes one per live
    instance of a set before every batch, and a tuple is quicker to make and smaller than a dataclass.)"""

    instance_id: int
    zone: str | None
    update_domain: int
    # Unknown and Initializing count as not healthy: Azure treats Unknown as Unhealthy (§4.5).
    healthy: bool
    current: bool = False
    protected: bool = False


@dataclass(frozen=True)
class BatchPolicy:
    """The parts of Azure's rollingUpgradePolicy that shape batches; defaults are Azure's (§2.2)."""

    max_batch_instance_percent: int = _DEFAULT_PERCENT
    max_unhealthy_instance_percent: int = _DEFAULT_PERCENT
    enable_cross_zone_upgrade: bool = False
    prioritize_unhealthy_instances: bool = False
    # scaleset's own key, set only by update-domain walks (services/walks.py): groups run domain by domain
    # across zones (UD 0 of every zone, then UD 1 …) instead of zone by zone. Zones still never share a batch.
    update_domain_first: bool = False

    @classmethod
    def from_json(cls, policy: Mapping[str, Any]) -> BatchPolicy:
        """From a stored `rollingUpgradePolicy` object; missing or null keys take Azure's defaults."""
        return cls(
            max_batch_instance_percent=_int_field(policy, "maxBatchInstancePercent", _DEFAULT_PERCENT),
            max_unhealthy_instance_percent=_int_field(
                policy, "maxUnhealthyInstancePercent", _DEFAULT_PERCENT
            ),
            enable_cross_zone_upgrade=_bool_field(policy, "enableCrossZoneUpgrade"),
            prioritize_unhealthy_instances=_bool_field(policy, "prioritizeUnhealthyInstances"),
            update_domain_first=_bool_field(policy, "updateDomainFirst"),
        )


@dataclass(frozen=True)
class Skipped:
    instance_id: int
    reason: str


@dataclass(frozen=True)
class BatchPlan:
    """Every batch still to run, in order, and the instances the upgrade leaves alone."""

    batch_size: int
    batches: tuple[tuple[int, ...], ...]
    skipped: tuple[Skipped, ...]

    def first(self) -> tuple[int, ...]:
        """The batch to start next; () when the upgrade has nothing left to do."""
        return self.batches[0] if self.batches else ()


# ------------------------------------------------------------------------------------------ arithmetic
def batch_size(max_batch_instance_percent: int, instance_count: int) -> int:
    """⌊percent × count / 100⌋, at least 1; 0 for an empty set.

    20 % of 10 → 2; 20 % of 5 → 1; 20 % of 4 → 0, raised to 1; 5 % of 100 → 5; 20 % of 0 → 0.
    """
    if instance_count <= 0:
        return 0
    return max(1, max_batch_instance_percent * instance_count // 100)


def unhealthy_budget(max_unhealthy_instance_percent: int, instance_count: int) -> int:
    """How many instances may be unhealthy at once: ⌊percent × count / 100⌋ (20 % of 10 → 2; of 4 → 0).

    `k <= unhealthy_budget(p, n)` exactly when `not exceeds_percent(k, n, p)`, so the budget and the
    "more than p %" checks of M-10 never disagree.
    """
    return max(0, max_unhealthy_instance_percent * instance_count // 100)


def exceeds_percent(count: int, instance_count: int, percent: int) -> bool:
    """Whether `count` is strictly more than `percent` % of `instance_count` (3 of 10 > 20 %; 2 is not).

    Integer arithmetic because floats get the boundary wrong: 0.29 × 100 is 28.999999999999996, which
    would call 29 of 100 instances "more than 29 %".
    """
    return count * 100 > percent * instance_count


# ------------------------------------------------------------------------------------------- planning
def plan_batches(
    candidates: Sequence[Candidate], policy: BatchPolicy, instance_count: int | None = None
) -> BatchPlan:
    """Every batch of the upgrade, in the order they will run.

    `candidates` are the set's instances (order does not matter); `instance_count` is the size of the
    set, skipped instances included, and defaults to len(candidates). See the module docstring for the
    rules. Examples, all with ids 0–9 in update domain id % 5 and the default policy (20 %):

    - nothing to skip: batch size 2, batches (0, 5), (1, 6), (2, 7), (3, 8), (4, 9);
    - 2 protected and 7 current: (0, 5), (1, 6), (3, 8), (4, 9), skipped 2 "Protected" and 7
      "AlreadyCurrent" — the batch size stays 2 because instance_count still counts them;
    - 6 and 8 unhealthy, prioritize_unhealthy_instances: (6,), (8,), (0, 5), (1,), (2, 7), (3,), (4, 9).

    The engine plans again before every batch (one step per pass), so the plan must be stable (M-26):
    with health unchanged, marking plan.batches[0] current (or dropping it) and planning again with the
    same instance_count gives exactly plan.batches[1:]. That holds because the batch size depends only
    on instance_count and the policy, batches[0] is the front chunk of the first non-empty group (or
    unhealthy part), and cutting a sorted group into front chunks gives the same remaining chunks
    after its front chunk is gone. If `fit_batch` ran only a prefix of batches[0], the next plan cuts the
    rest of that group afresh from its new front — and so would a preview made at that moment.
    """
    count = len(candidates) if instance_count is None else instance_count
    if count < len(candidates):
        # An undercount would shrink batches now and change them later, breaking the stability above.
        raise ValueError(f"instance_count {count} is less than the {len(candidates)} candidates given")
    size = batch_size(policy.max_batch_instance_percent, count)
    # One look at each candidate: the engine plans again before every batch, over the whole set.
    pending: list[Candidate] = []
    skipped: list[Candidate] = []
    for candidate in candidates:
        (pending if _skip_reason(candidate) is None else skipped).append(candidate)
    batches = tuple(chunk for part in _parts(pending, policy) for chunk in _chunks(part, size))
    return BatchPlan(batch_size=size, batches=batches, skipped=_skipped(skipped))


def fit_batch(
    batch: Sequence[Candidate], unhealthy_elsewhere: int, policy: BatchPolicy, instance_count: int
) -> tuple[int, ...]:
    """The longest prefix of `batch` that keeps the set within its unhealthy budget; at least one.

    Azure: "unhealthy instances in previous or future batches can cause the percentage of instances in a
    batch to decrease" (§2.2). Each instance is out of service while it is upgraded, so the prefix is cut
    where `unhealthy_elsewhere` plus the prefix's currently healthy members would exceed
    unhealthy_budget(max_unhealthy_instance_percent, instance_count). Members already unhealthy cost
    nothing: they are out of service either way.

    Examples, 10 instances at 20 % (budget 2):
    - batch of healthy 0 and 5, 1 unhealthy elsewhere: 1 + 1 = 2 fits, 1 + 2 = 3 does not → (0,);
    - batch of unhealthy 0 and healthy 5, 1 unhealthy elsewhere: 1 + 0 + 1 = 2 → (0, 5);
    - batch of healthy 0 and 5, nothing unhealthy elsewhere → (0, 5);
    - batch of healthy 0 and 5, 2 unhealthy elsewhere: even 2 + 1 = 3 is over budget, yet the answer
      is (0,) so that an upgrade always progresses. The set may then have budget + 1 instances out of
      service for one batch; the engine's check before every batch (M-10 step 1) stops the run rather
      than let it go further. An empty batch gives ().
    """
    budget = unhealthy_budget(policy.max_unhealthy_instance_percent, instance_count)
    out_of_service = unhealthy_elsewhere
    fitted: list[int] = []
    for candidate in batch:
        out_of_service += int(candidate.healthy)
        # The count only grows along the batch, so the first prefix over budget ends the search.
        if out_of_service > budget and fitted:
            break
        fitted.append(candidate.instance_id)
    return tuple(fitted)


# ------------------------------------------------------------------------------------------- helpers
def _skip_reason(candidate: Candidate) -> str | None:
    # Protection is the operator's explicit word, so it is the reason shown when both apply.
    if candidate.protected:
        return PROTECTED
    if candidate.current:
        return ALREADY_CURRENT
    return None


def _skipped(candidates: Iterable[Candidate]) -> tuple[Skipped, ...]:
    reasons = [(candidate.instance_id, _skip_reason(candidate)) for candidate in candidates]
    return tuple(Skipped(instance_id, reason) for instance_id, reason in sorted(reasons) if reason)


def _group_key(policy: BatchPolicy) -> Callable[[Candidate], tuple[int, bool, str, int]]:
    """The sort key of a candidate's group: zone None first, then zone names, then update domain (or, with
    `update_domain_first`, update domain first and zones within it)."""

    def key(candidate: Candidate) -> tuple[int, bool, str, int]:
        if policy.enable_cross_zone_upgrade or candidate.zone is None:
            zone: tuple[bool, str] = (False, "")
        else:
            zone = (True, candidate.zone)
        if policy.update_domain_first:
            return (candidate.update_domain, *zone, 0)
        return (0, *zone, candidate.update_domain)

    return key


_instance_id = attrgetter("instance_id")


def _groups(pending: Iterable[Candidate], policy: BatchPolicy) -> list[list[Candidate]]:
    """Pending candidates by group, groups in run order, members by instance id."""
    key = _group_key(policy)
    groups: dict[tuple[int, bool, str, int], list[Candidate]] = {}
    # By instance id first, then into groups (one key each), then the few groups in order: the same
    # lists as sorting every candidate by (group, instance id), with far fewer key calls.
    for candidate in sorted(pending, key=_instance_id):
        groups.setdefault(key(candidate), []).append(candidate)
    return [groups[group] for group in sorted(groups)]


def _parts(pending: Iterable[Candidate], policy: BatchPolicy) -> list[list[Candidate]]:
    """The runs to cut into batches: the groups, or with prioritization their unhealthy parts first."""
    groups = _groups(pending, policy)
    if not policy.prioritize_unhealthy_instances:
        return groups
    # Splitting each group (rather than pooling all unhealthy instances) keeps batches inside zone and
    # update-domain boundaries while still putting every unhealthy batch first.
    unhealthy = [[c for c in group if not c.healthy] for group in groups]
    healthy = [[c for c in group if c.healthy] for group in groups]
    return [part for part in unhealthy + healthy if part]


def _chunks(part: Sequence[Candidate], size: int) -> list[tuple[int, ...]]:
    ids = [candidate.instance_id for candidate in part]
    return [tuple(ids[start : start + size]) for start in range(0, len(ids), size)]


def _int_field(policy: Mapping[str, Any], key: str, default: int) -> int:
    value = policy.get(key)
    if value is None:
        return default
    # bool is an int in Python; JSON true is not a percentage.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"rollingUpgradePolicy.{key} must be an integer, not {value!r}")
    return value


def _bool_field(policy: Mapping[str, Any], key: str) -> bool:
    value = policy.get(key)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    # Azure's own ARM samples write booleans as strings ("true"), azure-api.md §2.2.
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"rollingUpgradePolicy.{key} must be true or false, not {value!r}")
