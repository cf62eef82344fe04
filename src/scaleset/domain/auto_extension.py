"""Automatic extension upgrade: which extension of a set the platform moves next, to which version
(M-18, M-20, M-22, M-23; azure-api.md §4.4, extension-protocol.md §4).

Pure: the service (`services/platform_extensions.py`) gathers a set's facts, asks `next_extension_upgrade`
and starts a run for the answer. The rules, and why:

- Only extensions with `enableAutomaticUpgrade: true` take part, with or without `autoUpgradeMinorVersion`
  (Azure allows both; the latter only picks the newest minor when a model is written).
- The version offered is the newest published one of the extension's publisher/type with the *same
  major* as its `typeHandlerVersion`, newer than the version the set's newest model pins, and not
  excluded on the set (it failed there and waits for its retry, or is blocked:
  `services/extension_failures.py`). A major version is never crossed.
- One extension per run (M-23: "applied individually"): the first, in the model's order, that has a
  version to move to. The next one gets its own run when this one ends, whatever its outcome, so one
  extension's failure does not stop the others (its failed version is excluded by then).
- One run at a time per set; a set being deleted gets nothing.

Worked example: a model with `monitor` (Contoso.Monitor "1.0", pinned 1.0.0, auto upgrade on) and
`script` (Contoso.Script "2.1", pinned 2.1.0, auto upgrade on); published monitor 1.0.0, 1.1.0, 1.2.0,
2.0.0 and script 2.1.0, 2.3.0. With monitor 1.2.0 excluded, monitor moves to 1.1.0 first (never 2.0.0);
once the set pins 1.1.0, script moves to 2.3.0.

    >>> monitor = ExtensionFacts("monitor", "contoso.monitor", "1.0", True, "1.0.0")
    >>> script = ExtensionFacts("script", "contoso.script", "2.1", True, "2.1.0")
    >>> published = {"contoso.monitor": ("1.0.0", "1.1.0", "1.2.0", "2.0.0"),
    ...              "contoso.script": ("2.1.0", "2.3.0")}
    >>> facts = ExtensionSetFacts(False, False, (monitor, script), published,
    ...                           frozenset({("contoso.monitor", "1.2.0")}))
    >>> next_extension_upgrade(facts).target
    ExtensionTarget(name='monitor', key='contoso.monitor', version='1.1.0', previous='1.0.0')
    >>> moved = ExtensionFacts("monitor", "contoso.monitor", "1.0", True, "1.1.0")
    >>> next_extension_upgrade(ExtensionSetFacts(False, False, (moved, script), published,
    ...                        frozenset({("contoso.monitor", "1.2.0")}))).target.version
    '2.3.0'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from scaleset.domain.rolling import FAULTED
from scaleset.domain.scaleset_spec import DEFAULT_ROLLING_POLICY
from scaleset.domain.versions import ExtensionVersion

Json = dict[str, Any]


@dataclass(frozen=True)
class ExtensionFacts:
    """One extension of a set's newest model, as the decision needs it."""

    name: str
    key: str  # "publisher.type" in lower case
    type_handler_version: str  # "major.minor", as the model names it
    automatic_upgrade: bool  # enableAutomaticUpgrade
    pin: str | None  # the exact version the newest model version runs (None: not resolved)


@dataclass(frozen=True)
class ExtensionSetFacts:
    running: bool  # a rolling upgrade is active on the set
    deleting: bool
    extensions: tuple[ExtensionFacts, ...]  # in the model's order
    published: Mapping[str, tuple[str, ...]]  # extension key → published versions
    excluded: frozenset[tuple[str, str]]  # (key, version) the set must not be given now
    # Some instance lags behind the model by a change that needs a reimage (a Manual set with a pending
    # image or OS change): a run towards the newest model would reimage it, which an extension upgrade
    # must never do, so the set waits until the model is applied.
    pending_reimage: bool = False


@dataclass(frozen=True)
class ExtensionTarget:
    name: str
    key: str
    version: str
    previous: str  # the pin it moves from


@dataclass(frozen=True)
class ExtensionDecision:
    target: ExtensionTarget | None  # None: nothing starts now
    reason: str
    waiting: bool = False  # an upgrade is due, but the set is busy


def extension_enabled(properties: Mapping[str, Any]) -> bool:
    """`enableAutomaticUpgrade` as the model says it (absent means off: scaleset speaks api-versions
    from before 2025-04-01, which made it the default, and a model says what it wants)."""
    return properties.get("enableAutomaticUpgrade") is True


def newest_same_major(
    type_handler_version: str, pin: str, published: Iterable[str], excluded: Iterable[str]
) -> str | None:
    """The newest published version of `type_handler_version`'s major that is newer than `pin` and not
    excluded; None when there is none.

    >>> newest_same_major("1.0", "1.0.0", ["1.0.0", "1.4.0", "1.5.0", "2.0.0"], ["1.5.0"])
    '1.4.0'
    >>> newest_same_major("1.0", "1.4.0", ["1.0.0", "1.4.0", "2.0.0"], []) is None
    True
    """
    major = ExtensionVersion.parse(type_handler_version).major
    floor = ExtensionVersion.parse(pin)
    barred = {ExtensionVersion.parse(v) for v in excluded}
    candidates = [ExtensionVersion.parse(v) for v in published if ExtensionVersion.parse(v).major == major]
    allowed = [v for v in candidates if v > floor and v not in barred]
    return max(allowed, key=lambda v: (v, v.text)).text if allowed else None


def next_extension_upgrade(facts: ExtensionSetFacts) -> ExtensionDecision:
    """The one extension the platform moves on the set now, and to which version; or why nothing."""
    if facts.deleting:
        return ExtensionDecision(None, "the set is being deleted")
    if facts.pending_reimage:
        return ExtensionDecision(
            None, "instances have model changes pending that need a reimage; apply the model first", True
        )
    for extension in facts.extensions:
        if not extension.automatic_upgrade or extension.pin is None:
            continue
        excluded = [v for k, v in facts.excluded if k == extension.key]
        version = newest_same_major(
            extension.type_handler_version,
            extension.pin,
            facts.published.get(extension.key, ()),
            excluded,
        )
        if version is None:
            continue
        target = ExtensionTarget(extension.name, extension.key, version, extension.pin)
        reason = f"{extension.name}: {version} is newer than {extension.pin}"
        if facts.running:
            return ExtensionDecision(None, f"{reason}; waiting for the running upgrade to end", True)
        return ExtensionDecision(target, reason)
    return ExtensionDecision(None, "no extension with automatic upgrade has a newer allowed version")


def run_verdict(status: str, member_states: Iterable[str]) -> Literal["failed", "gated"] | None:
    """What an ended platform extension run says against its version (services/extension_failures.py).

    - `failed`: an instance had to be rolled back (the run went on, or faulted on a breach), or the run
      faulted after reaching instances;
    - `gated`: it faulted at the gate before its first batch, so it touched nothing;
    - None: it completed with every instance healthy, or was cancelled (the operator's word, not the
      version's fault; the set's model keeps the version, so the platform does not start it again).

    >>> run_verdict("Completed", ["succeeded", "rolled_back"]), run_verdict("Faulted", [])
    ('failed', 'gated')
    >>> run_verdict("Completed", ["succeeded"]) is None
    True
    """
    states = list(member_states)
    if any(state in ("rolled_back", "rollback_failed") for state in states):
        return "failed"
    if status == FAULTED:
        return "failed" if states else "gated"
    return None


def extension_run_policy(upgrade_policy: Mapping[str, Any]) -> Json:
    """The rolling policy of a platform extension upgrade: the set's `rollingUpgradePolicy` over Azure's
    defaults, whatever `upgradePolicy.mode` says (automatic extension upgrades ignore the mode, azure-api.md
    §4.1), with rollback on (M-19). Echoed by `rollingUpgrades/latest`.

    >>> own = {"maxBatchInstancePercent": 50}
    >>> policy = extension_run_policy({"mode": "Manual", "rollingUpgradePolicy": own})
    >>> policy["maxBatchInstancePercent"], policy["rollbackFailedInstancesOnPolicyBreach"]
    (50, True)
    """
    own = upgrade_policy.get("rollingUpgradePolicy") or {}
    # Availability first (M-21): a platform upgrade never has instances of two zones in flight at once.
    return {
        **DEFAULT_ROLLING_POLICY,
        **own,
        "rollbackFailedInstancesOnPolicyBreach": True,
        "enableCrossZoneUpgrade": False,
    }
