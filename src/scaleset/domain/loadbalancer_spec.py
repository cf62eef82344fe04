"""The load balancer (`Microsoft.Network/loadBalancers`) as a user writes it: validation of PUT bodies.

scaleset runs no data path, so a load balancer is minimal: only its `probes` mean something, as health
sources a scale set names in `networkProfile.healthProbe.id` (M-11). Every other property
(frontendIPConfigurations, backendAddressPools, loadBalancingRules, …) is kept as the client sent it,
so templates written for Azure go through unchanged.

Pure: the caller passes the load balancer as it is now (None on create). The result is the *stored
document*: read-only fields dropped, probe properties in their canonical spelling with defaults filled in.

Probe rules are Azure's (`ProbePropertiesFormat`): protocol Http, Https or Tcp; port 1–65535;
requestPath required for Http(s) and not allowed for Tcp; intervalInSeconds at least 5, default 15;
numberOfProbes default 2 (az's `--threshold` default); probeThreshold optional. Integers are Azure's int32.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from scaleset.domain.errors import invalid
from scaleset.domain.fields import json_object as _object
from scaleset.domain.fields import non_empty_string as _string
from scaleset.domain.fields import one_of as _choice
from scaleset.domain.fields import validate_tags as _validate_tags
from scaleset.domain.regions import Region
from scaleset.domain.resource_location import validate_location

Json = dict[str, Any]

PROTOCOLS = ("Http", "Https", "Tcp")
NO_HEALTHY_BACKENDS_BEHAVIORS = ("AllProbedDown", "AllProbedUp")
DEFAULT_INTERVAL_SECONDS = 15
MIN_INTERVAL_SECONDS = 5
DEFAULT_NUMBER_OF_PROBES = 2
INT32_MAX = 2**31 - 1
# Keys of the resource kept as given; anything else at the top level is dropped, as for scale sets.
_KEPT_TOP = ("sku", "extendedLocation")
_READ_ONLY_PROPERTIES = ("provisioningState", "resourceGuid")
# Probe keys and properties understood; the read-only ones (id, etag, type, provisioningState,
# loadBalancingRules) are accepted and dropped, so a GET body can be PUT back.
_PROBE_KEYS = ("name", "properties", "id", "etag", "type")
_PROBE_PROPERTIES = (
    "protocol",
    "port",
    "requestPath",
    "intervalInSeconds",
    "numberOfProbes",
    "probeThreshold",
    "noHealthyBackendsBehavior",
    "provisioningState",
    "loadBalancingRules",
)
# Azure's rule for load balancer and probe names: 1–80 letters, digits, '.', '_', '-'; starts with a
# letter or digit, ends with a letter, digit or '_'.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,78}[A-Za-z0-9_])?$")
_PROBE_ID = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<group>[^/]+)/providers/"
    r"Microsoft\.Network/loadBalancers/(?P<load_balancer>[^/]+)/probes/(?P<probe>[^/]+)/?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ProbeRef:
    """The parts of a probe id, as written (names compare without case)."""

    subscription: str
    group: str
    load_balancer: str
    probe: str


def parse_probe_id(probe_id: str) -> ProbeRef | None:
    """`/subscriptions/{s}/resourceGroups/{g}/providers/Microsoft.Network/loadBalancers/{lb}/probes/{p}`
    (fixed segments in any case) → its parts; anything else → None."""
    match = _PROBE_ID.match(probe_id.strip())
    if match is None:
        return None
    return ProbeRef(match["subscription"], match["group"], match["load_balancer"], match["probe"])


def validate_name(name: str, target: str = "name") -> None:
    if not _NAME.match(name):
        raise invalid(
            target,
            f"The name '{name}' is invalid: use 1 to 80 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit and ending with a letter, digit or '_'.",
        )


def validate_load_balancer(body: Any, name: str, current: Json | None) -> Json:
    """The stored document for a PUT body (`current` is the load balancer as it is, None on create)."""
    validate_name(name)
    given = _object(body, "body")
    result: Json = {"location": _validate_location(given.get("location"), current).name}
    result["tags"] = _validate_tags(given.get("tags"))
    for key in _KEPT_TOP:
        if given.get(key) is not None:
            result[key] = copy.deepcopy(_object(given[key], key))
    result["properties"] = _validate_properties(given.get("properties"))
    return result


def probes_of(document: Json) -> list[Json]:
    probes: list[Json] = document["properties"]["probes"]
    return probes


def find_probe(document: Json, name: str) -> Json | None:
    return next((p for p in probes_of(document) if p["name"].lower() == name.lower()), None)


def removed_probes(before: Json, after: Json) -> list[str]:
    """Names of the probes `before` has and `after` has not (compared without case)."""
    kept = {p["name"].lower() for p in probes_of(after)}
    return [p["name"] for p in probes_of(before) if p["name"].lower() not in kept]


def effective_number_of_probes(properties: Json) -> int:
    """How many consecutive answers change a probe's verdict: probeThreshold when set (the newer field,
    which Azure uses in place of numberOfProbes), else numberOfProbes."""
    threshold = properties.get("probeThreshold")
    return int(threshold if threshold is not None else properties["numberOfProbes"])


# ---------------------------------------------------------------------------------------------- readers
def _integer(value: Any, target: str, low: int, high: int) -> int:
    # bool is an int in Python; JSON true is not a number on the wire.
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(target, f"'{target}' must be an integer between {low} and {high}.")
    if not low <= value <= high:
        raise invalid(target, f"'{target}' is {value}; it must be between {low} and {high}.")
    return value


# --------------------------------------------------------------------------------------------- sections
def _validate_location(raw: Any, current: Json | None) -> Region:
    if raw is None and current is not None:
        raw = current["location"]
    location = _string(raw, "location")
    return validate_location(location, "Microsoft.Network/loadBalancers", "a load balancer", current)


def _validate_properties(raw: Any) -> Json:
    given = {} if raw is None else _object(raw, "properties")
    properties: Json = {}
    probes: Any = None
    for key, value in given.items():
        if key.lower() == "probes":
            probes = value
        elif key not in _READ_ONLY_PROPERTIES:
            properties[key] = copy.deepcopy(value)
    properties["probes"] = _validate_probes(probes, "properties.probes")
    return properties


def _validate_probes(raw: Any, target: str) -> list[Json]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid(target, f"'{target}' must be a list.")
    probes: list[Json] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        probe = _validate_probe(item, f"{target}[{index}]")
        if probe["name"].lower() in seen:
            raise invalid(
                f"{target}[{index}].name",
                f"The probe name '{probe['name']}' is used twice; probe names are unique, ignoring case.",
            )
        seen.add(probe["name"].lower())
        probes.append(probe)
    return probes


def _canonical_keys(value: Json, known: tuple[str, ...], target: str) -> Json:
    """Match keys case-insensitively onto their canonical spelling; refuse unknown ones (a misspelt
    `intervalSeconds` silently ignored would probe at the default pace)."""
    by_lower = {name.lower(): name for name in known}
    result: Json = {}
    for key, item in value.items():
        canonical = by_lower.get(key.lower())
        if canonical is None:
            raise invalid(f"{target}.{key}", f"'{key}' is not a property of {target}.")
        result[canonical] = item
    return result


def _validate_probe(raw: Any, target: str) -> Json:
    given = _canonical_keys(_object(raw, target), _PROBE_KEYS, target)
    name = _string(given.get("name"), f"{target}.name")
    validate_name(name, f"{target}.name")
    return {"name": name, "properties": _validate_probe_properties(given.get("properties"), target)}


def _validate_probe_properties(raw: Any, probe_target: str) -> Json:
    target = f"{probe_target}.properties"
    given = _canonical_keys(_object(raw, target), _PROBE_PROPERTIES, target)
    protocol = _choice(given.get("protocol"), f"{target}.protocol", PROTOCOLS)
    if given.get("port") is None:
        raise invalid(f"{target}.port", f"'{target}.port' is required.")
    properties: Json = {"protocol": protocol, "port": _integer(given["port"], f"{target}.port", 1, 65535)}
    path = given.get("requestPath")
    if protocol == "Tcp":
        if path is not None:
            raise invalid(f"{target}.requestPath", "A Tcp probe has no requestPath; remove it.")
    else:
        if path is None:
            raise invalid(
                f"{target}.requestPath", f"An {protocol} probe needs a requestPath, e.g. '/health'."
            )
        if not isinstance(path, str) or not path.startswith("/"):
            raise invalid(f"{target}.requestPath", f"'{target}.requestPath' must start with '/'.")
        properties["requestPath"] = path
    interval = given.get("intervalInSeconds")
    properties["intervalInSeconds"] = _integer(
        DEFAULT_INTERVAL_SECONDS if interval is None else interval,
        f"{target}.intervalInSeconds",
        MIN_INTERVAL_SECONDS,
        INT32_MAX,
    )
    count = given.get("numberOfProbes")
    properties["numberOfProbes"] = _integer(
        DEFAULT_NUMBER_OF_PROBES if count is None else count, f"{target}.numberOfProbes", 1, INT32_MAX
    )
    if given.get("probeThreshold") is not None:
        properties["probeThreshold"] = _integer(
            given["probeThreshold"], f"{target}.probeThreshold", 1, INT32_MAX
        )
    if given.get("noHealthyBackendsBehavior") is not None:
        properties["noHealthyBackendsBehavior"] = _choice(
            given["noHealthyBackendsBehavior"],
            f"{target}.noHealthyBackendsBehavior",
            NO_HEALTHY_BACKENDS_BEHAVIORS,
        )
    return properties
