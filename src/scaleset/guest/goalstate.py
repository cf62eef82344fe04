"""The two documents between the control plane and an instance's guest agent, and the handler's status file.

The control plane writes a goal state (which extension handlers, at which versions, with which settings,
in which state) and the guest agent (`scaleset.guest.agent`) applies it inside the instance, then reports a
guest status the control plane reads back. Both travel as JSON files written atomically, so a reader never
sees half a document. Keys are camelCase, like the Azure documents they stand in for (the wire server's
ExtensionsConfig and the status blob of spec/extension-protocol.md §2.8).

This module also parses what a handler writes itself, `status/<seq>.status` and `heartbeat.log`
(spec §1.7, §1.8): pure functions from text to values, so the agent only does the file I/O. It must stay
cheap to import (stdlib and the domain's version type only): the instance's init process loads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from scaleset.domain.versions import ExtensionVersion

ExtensionState = Literal["enabled", "disabled", "uninstall"]
EXTENSION_STATES: tuple[ExtensionState, ...] = ("enabled", "disabled", "uninstall")

# Where the integrator is expected to keep the two documents inside an instance (names only: the
# directory is the caller's choice).
GOAL_STATE_FILE = "goal-state.json"
GUEST_STATUS_FILE = "guest-status.json"

# The values a handler may put in `status.status` (spec §1.7); anything else at the top level reads as
# "error", anything else in a substatus makes the file malformed.
STATUS_VALUES = ("transitioning", "error", "success", "warning")
TERMINAL_STATUSES = ("success", "error")

# Agent error codes (spec §2.1, WALinuxAgent `ExtensionErrorCodes`).
CODE_UNKNOWN_FAILURE = -1
CODE_SUCCESS = 0
CODE_STATUS_INVALID = 1012

# Spec §1.7: a status file larger than this is still reported, but its message is cut to 1 KiB and each
# substatus field to 10 KiB.
MAX_STATUS_FILE_BYTES = 128 * 1024
MAX_STATUS_MESSAGE_CHARS = 1024
MAX_SUBSTATUS_FIELD_CHARS = 10 * 1024

# Handler names become directory names (`<lib>/<Publisher.Type>-<Version>`); this keeps them to one
# plain path segment, and the version (digits and dots) keeps the last "-" the separator.
_NAME_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")


# -- files -----------------------------------------------------------------------------------------------


# -- goal state ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtensionGoal:
    """One extension as the control plane wants it; single-config, so one extension per handler.

    `version` is the exact package version (the control plane resolves "2.0" to "2.0.3", spec §4);
    `package_dir` an unpacked handler package to install from. An extension "has settings" when either
    settings field is set; one without gets an empty `0.settings` and sequence number 0, as on Azure
    (spec §1.5), and its status file is never read. `provision_after` names other extensions of the same
    goal state; `suppress_failures` is carried for the control plane (the guest agent does not read it,
    as Azure's does not).
    """

    name: str
    publisher: str
    type: str
    version: str
    package_dir: str
    seq_no: int
    public_settings: dict[str, Any] | None = None
    protected_settings: str | None = None
    thumbprint: str | None = None
    state: ExtensionState = "enabled"
    provision_after: tuple[str, ...] = ()
    suppress_failures: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an extension needs a name")
        for what, part in (("publisher", self.publisher), ("type", self.type)):
            if not isinstance(part, str) or not _NAME_PART.fullmatch(part) or ".." in part:
                raise ValueError(f"extension {self.name!r}: invalid {what} {part!r}")
        ExtensionVersion.parse(self.version)  # raises ValueError with the reason
        if isinstance(self.seq_no, bool) or not isinstance(self.seq_no, int) or self.seq_no < 0:
            raise ValueError(f"extension {self.name!r}: seq_no must be a non-negative integer")
        if self.state not in EXTENSION_STATES:
            raise ValueError(f"extension {self.name!r}: state must be one of {EXTENSION_STATES}")

    @property
    def handler_name(self) -> str:
        return f"{self.publisher}.{self.type}"

    @property
    def has_settings(self) -> bool:
        return self.public_settings is not None or self.protected_settings is not None

    @property
    def effective_seq_no(self) -> int:
        """The sequence number the handler sees: 0 without settings ("at par with the Windows agent")."""
        return self.seq_no if self.has_settings else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "publisher": self.publisher,
            "type": self.type,
            "version": self.version,
            "packageDir": self.package_dir,
            "seqNo": self.seq_no,
            "publicSettings": self.public_settings,
            "protectedSettings": self.protected_settings,
            "thumbprint": self.thumbprint,
            "state": self.state,
            "provisionAfter": list(self.provision_after),
            "suppressFailures": self.suppress_failures,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExtensionGoal:
        public = data.get("publicSettings")
        if public is not None and not isinstance(public, dict):
            raise ValueError("publicSettings must be an object or null")
        return cls(
            name=str(data["name"]),
            publisher=str(data["publisher"]),
            type=str(data["type"]),
            version=str(data["version"]),
            package_dir=str(data["packageDir"]),
            seq_no=data["seqNo"],
            public_settings=public,
            protected_settings=_optional_str(data.get("protectedSettings"), "protectedSettings"),
            thumbprint=_optional_str(data.get("thumbprint"), "thumbprint"),
            state=data.get("state", "enabled"),
            provision_after=tuple(str(name) for name in data.get("provisionAfter") or ()),
            suppress_failures=bool(data.get("suppressFailures", False)),
        )


@dataclass(frozen=True)
class GoalState:
    """Everything one instance should run, numbered: a new incarnation means "apply me"."""

    incarnation: int
    extensions: tuple[ExtensionGoal, ...] = ()

    def __post_init__(self) -> None:
        names = [extension.name for extension in self.extensions]
        handlers = [extension.handler_name for extension in self.extensions]
        if len(set(names)) != len(names):
            raise ValueError("extension names must be unique within a goal state")
        # Single-config handlers (spec §1.5): one handler directory holds one extension's settings.
        if len(set(handlers)) != len(handlers):
            raise ValueError("a goal state may hold at most one extension per handler (Publisher.Type)")

    def to_json(self) -> str:
        return json.dumps(
            {"incarnation": self.incarnation, "extensions": [e.to_dict() for e in self.extensions]},
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> GoalState:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a goal state must be a JSON object")
        return cls(
            incarnation=int(data["incarnation"]),
            extensions=tuple(ExtensionGoal.from_dict(item) for item in data.get("extensions") or ()),
        )


def _optional_str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{what} must be a string or null")


# -- status ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubStatus:
    name: str
    status: str
    code: int = 0
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "code": self.code, "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubStatus:
        return cls(str(data["name"]), str(data["status"]), int(data["code"]), data.get("message"))


@dataclass(frozen=True)
class SettingsStatus:
    """What the handler reported for one sequence number (its `status/<seq>.status`), as the agent saw it.

    When the file is missing, unreadable or malformed, this is the agent's stand-in (spec §1.7):
    transitioning for a missing file, error -1 for an unreadable one, error 1012 for a malformed one.
    """

    sequence_number: int
    status: str
    code: int = 0
    message: str | None = None
    operation: str | None = None
    substatuses: tuple[SubStatus, ...] = ()
    timestamp: str | None = None
    configuration_applied_time: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequenceNumber": self.sequence_number,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "operation": self.operation,
            "substatuses": [sub.to_dict() for sub in self.substatuses],
            "timestamp": self.timestamp,
            "configurationAppliedTime": self.configuration_applied_time,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SettingsStatus:
        return cls(
            sequence_number=int(data["sequenceNumber"]),
            status=str(data["status"]),
            code=int(data["code"]),
            message=data.get("message"),
            operation=data.get("operation"),
            substatuses=tuple(SubStatus.from_dict(sub) for sub in data.get("substatuses") or ()),
            timestamp=data.get("timestamp"),
            configuration_applied_time=data.get("configurationAppliedTime"),
        )


@dataclass(frozen=True)
class ExtensionStatus:
    """One extension in the guest status: the handler-level status plus the handler's own report.

    Azure's rule for the control plane (spec §2.8): look at the handler status first; when a settings
    status is present (and its sequence number matches the one asked for), it wins. `settings_status`
    is None while the handler is not installed, and for extensions without settings.
    """

    name: str
    handler_name: str
    version: str
    sequence_number: int
    handler_state: str
    handler_status: str
    handler_code: int
    handler_message: str | None
    settings_status: SettingsStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "handlerName": self.handler_name,
            "version": self.version,
            "sequenceNumber": self.sequence_number,
            "handlerState": self.handler_state,
            "handlerStatus": self.handler_status,
            "handlerCode": self.handler_code,
            "handlerMessage": self.handler_message,
            "settingsStatus": None if self.settings_status is None else self.settings_status.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExtensionStatus:
        settings = data.get("settingsStatus")
        return cls(
            name=str(data["name"]),
            handler_name=str(data["handlerName"]),
            version=str(data["version"]),
            sequence_number=int(data["sequenceNumber"]),
            handler_state=str(data["handlerState"]),
            handler_status=str(data["handlerStatus"]),
            handler_code=int(data["handlerCode"]),
            handler_message=data.get("handlerMessage"),
            settings_status=None if settings is None else SettingsStatus.from_dict(settings),
        )


@dataclass(frozen=True)
class GuestStatus:
    """What the guest agent reports: which goal state it finished, which it is working on, per extension.

    `incarnation_applying` is set while an apply runs (and stays set if the agent died in the middle of
    one, until the next apply); `incarnation_applied` is the last goal state applied to the end.
    """

    incarnation_applied: int | None
    incarnation_applying: int | None
    extensions: tuple[ExtensionStatus, ...] = ()
    timestamp: str = ""
    agent_status: str = "Ready"
    agent_message: str = "Guest Agent is running"

    def extension(self, name: str) -> ExtensionStatus | None:
        return next((e for e in self.extensions if e.name == name), None)

    def to_json(self) -> str:
        return json.dumps(
            {
                "incarnationApplied": self.incarnation_applied,
                "incarnationApplying": self.incarnation_applying,
                "timestampUTC": self.timestamp,
                "agentStatus": self.agent_status,
                "agentMessage": self.agent_message,
                "extensions": [e.to_dict() for e in self.extensions],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> GuestStatus:
        data = json.loads(text)
        return cls(
            incarnation_applied=data.get("incarnationApplied"),
            incarnation_applying=data.get("incarnationApplying"),
            extensions=tuple(ExtensionStatus.from_dict(e) for e in data.get("extensions") or ()),
            timestamp=str(data.get("timestampUTC", "")),
            agent_status=str(data.get("agentStatus", "Ready")),
            agent_message=str(data.get("agentMessage", "")),
        )


# -- what handlers write ---------------------------------------------------------------------------------


class StatusFileMalformed(ValueError):
    """A status file that is JSON but breaks the rules of spec §1.7; reported as error 1012."""


class StatusFileInvalidJson(ValueError):
    """A status file that is not JSON at all; also error 1012, with a different message."""


def parse_status_file(text: str, sequence_number: int) -> SettingsStatus | None:
    """A handler's `status/<seq>.status` as the agent reads it (spec §1.7); None for an empty array.

    Raises StatusFileInvalidJson or StatusFileMalformed; `status_for_unparsable` turns those into the
    error the agent reports. Only the first element counts ("only the first status will be reported").
    An empty array counts as "nothing reported yet": the agent's rules do not name it, and a handler that
    truncates and rewrites its file would otherwise flap to error.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StatusFileInvalidJson(str(exc)) from exc
    if not isinstance(data, list):
        raise StatusFileMalformed("The extension status must be an array")
    if not data:
        return None
    first = _object(data[0], "the status entry")
    body = _object(first.get("status"), "status")
    status = body.get("status")
    if not isinstance(status, str):
        raise StatusFileMalformed("status.status is required and must be a string")
    parsed = SettingsStatus(
        sequence_number=sequence_number,
        status=status if status in STATUS_VALUES else "error",  # spec: unknown values coerced
        code=_code(body.get("code"), "status.code"),
        message=_formatted_message(body.get("formattedMessage"), "status"),
        operation=_optional_text(body.get("operation")),
        substatuses=tuple(_substatus(item) for item in body.get("substatus") or ()),
        timestamp=_optional_text(first.get("timestampUTC")),
        configuration_applied_time=_optional_text(body.get("configurationAppliedTime")),
    )
    if len(text.encode("utf-8")) > MAX_STATUS_FILE_BYTES:
        return _truncated(parsed)
    return parsed


def missing_status(extension_name: str, path: Path, sequence_number: int) -> SettingsStatus:
    return SettingsStatus(
        sequence_number=sequence_number,
        status="transitioning",
        code=CODE_SUCCESS,
        message=(
            "This status is being reported by the Guest Agent since no status file was reported by "
            f"extension {extension_name}: status file {path} does not exist"
        ),
    )


def unreadable_status(handler: str, sequence_number: int, error: OSError) -> SettingsStatus:
    return SettingsStatus(
        sequence_number=sequence_number,
        status="error",
        code=CODE_UNKNOWN_FAILURE,
        message=(
            f"We couldn't read any status for {handler} extension, for the sequence number "
            f"{sequence_number}. It failed due to {error}"
        ),
    )


def status_for_unparsable(handler: str, sequence_number: int, error: ValueError) -> SettingsStatus:
    if isinstance(error, StatusFileInvalidJson):
        message = (
            f"The status reported by the extension {handler}(Sequence number {sequence_number}), was in an "
            f"incorrect format and the agent could not parse it correctly. Failed due to {error}"
        )
    else:
        message = (
            f"Could not get a valid status from the extension {handler}. "
            f"Encountered the following error: {error}"
        )
    return SettingsStatus(sequence_number, "error", CODE_STATUS_INVALID, message)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StatusFileMalformed(f"{what} must be an object")
    return cast(dict[str, Any], value)


def _code(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise StatusFileMalformed(f"{what} must be an integer")
    try:
        return int(value)
    except ValueError as exc:
        raise StatusFileMalformed(f"{what} must be an integer") from exc


def _formatted_message(value: Any, where: str) -> str | None:
    """formattedMessage is optional, but when present it needs both `lang` and `message`."""
    if value is None:
        return None
    message = _object(value, f"{where}.formattedMessage")
    if "lang" not in message or "message" not in message:
        raise StatusFileMalformed(f"{where}.formattedMessage needs both lang and message")
    text = message["message"]
    return None if text is None else str(text)


def _substatus(value: Any) -> SubStatus:
    item = _object(value, "a substatus entry")
    status = item.get("status")
    if status not in STATUS_VALUES:
        raise StatusFileMalformed(
            f"substatus status must be one of {', '.join(STATUS_VALUES)}, not {status!r}"
        )
    return SubStatus(
        name=str(item.get("name") or ""),
        status=str(status),
        code=_code(item.get("code"), "substatus code"),
        message=_formatted_message(item.get("formattedMessage"), "substatus"),
    )


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _truncated(status: SettingsStatus) -> SettingsStatus:
    def cut(text: str | None, limit: int) -> str | None:
        return text if text is None or len(text) <= limit else text[:limit]

    return SettingsStatus(
        sequence_number=status.sequence_number,
        status=status.status,
        code=status.code,
        message=cut(status.message, MAX_STATUS_MESSAGE_CHARS),
        operation=status.operation,
        substatuses=tuple(
            SubStatus(
                name=cut(sub.name, MAX_SUBSTATUS_FIELD_CHARS) or "",
                status=sub.status,
                code=sub.code,
                message=cut(sub.message, MAX_SUBSTATUS_FIELD_CHARS),
            )
            for sub in status.substatuses
        ),
        timestamp=status.timestamp,
        configuration_applied_time=status.configuration_applied_time,
    )


@dataclass(frozen=True)
class Heartbeat:
    status: str
    code: int
    message: str | None


def parse_heartbeat(text: str) -> Heartbeat:
    """`heartbeat.log` (spec §1.8): `[{"heartbeat": {"status", "code", "formattedMessage"}}]`.

    Raises ValueError for anything the agent would call a malformed heartbeat file.
    """
    data = json.loads(text)
    if not isinstance(data, Sequence) or isinstance(data, str) or not data or not isinstance(data[0], dict):
        raise ValueError("the heartbeat file must be an array of objects")
    beat = data[0].get("heartbeat")
    if not isinstance(beat, dict) or not isinstance(beat.get("status"), str):
        raise ValueError("the heartbeat entry needs a heartbeat.status string")
    formatted = beat.get("formattedMessage")
    message = formatted.get("message") if isinstance(formatted, dict) else None
    return Heartbeat(str(beat["status"]), _code(beat.get("code"), "heartbeat code"), message)
