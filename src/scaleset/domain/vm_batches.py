"""In what order a platform upgrade may change standalone VMs (M-21, "availability first").

The rule: VMs of one availability set are upgraded one update domain at a time, in ascending domain
order; single VMs outside sets are batched so that not all VMs of a subscription change at once.

How the waves are built, per subscription (subscriptions are independent, so wave *i* of the whole
plan is wave *i* of every subscription together):

1. Availability-set waves: wave *w* holds, for every set of the subscription, the VMs of that set's
   *w*-th used update domain (sets proceed side by side, each one domain per wave).
2. Then single-VM waves: the subscription's single VMs, sorted by key, in chunks of
   ⌊count × percent / 100⌋ (at least 1, at most count − 1 when there are two or more).
3. A subscription with two VMs or more never gets a single wave: if steps 1–2 made only one (two sets
   of one VM each, say, or one set with every VM in one update domain), its last VM moves to a wave of
   its own after it. Taking VMs out of a wave never mixes update domains, so rule 1 still holds.

Worked example (percent 20): subscription A has set S1 with VMs a0 (UD 0), a1 (UD 1), a2 (UD 0) and
single VMs s1…s5; subscription B has one single VM b1.

    >>> vms = [VmRef("a0", "A", "S1", 0), VmRef("a1", "A", "S1", 1), VmRef("a2", "A", "S1", 0)]
    >>> vms += [VmRef(f"s{i}", "A", None, 0) for i in range(1, 6)] + [VmRef("b1", "B", None, 0)]
    >>> plan_vm_batches(vms)
    [('a0', 'a2', 'b1'), ('a1',), ('s1',), ('s2',), ('s3',), ('s4',), ('s5',)]

Pure: the caller passes what it knows of each VM; the result is the list of batches, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest

DEFAULT_SINGLE_VM_PERCENT = 20


@dataclass(frozen=True)
class VmRef:
    """What the ordering needs of one VM: its key (the VM's resource id, say), its subscription, its
    availability set (None for a single VM) and its update domain inside that set."""

    key: str
    subscription: str
    availability_set: str | None
    update_domain: int


def single_vm_chunk(count: int, percent: int = DEFAULT_SINGLE_VM_PERCENT) -> int:
    """How many single VMs of one subscription change together.

    >>> [single_vm_chunk(n) for n in (1, 2, 5, 10, 12)]
    [1, 1, 1, 2, 2]
    >>> single_vm_chunk(4, percent=100)
    3
    """
    if not 1 <= percent <= 100:
        raise ValueError("percent must be between 1 and 100")
    size = max(1, count * percent // 100)
    return min(size, count - 1) if count > 1 else size


def _subscription_waves(vms: Sequence[VmRef], percent: int) -> list[list[str]]:
    by_set: dict[str, dict[int, list[str]]] = {}
    singles: list[str] = []
    for vm in sorted(vms, key=lambda v: v.key):
        if vm.availability_set is None:
            singles.append(vm.key)
        else:
            by_set.setdefault(vm.availability_set.lower(), {}).setdefault(vm.update_domain, []).append(vm.key)
    set_columns = [[domains[ud] for ud in sorted(domains)] for _, domains in sorted(by_set.items())]
    waves = [
        [key for group in groups if group for key in group]
        for groups in zip_longest(*set_columns, fillvalue=[])
    ]
    chunk = single_vm_chunk(len(singles), percent) if singles else 1
    waves += [singles[start : start + chunk] for start in range(0, len(singles), chunk)]
    if len(waves) == 1 and len(waves[0]) > 1:
        waves = [waves[0][:-1], waves[0][-1:]]
    return waves


def plan_vm_batches(vms: Sequence[VmRef], percent: int = DEFAULT_SINGLE_VM_PERCENT) -> list[tuple[str, ...]]:
    """The batches, in order, in which a platform upgrade may change `vms` (see the module's rule)."""
    by_subscription: dict[str, list[VmRef]] = {}
    for vm in vms:
        by_subscription.setdefault(vm.subscription, []).append(vm)
    columns = [_subscription_waves(group, percent) for _, group in sorted(by_subscription.items())]
    return [tuple(key for wave in waves for key in wave) for waves in zip_longest(*columns, fillvalue=[])]
