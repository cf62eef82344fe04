"""The automatic extension upgrade's pure decision (domain/auto_extension.py; M-18, M-20, M-23;
azure-api.md §4.4): which extension moves next, to which version, and what an ended run says against it."""

from __future__ import annotations

import doctest

from hypothesis import given
from hypothesis import strategies as st

from scaleset.domain import auto_extension
from scaleset.domain.auto_extension import (
    ExtensionFacts,
    ExtensionSetFacts,
    extension_enabled,
    extension_run_policy,
    newest_same_major,
    next_extension_upgrade,
    run_verdict,
)
from scaleset.domain.versions import ExtensionVersion

KEY = "contoso.monitor"


def one(
    pin: str, published: tuple[str, ...], excluded: frozenset[tuple[str, str]] = frozenset(), **facts: bool
):
    extension = ExtensionFacts("monitor", KEY, "1.0", True, pin)
    return ExtensionSetFacts(
        facts.get("running", False),
        facts.get("deleting", False),
        (extension,),
        {KEY: published},
        excluded,
        pending_reimage=facts.get("pending_reimage", False),
    )


def test_the_worked_examples_hold() -> None:
    assert doctest.testmod(auto_extension).failed == 0


def test_a_newer_minor_is_offered_a_major_never() -> None:
    decision = next_extension_upgrade(one("1.0.0", ("1.0.0", "1.3.0", "2.0.0", "2.1.0")))
    assert decision.target is not None
    assert (decision.target.name, decision.target.version, decision.target.previous) == (
        "monitor",
        "1.3.0",
        "1.0.0",
    )
    assert next_extension_upgrade(one("1.3.0", ("1.0.0", "1.3.0", "2.0.0"))).target is None


def test_an_excluded_version_gives_way_to_the_next_newest_and_nothing_older_than_the_pin() -> None:
    excluded = frozenset({(KEY, "1.3.0"), ("other.type", "1.2.0")})
    decision = next_extension_upgrade(one("1.1.0", ("1.0.0", "1.1.0", "1.2.0", "1.3.0"), excluded))
    assert decision.target is not None and decision.target.version == "1.2.0"
    only_older = next_extension_upgrade(one("1.1.0", ("1.0.0", "1.1.0", "1.3.0"), excluded))
    assert only_older.target is None


def test_a_busy_set_waits_and_a_deleting_or_lagging_one_gets_nothing() -> None:
    published = ("1.0.0", "1.1.0")
    busy = next_extension_upgrade(one("1.0.0", published, running=True))
    assert (busy.target, busy.waiting) == (None, True)
    assert "waiting for the running upgrade" in busy.reason
    assert next_extension_upgrade(one("1.0.0", published, deleting=True)).target is None
    assert next_extension_upgrade(one("1.0.0", published, pending_reimage=True)).target is None


def test_extensions_that_do_not_opt_in_or_have_no_pin_are_skipped_in_model_order() -> None:
    off = ExtensionFacts("a", "p.a", "1.0", False, "1.0.0")
    unpinned = ExtensionFacts("b", "p.b", "1.0", True, None)
    first = ExtensionFacts("c", "p.c", "1.0", True, "1.0.0")
    second = ExtensionFacts("d", "p.d", "1.0", True, "1.0.0")
    published = {key: ("1.0.0", "1.1.0") for key in ("p.a", "p.b", "p.c", "p.d")}
    facts = ExtensionSetFacts(False, False, (off, unpinned, first, second), published, frozenset())
    decision = next_extension_upgrade(facts)
    assert decision.target is not None and decision.target.name == "c"
    # Once c has failed (its version excluded), d is next: one's failure does not stop the others (M-23).
    facts = ExtensionSetFacts(
        False, False, (off, unpinned, first, second), published, frozenset({("p.c", "1.1.0")})
    )
    decision = next_extension_upgrade(facts)
    assert decision.target is not None and decision.target.name == "d"


def test_enable_automatic_upgrade_must_be_true() -> None:
    assert extension_enabled({"enableAutomaticUpgrade": True})
    assert not extension_enabled({})
    assert not extension_enabled({"enableAutomaticUpgrade": False, "autoUpgradeMinorVersion": True})


def test_run_verdicts() -> None:
    assert run_verdict("Faulted", ["rolled_back"]) == "failed"
    assert run_verdict("Completed", ["succeeded", "rollback_failed"]) == "failed"
    assert run_verdict("Faulted", ["succeeded"]) == "failed"  # faulted after reaching instances
    assert run_verdict("Faulted", []) == "gated"
    assert run_verdict("Cancelled", ["succeeded"]) is None
    assert run_verdict("Completed", ["succeeded"]) is None


def test_the_run_policy_is_the_sets_own_over_azures_defaults_with_rollback() -> None:
    policy = extension_run_policy({"mode": "Manual"})
    assert policy["maxBatchInstancePercent"] == 20
    assert policy["maxUnhealthyUpgradedInstancePercent"] == 20
    assert policy["rollbackFailedInstancesOnPolicyBreach"] is True
    own = extension_run_policy(
        {
            "mode": "Rolling",
            "rollingUpgradePolicy": {"maxBatchInstancePercent": 40, "pauseTimeBetweenBatches": "PT5S"},
        }
    )
    assert (own["maxBatchInstancePercent"], own["pauseTimeBetweenBatches"]) == (40, "PT5S")


versions = st.builds(
    lambda major, minor, build: f"{major}.{minor}.{build}",
    st.integers(0, 3),
    st.integers(0, 4),
    st.integers(0, 3),
)


@given(
    major=st.integers(0, 3),
    pin_minor=st.integers(0, 4),
    published=st.lists(versions, max_size=12, unique=True),
    excluded=st.lists(versions, max_size=6),
)
def test_never_crosses_a_major_never_offers_an_excluded_or_older_version(
    major: int, pin_minor: int, published: list[str], excluded: list[str]
) -> None:
    pin = f"{major}.{pin_minor}.0"
    chosen = newest_same_major(f"{major}.0", pin, published, excluded)
    if chosen is None:
        assert not [
            v
            for v in published
            if ExtensionVersion.parse(v).major == major
            and ExtensionVersion.parse(v) > ExtensionVersion.parse(pin)
            and v not in excluded
        ]
        return
    parsed = ExtensionVersion.parse(chosen)
    assert parsed.major == major
    assert parsed > ExtensionVersion.parse(pin)
    assert chosen in published and chosen not in excluded
    # ...and it is the newest such one.
    assert all(
        ExtensionVersion.parse(v) <= parsed
        for v in published
        if ExtensionVersion.parse(v).major == major and v not in excluded
    )
