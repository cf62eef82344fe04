"""The order of VM upgrades (domain/vm_batches.py): availability sets one update domain at a time, single
VMs never all of a subscription at once; checked on the docstring's example and on generated fleets."""

from __future__ import annotations

import random

import pytest

from scaleset.domain.vm_batches import VmRef, plan_vm_batches, single_vm_chunk


def test_the_worked_example() -> None:
    vms = [VmRef("a0", "A", "S1", 0), VmRef("a1", "A", "S1", 1), VmRef("a2", "A", "S1", 0)]
    vms += [VmRef(f"s{i}", "A", None, 0) for i in range(1, 6)] + [VmRef("b1", "B", None, 0)]

    assert plan_vm_batches(vms) == [
        ("a0", "a2", "b1"),
        ("a1",),
        ("s1",),
        ("s2",),
        ("s3",),
        ("s4",),
        ("s5",),
    ]


def test_two_sets_move_side_by_side_one_domain_each() -> None:
    vms = [VmRef(f"x{ud}", "A", "X", ud) for ud in (0, 1, 2)] + [
        VmRef(f"y{ud}", "A", "Y", ud) for ud in (3, 4)
    ]

    assert plan_vm_batches(vms) == [("x0", "y3"), ("x1", "y4"), ("x2",)]


def test_a_subscription_of_two_lone_vms_is_never_changed_at_once() -> None:
    # Each set holds one VM: rule 1 alone would change both in one batch.
    vms = [VmRef("p", "A", "P", 0), VmRef("q", "A", "Q", 0)]

    assert plan_vm_batches(vms) == [("p",), ("q",)]


def test_single_vm_chunks() -> None:
    assert [single_vm_chunk(n) for n in (1, 2, 5, 10, 12, 100)] == [1, 1, 1, 2, 2, 20]
    assert single_vm_chunk(4, percent=100) == 3
    with pytest.raises(ValueError):
        single_vm_chunk(4, percent=0)


def test_empty_fleet_has_no_batches() -> None:
    assert plan_vm_batches([]) == []


@pytest.mark.parametrize("seed", range(40))
def test_rules_hold_on_generated_fleets(seed: int) -> None:
    rng = random.Random(seed)
    vms = [
        VmRef(
            f"vm{i}",
            rng.choice(("A", "B", "C")),
            rng.choice((None, None, "S1", "S2", "S3")),
            rng.randrange(5),
        )
        for i in range(rng.randrange(1, 40))
    ]
    percent = rng.choice((1, 20, 50, 100))

    batches = plan_vm_batches(vms, percent)

    by_key = {vm.key: vm for vm in vms}
    flat = [key for batch in batches for key in batch]
    assert sorted(flat) == sorted(by_key), "every VM exactly once"
    assert all(batches), "no empty batch"
    position = {key: index for index, batch in enumerate(batches) for key in batch}
    for batch in batches:
        members = [by_key[key] for key in batch]
        # Rule 1: one update domain per availability set per batch.
        seen: dict[tuple[str, str], set[int]] = {}
        for vm in members:
            if vm.availability_set is not None:
                seen.setdefault((vm.subscription, vm.availability_set), set()).add(vm.update_domain)
        assert all(len(domains) == 1 for domains in seen.values())
        # Rule 2: a subscription with two VMs or more never changes whole.
        for subscription in {vm.subscription for vm in members}:
            everyone = [vm for vm in vms if vm.subscription == subscription]
            if len(everyone) > 1:
                assert len([vm for vm in members if vm.subscription == subscription]) < len(everyone)
    # Update domains of one set go in ascending order.
    for a in vms:
        for b in vms:
            same_set = a.availability_set is not None and (a.subscription, a.availability_set) == (
                b.subscription,
                b.availability_set,
            )
            if same_set and a.update_domain < b.update_domain:
                assert position[a.key] < position[b.key]


def test_docstring_examples_hold() -> None:
    import doctest

    from scaleset.domain import availability_set_spec, vm_batches

    for module in (vm_batches, availability_set_spec):
        assert doctest.testmod(module).failed == 0
