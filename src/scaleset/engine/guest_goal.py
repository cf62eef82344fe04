"""From a scale-set model to the guest agent's goal state, and from the guest's report to a verdict.

Pure: catalog lookups, unsealing and encryption come in as functions, so the rules are tested alone.

Sequence numbers follow the platform's rule (extension-protocol.md §1.6): an extension's `seq_no` changes
only when its own configuration changes (settings, protected settings, version, forceUpdateTag), so a
handler that keeps its `mrseq` does not run again because some other part of the model changed. We take
the model version since which the configuration has been unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scaleset.guest.goalstate import ExtensionGoal, GoalState, GuestStatus
from scaleset.providers.base import GuestReport

Json = dict[str, Any]
# (publisher, type, typeHandlerVersion, autoUpgradeMinorVersion, pinned exact version or None)
#   → (exact version, package directory) or None
ResolveExtension = Callable[[str, str, str, bool, str | None], tuple[str, str] | None]
# sealed protected settings → (base64 CMS for the instance, thumbprint)
EncryptForInstance = Callable[[str], tuple[str, str]]

_CONFIG_KEYS = (
    "publisher",
    "type",
    "typeHandlerVersion",
    "autoUpgradeMinorVersion",
    "settings",
    "protectedSettingsSealed",
    "forceUpdateTag",
)


class ExtensionUnavailable(Exception):
    """A model names an extension version the catalog no longer has."""


def extensions_of(model: Json) -> list[Json]:
    return list((model.get("extensionProfile") or {}).get("extensions") or [])


def auto_upgrade_minor(properties: Json) -> bool:
    # Absent means yes, as `az vmss extension set` sends it unless told otherwise.
    return properties.get("autoUpgradeMinorVersion") is not False


def extension_config(extension: Json) -> str:
    """What makes an extension's configuration (its seq_no changes with it), as one comparable string."""
    properties = extension["properties"]
    return json.dumps({k: properties.get(k) for k in _CONFIG_KEYS}, sort_keys=True)


def sequence_number(history: Sequence[tuple[int, Json]], name: str) -> int:
    """The first model version of the unbroken run, ending at the newest, in which the extension named
    `name` has its newest configuration. `history` is (model version, model), oldest first."""
    newest_version, newest_model = history[-1]
    named = name.lower()
    wanted = next(extension_config(e) for e in extensions_of(newest_model) if e["name"].lower() == named)
    seq = newest_version
    for version, model in reversed(history):
        same = [
            e for e in extensions_of(model) if e["name"].lower() == named and extension_config(e) == wanted
        ]
        if not same:
            break
        seq = version
    return seq


def goal_state_for(
    history: Sequence[tuple[int, Json]],
    resolve: ResolveExtension,
    encrypt: EncryptForInstance,
    pins: Mapping[str, str] | None = None,
) -> GoalState:
    """The goal state of an instance running the newest model of `history`.

    `pins` are the exact versions that model version runs (`ScaleSetModel.extension_versions`,
    services/extension_pins.py); an extension without one is resolved from its `typeHandlerVersion`.
    A model without extensions still gets one (with none), so that extensions removed from the model
    are removed from instances the model is applied to.
    """
    pinned = {name.lower(): version for name, version in (pins or {}).items()}
    incarnation, model = history[-1]
    extensions = extensions_of(model)
    goals = []
    for extension in extensions:
        properties = extension["properties"]
        found = resolve(
            properties["publisher"],
            properties["type"],
            properties["typeHandlerVersion"],
            auto_upgrade_minor(properties),
            pinned.get(extension["name"].lower()),
        )
        if found is None:
            name = f"{properties['publisher']}.{properties['type']} {properties['typeHandlerVersion']}"
            raise ExtensionUnavailable(f"extension {name} is not in the extension catalog")
        version, package_dir = found
        protected, thumbprint = (None, None)
        if properties.get("protectedSettingsSealed"):
            protected, thumbprint = encrypt(properties["protectedSettingsSealed"])
        goals.append(
            ExtensionGoal(
                name=extension["name"],
                publisher=properties["publisher"],
                type=properties["type"],
                version=version,
                package_dir=package_dir,
                seq_no=sequence_number(history, extension["name"]),
                # An empty object rather than None, so the agent reads the handler's status file.
                public_settings=properties.get("settings") or {},
                protected_settings=protected,
                thumbprint=thumbprint,
                provision_after=tuple(properties.get("provisionAfterExtensions") or ()),
                suppress_failures=bool(properties.get("suppressFailures")),
            )
        )
    return GoalState(incarnation=incarnation, extensions=tuple(goals))


@dataclass(frozen=True)
class GuestExpectation:
    """What a task waits for before the instance counts as provisioned."""

    incarnation: int | None
    extensions: tuple[tuple[str, bool], ...]  # (name, suppressFailures)
    custom_data: bool

    def to_json(self) -> Json:
        return {
            "incarnation": self.incarnation,
            "extensions": [list(e) for e in self.extensions],
            "customData": self.custom_data,
        }

    @classmethod
    def from_json(cls, data: Json) -> GuestExpectation:
        return cls(
            data.get("incarnation"),
            tuple((str(n), bool(s)) for n, s in data.get("extensions", [])),
            bool(data.get("customData")),
        )

    @property
    def waits(self) -> bool:
        return self.custom_data or bool(self.extensions)


@dataclass(frozen=True)
class GuestVerdict:
    done: bool
    failure: str | None = None


def judge_guest(report: GuestReport, expect: GuestExpectation) -> GuestVerdict:
    """Is the instance provisioned? Custom data first (it runs before the agent), then every extension
    of the goal must have reached a terminal status; a failed one fails the instance unless its
    `suppressFailures` is set (Azure's rule)."""
    if expect.custom_data:
        result = report.custom_data
        if result is None or result.state == "running":
            return GuestVerdict(False)
        if result.state == "failed":
            return GuestVerdict(True, f"Custom data failed: {result.message}")
    if not expect.extensions:
        return GuestVerdict(True)
    if report.guest_status is None:
        return GuestVerdict(False)
    status = GuestStatus.from_json(report.guest_status)
    # The guest must have applied this very goal state. Not "at least": a rollback hands an instance an
    # older model version, hence a lower incarnation, and the report of the newer one it still shows is
    # not the answer (a newer task on the instance ends this wait instead, engine/executor.py).
    if status.incarnation_applied is None or (expect.incarnation or 0) != status.incarnation_applied:
        return GuestVerdict(False)
    failures = []
    for name, suppressed in expect.extensions:
        extension = status.extension(name)
        if extension is None:
            return GuestVerdict(False)
        failed_handler = extension.handler_code not in (0, None) and extension.handler_status == "NotReady"
        settled = extension.settings_status
        if not failed_handler and (settled is None or not settled.is_terminal):
            return GuestVerdict(False)
        if (failed_handler or (settled is not None and settled.status == "error")) and not suppressed:
            message = extension.handler_message if failed_handler else (settled.message if settled else "")
            failures.append(f"Extension '{name}' failed: {message}")
    return GuestVerdict(True, "; ".join(failures) or None)
