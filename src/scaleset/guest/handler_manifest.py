"""HandlerManifest.json: the commands a handler package runs, and how it wants to be updated (spec §1.2).

The file is a JSON array whose first object holds `handlerManifest`; the agent reads `data[0]` and
ignores the rest, as WALinuxAgent does. The five `*Command` keys are required; the boolean options accept
real booleans or the string "true" in any case (handlers in the wild write both).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FILE = "HandlerManifest.json"

# Agent error codes (spec §2.1).
CODE_MANIFEST_NOT_FOUND = 1002
CODE_MANIFEST_INVALID = 1003

_COMMAND_KEYS = ("installCommand", "uninstallCommand", "updateCommand", "enableCommand", "disableCommand")


class ManifestError(Exception):
    """A missing (1002) or unusable (1003) HandlerManifest.json."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class HandlerManifest:
    install_command: str
    uninstall_command: str
    update_command: str
    enable_command: str
    disable_command: str
    report_heartbeat: bool = False
    continue_on_update_failure: bool = False
    supports_multiple_extensions: bool = False
    update_mode: str | None = None

    @property
    def install_after_update(self) -> bool:
        """Whether install runs after update: yes unless updateMode says something other than
        UpdateWithInstall. An absent updateMode means yes, a surprise the agent's code is explicit about.
        """
        return self.update_mode is None or self.update_mode.lower() == "updatewithinstall"

    def command(self, verb: str) -> str:
        commands = {
            "install": self.install_command,
            "uninstall": self.uninstall_command,
            "update": self.update_command,
            "enable": self.enable_command,
            "disable": self.disable_command,
        }
        return commands[verb]


def parse_manifest(text: str) -> HandlerManifest:
    """The manifest in `text`, or ManifestError(1003) saying what is wrong with it."""
    text = text.removeprefix("\ufeff")  # the agent strips a BOM; Windows editors add one
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"Malformed manifest file: {exc}", CODE_MANIFEST_INVALID) from exc
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise ManifestError("HandlerManifest.json must be an array holding one object", CODE_MANIFEST_INVALID)
    body = data[0].get("handlerManifest")
    if not isinstance(body, dict):
        raise ManifestError("HandlerManifest.json has no handlerManifest object", CODE_MANIFEST_INVALID)
    install, uninstall, update, enable, disable = (_command(body, key) for key in _COMMAND_KEYS)
    update_mode = body.get("updateMode")
    if update_mode is not None and not isinstance(update_mode, str):
        raise ManifestError("handlerManifest.updateMode must be a string", CODE_MANIFEST_INVALID)
    return HandlerManifest(
        install_command=install,
        uninstall_command=uninstall,
        update_command=update,
        enable_command=enable,
        disable_command=disable,
        report_heartbeat=_boolean(body.get("reportHeartbeat")),
        continue_on_update_failure=_boolean(body.get("continueOnUpdateFailure")),
        supports_multiple_extensions=_boolean(body.get("supportsMultipleExtensions")),
        update_mode=update_mode,
    )


def load_manifest(handler_dir: Path) -> HandlerManifest:
    """The manifest at the root of an installed handler directory."""
    path = handler_dir / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ManifestError(f"{MANIFEST_FILE} not found in {handler_dir}", CODE_MANIFEST_NOT_FOUND) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"Failed to load manifest file: {exc}", CODE_MANIFEST_INVALID) from exc
    return parse_manifest(text)


def find_manifest(package_root: Path) -> Path | None:
    """The package's HandlerManifest.json wherever it sits in the tree, the shallowest first.

    Packages zipped with a top folder carry it one level down; the agent searches the whole tree.
    Ordering by (depth, path) makes the choice deterministic when a package holds more than one.
    """
    found = [
        Path(directory) / MANIFEST_FILE
        for directory, _, files in os.walk(package_root)
        if MANIFEST_FILE in files
    ]
    return min(found, key=lambda path: (len(path.parts), str(path)), default=None)


def _command(body: dict[str, Any], key: str) -> str:
    if key not in body:
        raise ManifestError(f"handlerManifest.{key} is required", CODE_MANIFEST_INVALID)
    value = body[key]
    if not isinstance(value, str):
        raise ManifestError(f"handlerManifest.{key} must be a string", CODE_MANIFEST_INVALID)
    return value


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.lower() == "true"
