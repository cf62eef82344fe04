"""The image manifest, `scaleset-image.json`, at the root of every image version (docs/images.md).

Parsing is strict: unknown fields are rejected rather than ignored, so a typo such as `entryPoint` is
caught when an image is published instead of surfacing as a broken instance during a rollout. Every
error names the field at fault (`ports[1]`, `environment.GREETING`) so the admin API can put it in the
ARM error's `target`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TypeGuard

MANIFEST_FILE = "scaleset-image.json"
MANIFEST_VERSION = 1
SUPPORTED_OS_TYPES = ("Linux",)
# A manifest is a few hundred bytes; the cap only stops a hostile image from making us read a huge file.
MAX_MANIFEST_BYTES = 2**20
# The provider sets these for the entrypoint (docs/images.md); an image may not redefine them.
RESERVED_ENVIRONMENT_PREFIX = "SCALESET_"
RESERVED_ENVIRONMENT_NAMES = frozenset({"PORT"})

_KNOWN_FIELDS = (
    "manifestVersion",
    "osType",
    "osName",
    "osVersion",
    "entrypoint",
    "ports",
    "automaticOSUpgradeSupported",
    "environment",
)


class ManifestError(ValueError):
    """An invalid manifest; `target` is the field at fault, or None when the whole document is."""

    def __init__(self, message: str, target: str | None = None) -> None:
        super().__init__(message, target)
        self.message = message
        self.target = target

    def __str__(self) -> str:
        return f"{self.target}: {self.message}" if self.target else self.message


def _empty_environment() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ImageManifest:
    """A validated manifest. `os_type` is canonical (`Linux`) whatever case the file used."""

    entrypoint: tuple[str, ...]
    ports: tuple[int, ...] = ()
    os_type: str = "Linux"
    os_name: str = "unknown"
    os_version: str = ""
    automatic_os_upgrade_supported: bool = False
    # Read-only view; left out of the hash because mappings are not hashable.
    environment: Mapping[str, str] = field(default_factory=_empty_environment, hash=False)
    manifest_version: int = MANIFEST_VERSION

    def to_json(self) -> dict[str, object]:
        """The manifest as JSON-ready data; `parse_image_manifest(m.to_json()) == m`."""
        return {
            "manifestVersion": self.manifest_version,
            "osType": self.os_type,
            "osName": self.os_name,
            "osVersion": self.os_version,
            "entrypoint": list(self.entrypoint),
            "ports": list(self.ports),
            "automaticOSUpgradeSupported": self.automatic_os_upgrade_supported,
            "environment": dict(self.environment),
        }


def parse_image_manifest(data: object) -> ImageManifest:
    """Validate decoded JSON against docs/images.md; raises ManifestError naming the field at fault."""
    if not isinstance(data, dict):
        raise ManifestError(f"the manifest must be a JSON object, not {_json_type(data)}")
    for key in data:
        if key not in _KNOWN_FIELDS:
            raise ManifestError(f"unknown field; known fields are {', '.join(_KNOWN_FIELDS)}", str(key))
    _parse_manifest_version(_required(data, "manifestVersion"))
    return ImageManifest(
        os_type=_parse_os_type(_required(data, "osType")),
        entrypoint=_parse_entrypoint(_required(data, "entrypoint")),
        ports=_parse_ports(data.get("ports", [])),
        os_name=_string(data.get("osName", "unknown"), "osName"),
        os_version=_string(data.get("osVersion", ""), "osVersion"),
        automatic_os_upgrade_supported=_boolean(
            data.get("automaticOSUpgradeSupported", False), "automaticOSUpgradeSupported"
        ),
        environment=_parse_environment(data.get("environment", {})),
    )


def read_image_manifest(directory: Path) -> ImageManifest:
    """Read and validate `scaleset-image.json` at the root of an image version's directory."""
    path = directory / MANIFEST_FILE
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(f"the image has no {MANIFEST_FILE} at its root", MANIFEST_FILE) from None
    except OSError as exc:
        raise ManifestError(f"cannot read {MANIFEST_FILE}: {exc.strerror}", MANIFEST_FILE) from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES} bytes", MANIFEST_FILE)
    return parse_image_manifest(_decode_json(raw))


def _decode_json(raw: bytes) -> object:
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except UnicodeDecodeError:
        raise ManifestError(f"{MANIFEST_FILE} is not UTF-8 text", MANIFEST_FILE) from None
    except json.JSONDecodeError as exc:
        message = f"{MANIFEST_FILE} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise ManifestError(message, MANIFEST_FILE) from None


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of duplicate keys silently; a manifest saying two things is an error.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ManifestError("field appears more than once", key)
        result[key] = value
    return result


def _required(data: dict[object, object], key: str) -> object:
    if key not in data:
        raise ManifestError("required field is missing", key)
    return data[key]


def _parse_manifest_version(value: object) -> None:
    if not _is_int(value) or value != MANIFEST_VERSION:
        raise ManifestError(f"must be {MANIFEST_VERSION}, got {value!r}", "manifestVersion")


def _parse_os_type(value: object) -> str:
    text = _string(value, "osType")
    for supported in SUPPORTED_OS_TYPES:
        if text.lower() == supported.lower():
            return supported
    raise ManifestError(f"{text!r} is not supported; supported: {', '.join(SUPPORTED_OS_TYPES)}", "osType")


def _parse_entrypoint(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ManifestError(
            "must be a non-empty list of strings (the command and its arguments)", "entrypoint"
        )
    arguments = tuple(_argument(item, f"entrypoint[{index}]") for index, item in enumerate(value))
    if not arguments[0]:
        raise ManifestError("the command must not be empty", "entrypoint[0]")
    return arguments


def _argument(value: object, target: str) -> str:
    # A NUL cannot be passed to exec(); reject it here rather than when an instance starts.
    text = _string(value, target)
    if "\x00" in text:
        raise ManifestError("must not contain a NUL character", target)
    return text


def _parse_ports(value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ManifestError(f"must be a list of port numbers, not {_json_type(value)}", "ports")
    ports: list[int] = []
    for index, item in enumerate(value):
        target = f"ports[{index}]"
        if not _is_int(item) or not 1 <= item <= 65535:
            raise ManifestError(f"must be an integer from 1 to 65535, got {item!r}", target)
        if item in ports:
            raise ManifestError(f"port {item} is listed twice", target)
        ports.append(item)
    return tuple(ports)


def _parse_environment(value: object) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise ManifestError(f"must be an object of string values, not {_json_type(value)}", "environment")
    environment: dict[str, str] = {}
    for name, item in value.items():
        target = f"environment.{name}"
        if not isinstance(name, str) or not name or "=" in name or "\x00" in name:
            raise ManifestError("a variable name must be non-empty without '=' or NUL", target)
        if name.startswith(RESERVED_ENVIRONMENT_PREFIX) or name in RESERVED_ENVIRONMENT_NAMES:
            raise ManifestError("this variable is set by scaleset and cannot be overridden", target)
        environment[name] = _argument(item, target)
    return MappingProxyType(environment)


def _string(value: object, target: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"must be a string, not {_json_type(value)}", target)
    return value


def _boolean(value: object, target: str) -> bool:
    if not isinstance(value, bool):
        raise ManifestError(f"must be true or false, not {_json_type(value)}", target)
    return value


def _is_int(value: object) -> TypeGuard[int]:
    # JSON true/false arrive as bool, which Python counts as int.
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    return names.get(type(value), type(value).__name__)
