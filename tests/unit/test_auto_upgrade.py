"""The pure decisions of automatic OS image upgrades (domain/auto_upgrade.py; M-7, M-8, M-10, M-12), and
the validation rules that switch it on (domain/scaleset_spec.py).
"""

from __future__ import annotations

import doctest
from dataclasses import replace
from typing import Any

import pytest

from scaleset.domain import auto_upgrade
from scaleset.domain.auto_upgrade import (
    DEFAULT_AUTO_OS_POLICY,
    AutoOsSettings,
    MemberOutcome,
    SetFacts,
    newest_allowed,
    plan_platform_upgrade,
    platform_run_policy,
    version_to_block,
    version_to_restore,
)
from scaleset.domain.errors import ArmError
from scaleset.domain.scaleset_spec import validate_scale_set

PUBLISHED = (("1.0.0", True), ("1.1.0", True), ("2.0.0", True))
AUTO_TARGET = "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade"
PROBE_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
    "Microsoft.Network/loadBalancers/lb/probes/http"
)


def facts(**changes: Any) -> SetFacts:
    """An opted-in set on 1.0.0, three instances on 1.0.0, nothing running, nothing blocked."""
    base = SetFacts(
        enabled=True,
        follows_latest=True,
        deleting=False,
        running=False,
        deferred=False,
        model_version="1.0.0",
        instance_versions=("1.0.0", "1.0.0", "1.0.0"),
        published=PUBLISHED,
        blocked=frozenset(),
        attempted=frozenset(),
    )
    return replace(base, **changes)


def test_the_docstring_examples_hold() -> None:
    assert doctest.testmod(auto_upgrade).failed == 0


# -- which version ----------------------------------------------------------------------------------
def test_newest_allowed_skips_blocked_and_unsupported_versions() -> None:
    """M-12 and the loop guard: the newest version that is marked supported and not blocked."""
    assert newest_allowed(PUBLISHED, frozenset()) == "2.0.0"
    assert newest_allowed(PUBLISHED, frozenset({"2.0.0"})) == "1.1.0"
    assert newest_allowed(PUBLISHED, frozenset({"2.0.0", "1.1.0", "1.0.0"})) is None
    assert newest_allowed((("1.0.0", True), ("1.1.0", False)), frozenset()) == "1.0.0"
    # Versions compare as versions, not strings; 2.0.00 is the blocked 2.0.0 spelled otherwise.
    assert newest_allowed((("1.9.0", True), ("1.10.0", True)), frozenset()) == "1.10.0"
    assert newest_allowed(PUBLISHED, frozenset({"2.0.00"})) == "1.1.0"


# -- when to start -----------------------------------------------------------------------------------
def test_a_newer_version_starts_a_new_model_run() -> None:
    decision = plan_platform_upgrade(facts())
    assert (decision.action, decision.target) == ("new_model", "2.0.0")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"enabled": False}, "off"),
        ({"follows_latest": False}, "'latest'"),
        ({"deleting": True}, "deleted"),
        ({"model_version": "2.0.0", "instance_versions": ("2.0.0",)}, "nothing newer"),
        ({"blocked": frozenset({"2.0.0", "1.1.0"})}, "nothing newer"),
        ({"published": (("1.0.0", True), ("2.0.0", False))}, "nothing newer"),
    ],
)
def test_nothing_starts_when_a_rule_says_no(changes: dict[str, Any], reason: str) -> None:
    decision = plan_platform_upgrade(facts(**changes))
    assert decision.action == "none"
    assert reason in decision.reason


def test_a_busy_or_deferred_set_waits_but_says_for_what() -> None:
    """A set running another upgrade (or holding it for approval) is not lost: the target is named."""
    for changes, words in (({"running": True}, "waiting"), ({"deferred": True}, "approveRollingUpgrade")):
        decision = plan_platform_upgrade(facts(**changes))
        assert (decision.action, decision.target) == ("none", "2.0.0")
        assert words in decision.reason


def test_instances_behind_the_model_get_one_catch_up_run() -> None:
    """Model on the newest version, instances older: one run; never twice for the same version."""
    behind = facts(model_version="2.0.0", instance_versions=("1.0.0", "2.0.0"))
    assert plan_platform_upgrade(behind).action == "catch_up"
    tried = replace(behind, attempted=frozenset({"2.0.0"}))
    assert plan_platform_upgrade(tried).action == "none"


def test_the_set_never_goes_backwards() -> None:
    """The set's model names 2.0.0, which was blocked after a user's run: 1.1.0 is older, nothing starts."""
    decision = plan_platform_upgrade(facts(model_version="2.0.0", blocked=frozenset({"2.0.0"})))
    assert decision.action == "none"


# -- policy --------------------------------------------------------------------------------------------
def test_default_policy_is_azures_twenty_percent_with_rollback() -> None:
    policy, rollback = platform_run_policy({"mode": "Manual", "automaticOSUpgradePolicy": {}})
    assert rollback is True
    assert policy == {**DEFAULT_AUTO_OS_POLICY, "rollbackFailedInstancesOnPolicyBreach": True}
    assert (
        policy["maxBatchInstancePercent"],
        policy["maxUnhealthyInstancePercent"],
        policy["maxUnhealthyUpgradedInstancePercent"],
        policy["pauseTimeBetweenBatches"],
    ) == (20, 20, 20, "PT0S")


def test_own_policy_only_with_use_rolling_upgrade_policy_and_rollback_switch() -> None:
    own = {"maxBatchInstancePercent": 50, "pauseTimeBetweenBatches": "PT10S"}
    upgrade_policy: dict[str, Any] = {
        "mode": "Rolling",
        "rollingUpgradePolicy": own,
        "automaticOSUpgradePolicy": {"useRollingUpgradePolicy": True, "disableAutomaticRollback": True},
    }
    policy, rollback = platform_run_policy(upgrade_policy)
    assert (policy["maxBatchInstancePercent"], policy["pauseTimeBetweenBatches"]) == (50, "PT10S")
    assert rollback is False and policy["rollbackFailedInstancesOnPolicyBreach"] is False
    # useRollingUpgradePolicy without a policy on the set falls back to the default (azure-api.md §2.2).
    del upgrade_policy["rollingUpgradePolicy"]
    assert platform_run_policy(upgrade_policy)[0]["maxBatchInstancePercent"] == 20


def test_settings_default_to_false() -> None:
    assert AutoOsSettings.of({"mode": "Manual"}) == AutoOsSettings(False, False, False, False)


# -- outcomes -----------------------------------------------------------------------------------------
def test_only_a_rolled_back_image_change_is_blocked() -> None:
    rolled = MemberOutcome("rolled_back", "1.1.0")
    assert version_to_block("2.0.0", [rolled, MemberOutcome("succeeded", "1.1.0")]) == "2.0.0"
    assert version_to_block("2.0.0", [MemberOutcome("rollback_failed", "1.1.0")]) == "2.0.0"
    # Failed without rollback, or a rollback of a model change on the same image: not the image's fault.
    assert version_to_block("2.0.0", [MemberOutcome("failed", "1.1.0")]) is None
    assert version_to_block("2.0.0", [MemberOutcome("rolled_back", "2.0.0")]) is None
    assert version_to_block("2.0.0", []) is None


def test_the_set_goes_back_to_the_newest_image_its_instances_were_rolled_back_to() -> None:
    members = [MemberOutcome("rolled_back", "1.0.0"), MemberOutcome("rolled_back", "1.1.0")]
    assert version_to_restore(members, frozenset()) == "1.1.0"
    assert version_to_restore(members, frozenset({"1.1.0"})) == "1.0.0"
    assert version_to_restore([MemberOutcome("failed", "1.0.0")], frozenset()) is None


# -- validation (domain/scaleset_spec.py) ---------------------------------------------------------------
def set_body(version: str = "latest", probe: bool = True, health_extension: bool = False) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "storageProfile": {
            "imageReference": {
                "publisher": "scaleset",
                "offer": "webapp",
                "sku": "stable",
                "version": version,
            }
        }
    }
    if probe:
        profile["networkProfile"] = {"healthProbe": {"id": PROBE_ID}}
    if health_extension:
        profile["extensionProfile"] = {
            "extensions": [
                {
                    "name": "health",
                    "properties": {
                        "publisher": "Microsoft.ManagedServices",
                        "type": "ApplicationHealthLinux",
                        "typeHandlerVersion": "2.0",
                        "settings": {"protocol": "http", "port": 8080, "requestPath": "/health"},
                    },
                }
            ]
        }
    policy = {
        "mode": "Automatic",
        "automaticOSUpgradePolicy": {
            "enableAutomaticOSUpgrade": True,
            "disableAutomaticRollback": "true",
            "useRollingUpgradePolicy": False,
            "osRollingUpgradeDeferral": False,
        },
    }
    return {
        "location": "eastus",
        "sku": {"capacity": 2},
        "properties": {"virtualMachineProfile": profile, "upgradePolicy": policy},
    }


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (set_body(version="1.0.0"), "'latest'"),
        (set_body(probe=False), "health source"),
    ],
)
def test_enabling_is_refused_without_latest_or_a_health_source(body: dict[str, Any], words: str) -> None:
    with pytest.raises(ArmError) as caught:
        validate_scale_set(body, "web", None)
    assert (caught.value.status, caught.value.code, caught.value.target) == (
        400,
        "InvalidParameter",
        AUTO_TARGET,
    )
    assert words in caught.value.message


def test_every_field_round_trips_and_either_health_source_will_do() -> None:
    for body in (set_body(), set_body(probe=False, health_extension=True)):
        stored = validate_scale_set(body, "web", None)["properties"]["upgradePolicy"]
        assert stored["automaticOSUpgradePolicy"] == {
            "enableAutomaticOSUpgrade": True,
            "disableAutomaticRollback": True,
            "useRollingUpgradePolicy": False,
            "osRollingUpgradeDeferral": False,
        }
