"""What applying a new model to an instance takes: the least disruptive action that realises it (M-4).

- A new image version, new custom data, or any other change to what lives on the OS disk (OS profile,
  storage profile, data disks) needs a **reimage**: a new OS disk from the image, data disks kept, custom
  data and extensions run again.
- A change confined to the extensions (settings, versions, extensions added or removed) is applied by the
  guest agent while the instance runs: an **extensions** update through the handler protocol.
- Anything else (tags, the upgrade policy: they are not part of the model an instance runs) needs
  **none**: the instance is simply recorded as running the new model.

    >>> before = {"osProfile": {"customData": "YQ=="}, "extensionProfile": {"extensions": []}}
    >>> change_action(before, before, "1.0.0", "1.1.0")
    'reimage'
    >>> after = {"osProfile": {"customData": "YQ=="}, "extensionProfile": {"extensions": [{"name": "x"}]}}
    >>> change_action(before, after, "1.0.0", "1.0.0")
    'extensions'
    >>> change_action(before, dict(before), "1.0.0", "1.0.0")
    'none'

The exact extension versions a model version runs (its pins, services/extension_pins.py) are part of what
the guest agent applies: the same model with an extension pinned to another version is an extensions update.

    >>> change_action(after, after, "1.0.0", "1.0.0", {"x": "1.0.0"}, {"x": "1.1.0"})
    'extensions'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

ChangeAction = Literal["reimage", "extensions", "none"]

# Parts of the model the guest agent applies on a running instance; everything else is on the OS disk.
_GUEST_AGENT_PARTS = ("extensionProfile",)
# Parts that are the control plane's business only (where the instance is probed from, for example).
_CONTROL_PLANE_PARTS = ("networkProfile", "diagnosticsProfile", "scheduledEventsProfile")


def _canonical(model: Mapping[str, Any], leave_out: tuple[str, ...]) -> str:
    return json.dumps({k: v for k, v in model.items() if k not in leave_out}, sort_keys=True)


def change_action(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    before_image: str,
    after_image: str,
    before_pins: Mapping[str, str] | None = None,
    after_pins: Mapping[str, str] | None = None,
) -> ChangeAction:
    """The action that takes an instance running `before` on image `before_image` (and extension versions
    `before_pins`) to `after`. Pins are compared only when both are known (model versions written before
    pins existed have none)."""
    skip = _GUEST_AGENT_PARTS + _CONTROL_PLANE_PARTS
    if before_image != after_image or _canonical(before, skip) != _canonical(after, skip):
        return "reimage"
    if _canonical(before, _CONTROL_PLANE_PARTS) != _canonical(after, _CONTROL_PLANE_PARTS):
        return "extensions"
    if before_pins is not None and after_pins is not None and _pins(before_pins) != _pins(after_pins):
        return "extensions"
    return "none"


def _pins(pins: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): version for name, version in pins.items()}
