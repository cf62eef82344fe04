"""Automatic OS image upgrade: which set gets which image version, under which policy (M-7, M-8, M-10, M-12).

Pure: the platform service (`services/platform.py`) gathers the facts of a set, asks `plan_platform_upgrade`
and acts on the answer. The rules, and why:

- A set takes part only with `enableAutomaticOSUpgrade`, an image version of `latest`, and no deletion
  under way; with `osRollingUpgradeDeferral` the upgrade waits for `approveRollingUpgrade`.
- The version offered is the newest *allowed* one: published for the set's publisher/offer/sku, marked
  `automaticOSUpgradeSupported` in its manifest, and not *blocked* on the set. A version is blocked on a set
  when an upgrade to it there was rolled back: offering it again would reimage, fail and roll back for ever
  (Azure's "retried after some time", without a memory). With 2.0.0 blocked, a set on 1.0.0 is still
  offered 1.1.0; a set on 1.1.0 gets nothing until 2.0.1 is published or an operator clears 2.0.0.
- One set runs one upgrade at a time: a set that is busy is left for when its run ends.
- The platform tries a version on a set once. A run that was cancelled, or faulted without rollback, is not
  started again for the same version (that would loop as surely as a rollback): the set's model already
  names the version, and the platform waits for a newer one (a run that stopped at the gate before its
  first batch touched nothing and is tried again a while later: the service decides what counts as a
  try, `services/platform.py`). A set whose model names the newest version
  while some of its instances still run an older image (auto upgrade just switched on in Manual mode, say)
  gets one catch-up run towards it.

    >>> published = (("1.0.0", True), ("1.1.0", True), ("2.0.0", True))
    >>> newest_allowed(published, blocked=frozenset({"2.0.0"}))
    '1.1.0'
    >>> facts = SetFacts(True, True, False, False, False, "1.0.0", ("1.0.0",) * 3, published,
    ...                  frozenset({"2.0.0"}), frozenset())
    >>> plan_platform_upgrade(facts)
    PlatformDecision(action='new_model', target='1.1.0', reason='1.1.0 is newer than 1.0.0')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from scaleset.domain.scaleset_spec import DEFAULT_ROLLING_POLICY, reference_follows_latest
from scaleset.domain.versions import ImageVersion

Json = dict[str, Any]
PLATFORM = "Platform"

# Azure's policy for automatic OS upgrades when the set does not ask for its own (azure-api.md §4.2):
# batches of at most 20 %, stop above 20 % unhealthy before a batch or 20 % unhealthy upgraded instances,
# no pause. Rollback is on by default for platform upgrades; `platform_run_policy` sets it.
DEFAULT_AUTO_OS_POLICY: Json = {**DEFAULT_ROLLING_POLICY}

Action = Literal["new_model", "catch_up", "none"]


@dataclass(frozen=True)
class AutoOsSettings:
    """`upgradePolicy.automaticOSUpgradePolicy` with Azure's defaults (all false)."""

    enabled: bool = False
    disable_rollback: bool = False
    use_rolling_policy: bool = False
    deferral: bool = False

    @classmethod
    def of(cls, upgrade_policy: Mapping[str, Any]) -> AutoOsSettings:
        auto = upgrade_policy.get("automaticOSUpgradePolicy") or {}
        return cls(
            enabled=bool(auto.get("enableAutomaticOSUpgrade")),
            disable_rollback=bool(auto.get("disableAutomaticRollback")),
            use_rolling_policy=bool(auto.get("useRollingUpgradePolicy")),
            deferral=bool(auto.get("osRollingUpgradeDeferral")),
        )


def platform_run_policy(upgrade_policy: Mapping[str, Any]) -> tuple[Json, bool]:
    """The rolling policy a platform-started OS upgrade runs with, and whether it rolls back.

    The set's own `rollingUpgradePolicy` only with `useRollingUpgradePolicy` (and Azure's default when the
    set defines none); rollback unless `disableAutomaticRollback`. The returned policy says so too, as
    `rollingUpgrades/latest` echoes it.

    >>> platform_run_policy({"mode": "Rolling", "rollingUpgradePolicy": {"maxBatchInstancePercent": 50}})
    ... # doctest: +ELLIPSIS
    ({'maxBatchInstancePercent': 20, ..., 'rollbackFailedInstancesOnPolicyBreach': True, ...}, True)
    """
    settings = AutoOsSettings.of(upgrade_policy)
    own = upgrade_policy.get("rollingUpgradePolicy")
    policy = {**DEFAULT_AUTO_OS_POLICY}
    if settings.use_rolling_policy and own:
        policy.update(own)
    rollback = not settings.disable_rollback
    policy["rollbackFailedInstancesOnPolicyBreach"] = rollback
    # Never two zones of a region at once (M-21): a platform batch stays in one zone whatever the set says.
    policy["enableCrossZoneUpgrade"] = False
    return policy, rollback


def _parse(version: str) -> ImageVersion:
    return ImageVersion.parse(version)


def newest_allowed(published: Iterable[tuple[str, bool]], blocked: frozenset[str]) -> str | None:
    """The newest published version that supports automatic OS upgrade and is not blocked on the set."""
    blocked_parsed = {_parse(v) for v in blocked}
    allowed = [v for v, supported in published if supported and _parse(v) not in blocked_parsed]
    return max(allowed, key=_parse, default=None)


@dataclass(frozen=True)
class SetFacts:
    """What the platform knows of one set when it decides."""

    enabled: bool
    follows_latest: bool
    deleting: bool
    running: bool  # a rolling upgrade is active on the set
    deferred: bool  # osRollingUpgradeDeferral and not approved
    model_version: str  # the exact image version the set's model names
    instance_versions: tuple[str, ...]  # image versions of live instances a set-wide upgrade may touch
    published: tuple[tuple[str, bool], ...]  # (version, automaticOSUpgradeSupported)
    blocked: frozenset[str]
    attempted: frozenset[str]  # versions the platform already tried on this set (see services/platform.py)


@dataclass(frozen=True)
class PlatformDecision:
    action: Action
    target: str | None
    reason: str


def plan_platform_upgrade(facts: SetFacts) -> PlatformDecision:
    """Whether the platform starts an OS upgrade on the set now, towards which version, and why (not)."""
    if not facts.enabled:
        return PlatformDecision("none", None, "automatic OS upgrade is off")
    if not facts.follows_latest:
        return PlatformDecision("none", None, "the image version is not 'latest'")
    if facts.deleting:
        return PlatformDecision("none", None, "the set is being deleted")
    target = newest_allowed(facts.published, facts.blocked)
    if target is None:
        return PlatformDecision("none", None, "no published version is allowed")
    wanted = _parse(target)
    current = _parse(facts.model_version)
    if wanted > current:
        action: Action = "new_model"
        reason = f"{target} is newer than {facts.model_version}"
    elif wanted == current and any(_parse(v) < wanted for v in facts.instance_versions):
        if target in facts.attempted:
            return PlatformDecision("none", None, f"the platform already ran an upgrade to {target}")
        action, reason = "catch_up", f"instances still run images older than {target}"
    else:
        return PlatformDecision("none", None, f"the set is on {facts.model_version}, nothing newer allowed")
    if facts.running:
        return PlatformDecision("none", target, f"{reason}; waiting for the running upgrade to end")
    if facts.deferred:
        return PlatformDecision("none", target, f"{reason}; deferred until approveRollingUpgrade")
    return PlatformDecision(action, target, reason)


@dataclass(frozen=True)
class MemberOutcome:
    """One instance of a finished run: its final state and the image it ran before the run."""

    state: str
    before_image_version: str


def version_to_block(target_image_version: str, members: Iterable[MemberOutcome]) -> str | None:
    """The version a finished run proves bad on its set: its target, when an instance that the run moved
    to a different image had to be rolled back (the image, not the model, is what the platform offers).

    >>> back, kept = MemberOutcome("rolled_back", "1.1.0"), MemberOutcome("succeeded", "1.1.0")
    >>> version_to_block("2.0.0", [back, kept])
    '2.0.0'
    >>> version_to_block("2.0.0", [MemberOutcome("failed", "1.1.0")]) is None
    True
    """
    for member in members:
        if member.state in ("rolled_back", "rollback_failed") and _parse(
            member.before_image_version
        ) != _parse(target_image_version):
            return target_image_version
    return None


def version_to_restore(members: Iterable[MemberOutcome], blocked: frozenset[str]) -> str | None:
    """After a rollback, the image the set's model goes back to: the newest one its rolled-back instances
    ran before, unless that one is blocked too."""
    before = {m.before_image_version for m in members if m.state == "rolled_back"}
    candidates = [v for v in before if v not in blocked]
    return max(candidates, key=_parse, default=None)


def follows_latest(image_reference: Mapping[str, Any]) -> bool:
    """A platform image on 'latest', or a gallery image id without /versions/... (M-12)."""
    return reference_follows_latest(image_reference)
