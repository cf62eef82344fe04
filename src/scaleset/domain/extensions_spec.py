"""Extensions in a scale set's model (`virtualMachineProfile.extensionProfile.extensions`): validation.

Pure. The catalog lookup (is the version published?) and the encryption of protected settings are the
service's job. `provisionAfterExtensions` must name extensions of the same model and must not form a cycle
(Azure refuses both with 400); it orders first provisioning only (M-23).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from scaleset.domain.errors import invalid

Json = dict[str, Any]

_TYPE_HANDLER_VERSION = re.compile(r"^\d{1,9}\.\d{1,9}$")
# Read-only on the wire, and `protectedSettingsSealed`, which only the server writes (secrets at rest).
_READ_ONLY = ("provisioningState", "instanceView", "protectedSettingsSealed")
_BOOLEANS = ("autoUpgradeMinorVersion", "enableAutomaticUpgrade", "suppressFailures")


def validate_extensions(raw: Any, target: str) -> list[Json]:
    """The normalised extension list: read-only fields dropped, types checked, order kept."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid(target, f"'{target}' must be a list.")
    extensions = [_validate_extension(item, f"{target}[{index}]") for index, item in enumerate(raw)]
    names = [str(e["name"]).lower() for e in extensions]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise invalid(
                f"{target}[{index}].name", f"Two extensions are named '{extensions[index]['name']}'."
            )
    handlers = [f"{e['properties']['publisher']}.{e['properties']['type']}".lower() for e in extensions]
    for index, handler in enumerate(handlers):
        if handler in handlers[:index]:
            # Azure: "Multiple VMExtensions per handler not supported for OS type 'Linux'".
            raise invalid(
                f"{target}[{index}].properties.type",
                f"Only one extension of handler {handler} may be in a model.",
            )
    _check_provision_after(extensions, target)
    return extensions


def _validate_extension(item: Any, target: str) -> Json:
    if not isinstance(item, dict):
        raise invalid(target, f"'{target}' must be an object.")
    extension = copy.deepcopy(item)
    for key in ("id", "type"):
        extension.pop(key, None)
    name = extension.get("name")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name):
        raise invalid(f"{target}.name", "An extension needs a name of letters, digits, '.', '_' or '-'.")
    properties = extension.get("properties")
    if not isinstance(properties, dict):
        raise invalid(f"{target}.properties", "An extension needs 'properties'.")
    for key in _READ_ONLY:
        properties.pop(key, None)
    for key in ("publisher", "type", "typeHandlerVersion"):
        if not isinstance(properties.get(key), str) or not properties[key]:
            raise invalid(f"{target}.properties.{key}", f"'{key}' is required.")
    if not _TYPE_HANDLER_VERSION.match(properties["typeHandlerVersion"]):
        raise invalid(
            f"{target}.properties.typeHandlerVersion",
            f"'{properties['typeHandlerVersion']}' is not of the form major.minor, e.g. 2.0.",
        )
    for key in _BOOLEANS:
        if key in properties and properties[key] is not None and not isinstance(properties[key], bool):
            raise invalid(f"{target}.properties.{key}", f"'{key}' must be true or false.")
    for key in ("settings", "protectedSettings"):
        if properties.get(key) is not None and not isinstance(properties[key], dict):
            raise invalid(f"{target}.properties.{key}", f"'{key}' must be a JSON object.")
    after = properties.get("provisionAfterExtensions")
    if after is not None and (not isinstance(after, list) or not all(isinstance(a, str) for a in after)):
        raise invalid(
            f"{target}.properties.provisionAfterExtensions", "It must be a list of extension names."
        )
    if properties.get("forceUpdateTag") is not None and not isinstance(properties["forceUpdateTag"], str):
        raise invalid(f"{target}.properties.forceUpdateTag", "'forceUpdateTag' must be a string.")
    return extension


def _check_provision_after(extensions: list[Json], target: str) -> None:
    names = {str(e["name"]).lower(): index for index, e in enumerate(extensions)}
    edges: dict[str, list[str]] = {}
    for index, extension in enumerate(extensions):
        after = extension["properties"].get("provisionAfterExtensions") or []
        for other in after:
            if other.lower() not in names:
                raise invalid(
                    f"{target}[{index}].properties.provisionAfterExtensions",
                    f"'{other}' is not an extension of this model.",
                )
        edges[str(extension["name"]).lower()] = [a.lower() for a in after]
    cycle = find_cycle(edges)
    if cycle:
        raise invalid(f"{target}", "provisionAfterExtensions forms a cycle: " + " → ".join(cycle) + ".")


def find_cycle(edges: dict[str, list[str]]) -> list[str]:
    """One cycle of a dependency graph as a path that ends where it starts, or [] if there is none."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in edges:
        if node not in state and (found := visit(node)):
            return found
    return []


def extension_named(extensions: list[Json], name: str) -> Json | None:
    return next((e for e in extensions if str(e["name"]).lower() == name.lower()), None)
