"""Pure helpers for the CLI: `--set` paths, instance ids, image URNs, tags and argv shaping.

Nothing here does I/O; every function takes values and returns values (or raises `ValueError`
with a message fit to show a person), so the tests can pin the semantics down exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Keys that live on the resource itself rather than under `properties` (what az's flattened
# models expose as top-level attributes of a scale set).
TOP_LEVEL_KEYS = frozenset({"sku", "tags", "zones", "location", "identity", "plan", "properties"})

PathKey = str | int


class PathError(ValueError):
    """A `--set` expression or path that cannot be parsed or applied."""


# --- --set -----------------------------------------------------------------------------------


def parse_path(path: str) -> list[PathKey]:
    """Split `a.b[0].c` into `["a", "b", 0, "c"]`.

    A key with dots in it can be written in brackets with quotes: `tags["app.tier"]`.
    Negative indices count from the end, as in Python.
    """
    keys: list[PathKey] = []
    current = ""
    i = 0
    after_bracket = False
    while i < len(path):
        char = path[i]
        if char == ".":
            if current:
                keys.append(current)
            elif not after_bracket:
                raise PathError(f"empty key in path {path!r}")
            current = ""
            after_bracket = False
        elif char == "[":
            if current:
                keys.append(current)
                current = ""
            end = path.find("]", i)
            if end < 0:
                raise PathError(f"unclosed '[' in path {path!r}")
            keys.append(_bracket_key(path[i + 1 : end], path))
            i = end
            after_bracket = True
        else:
            if after_bracket:
                raise PathError(f"expected '.' or '[' after ']' in path {path!r}")
            current += char
        i += 1
    if current:
        keys.append(current)
    elif not keys or not after_bracket:
        raise PathError(f"empty key in path {path!r}")
    return keys


def _bracket_key(inner: str, path: str) -> PathKey:
    if re.fullmatch(r"-?\d+", inner):
        return int(inner)
    if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
        return inner[1:-1]
    raise PathError(f"expected a list index or a quoted key in [{inner}] of path {path!r}")


def parse_value(text: str) -> Any:
    """A `--set` value: JSON when it parses (`3`, `true`, `{"a": 1}`, `"quoted"`), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_set_expression(expression: str) -> tuple[str, Any]:
    """`path=value` → (path, parsed value); the value may itself contain `=`."""
    path, sep, value = expression.partition("=")
    if not sep or not path.strip():
        raise PathError(f"expected PATH=VALUE, got {expression!r}")
    return path.strip(), parse_value(value)


def apply_set(resource: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set `path` to `value` in `resource` (in place; also returned), with az's generic-update rules.

    A path whose first key is a top-level resource key (`sku`, `tags`, `zones`, `location`,
    `identity`, `plan`, or `properties` itself) is applied at the top level; any other path is
    applied under `properties` (`upgradePolicy.mode` → `properties.upgradePolicy.mode`). Keys match
    existing ones case-insensitively; missing objects along the way are created; list indices must
    exist.
    """
    keys = parse_path(path)
    first = keys[0]
    if isinstance(first, str) and first.lower() in TOP_LEVEL_KEYS:
        root: Any = resource
    else:
        root = resource.get("properties")
        if not isinstance(root, dict):
            root = resource["properties"] = {}
    _assign(root, keys, value, path)
    return resource


def _assign(node: Any, keys: list[PathKey], value: Any, path: str) -> None:
    for position, key in enumerate(keys):
        last = position == len(keys) - 1
        if isinstance(key, int):
            if not isinstance(node, list):
                raise PathError(f"{_prefix(keys, position)!r} is not a list in path {path!r}")
            if not -len(node) <= key < len(node):
                raise PathError(f"index {key} is out of range (length {len(node)}) in path {path!r}")
            if last:
                node[key] = value
                return
            if node[key] is None:
                node[key] = {}
            node = node[key]
            continue
        if not isinstance(node, dict):
            raise PathError(f"{_prefix(keys, position)!r} is not an object in path {path!r}")
        name = _existing_key(node, key)
        if last:
            node[name] = value
            return
        child = node.get(name)
        if child is None:
            child = node[name] = [] if isinstance(keys[position + 1], int) else {}
        elif not isinstance(child, dict | list):
            raise PathError(
                f"{_prefix(keys, position + 1)!r} holds {child!r}, not an object, in path {path!r}"
            )
        node = child


def _existing_key(node: dict[str, Any], key: str) -> str:
    if key in node:
        return key
    for existing in node:
        if existing.lower() == key.lower():
            return existing
    return key


def _prefix(keys: list[PathKey], position: int) -> str:
    text = ""
    for key in keys[:position]:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text or "(root)"


def apply_sets(resource: dict[str, Any], expressions: Iterable[str]) -> dict[str, Any]:
    """Apply several `path=value` expressions in order."""
    for expression in expressions:
        path, value = parse_set_expression(expression)
        apply_set(resource, path, value)
    return resource


# --- instance ids ----------------------------------------------------------------------------


def parse_instance_ids(values: Sequence[str]) -> list[str] | None:
    """Instance ids from `--instance-ids 0 1`, `0,1` or resource ids; `None` means all (`*`).

    >>> parse_instance_ids(["0", "2,3"])
    ['0', '2', '3']
    >>> parse_instance_ids(["*"]) is None
    True
    """
    tokens = [part for value in values for part in re.split(r"[,\s]+", value) if part]
    if not tokens:
        raise ValueError("no instance ids given")
    if "*" in tokens:
        if len(tokens) > 1:
            raise ValueError("'*' (all instances) cannot be combined with other instance ids")
        return None
    ids: list[str] = []
    for token in tokens:
        instance_id = _instance_id(token)
        if instance_id not in ids:
            ids.append(instance_id)
    return ids


def _instance_id(token: str) -> str:
    # A full resource id (`.../virtualMachines/3`) is accepted for its last segment.
    candidate = token.rstrip("/").rsplit("/", 1)[-1] if "/" in token else token
    if not candidate.isascii() or not candidate.isdigit():
        raise ValueError(f"invalid instance id {token!r}: expected a non-negative integer or '*'")
    return str(int(candidate))


# --- image URNs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageUrn:
    publisher: str
    offer: str
    sku: str
    version: str

    def __str__(self) -> str:
        return f"{self.publisher}:{self.offer}:{self.sku}:{self.version}"

    def image_reference(self) -> dict[str, str]:
        return {"publisher": self.publisher, "offer": self.offer, "sku": self.sku, "version": self.version}


def parse_urn(urn: str) -> ImageUrn:
    """`publisher:offer:sku:version` (version may be `latest`) → `ImageUrn`."""
    parts = urn.strip().split(":")
    if len(parts) != 4:
        raise ValueError(f"invalid image URN {urn!r}: expected PUBLISHER:OFFER:SKU:VERSION (4 parts)")
    names = ("publisher", "offer", "sku", "version")
    for name, part in zip(names, parts, strict=True):
        if not part.strip():
            raise ValueError(f"invalid image URN {urn!r}: the {name} is empty")
        if "/" in part or any(ch.isspace() for ch in part.strip()):
            raise ValueError(f"invalid image URN {urn!r}: the {name} contains '/' or whitespace")
    publisher, offer, sku, version = (part.strip() for part in parts)
    return ImageUrn(publisher, offer, sku, version)


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for image versions: numeric parts numerically (`1.10.0` > `1.9.2`)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-+]", version))


# --- tags ------------------------------------------------------------------------------------


def parse_tags(values: Sequence[str]) -> dict[str, str]:
    """`["env=prod", "team=blue", "flag"]` → `{"env": "prod", "team": "blue", "flag": ""}`."""
    tags: dict[str, str] = {}
    for value in values:
        key, _, tag_value = value.partition("=")
        if not key.strip():
            raise ValueError(f"invalid tag {value!r}: expected KEY=VALUE")
        tags[key.strip()] = tag_value
    return tags


# --- argv ------------------------------------------------------------------------------------

GLOBAL_VALUE_OPTIONS = ("--endpoint", "--token", "--subscription", "--ca-cert", "--output", "-o")
GLOBAL_FLAG_OPTIONS = ("--debug",)
MULTI_VALUE_OPTIONS = ("--tags", "--zones", "--data-disk-sizes-gb", "--instance-ids", "--set")


def normalize_argv(argv: Sequence[str], passthrough_commands: Iterable[str] = ("serve",)) -> list[str]:
    """Give the command line az's shape on top of Click's.

    - Global options (`-o table`, `--endpoint URL`, …) may appear anywhere: they are moved in front
      of the command, where the Typer callback reads them.
    - Multi-valued options take several values as az's do (`--zones 1 2 3`): they are rewritten as
      repeated options (`--zones 1 --zones 2 --zones 3`), taking values up to the next `-` token.

    Commands in `passthrough_commands` (the server) and everything after `--` are left alone.
    """
    args = list(argv)
    tail: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, tail = args[:cut], args[cut:]
    if _command_name(args) in set(passthrough_commands):
        return list(argv)
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        option, has_inline_value = _split_option(arg)
        if option in GLOBAL_VALUE_OPTIONS:
            if has_inline_value or i + 1 >= len(args):
                front.append(arg)
                i += 1
            else:
                front.extend(args[i : i + 2])
                i += 2
        elif arg in GLOBAL_FLAG_OPTIONS:
            front.append(arg)
            i += 1
        elif arg in MULTI_VALUE_OPTIONS:
            values, i = _take_values(args, i + 1)
            if not values:
                rest.append(arg)
            for value in values:
                rest.extend([arg, value])
        else:
            rest.append(arg)
            i += 1
    return front + rest + tail


def _split_option(arg: str) -> tuple[str, bool]:
    if arg.startswith("--") and "=" in arg:
        return arg.split("=", 1)[0], True
    if arg.startswith("-o") and not arg.startswith("--") and len(arg) > 2:
        return "-o", True
    return arg, False


def _take_values(args: list[str], start: int) -> tuple[list[str], int]:
    end = start
    while end < len(args) and not args[end].startswith("-"):
        end += 1
    return args[start:end], end


def _command_name(args: list[str]) -> str | None:
    i = 0
    while i < len(args):
        option, has_inline_value = _split_option(args[i])
        if option in GLOBAL_VALUE_OPTIONS:
            i += 1 if has_inline_value else 2
        elif args[i].startswith("-"):
            i += 1
        else:
            return args[i]
    return None
