"""The availability set as a user writes it, and where its next VM goes.

An availability set (`Microsoft.Compute/availabilitySets`) spreads the VMs created in it over
`platformUpdateDomainCount` update domains (1–20, default 5) and `platformFaultDomainCount` fault
domains (1–3, default 2). Both counts are fixed once the set exists: Azure refuses to change them while
VMs are placed by them, and we refuse it always, so a domain number never changes meaning.

A new VM takes the least-used update domain and the least-used fault domain (lowest number on a tie).
On a set without deletions that is plain round-robin; after deletions it refills the gaps first.

    >>> [next_domains(used, 5, 2) for used in ([], [(0, 0)], [(0, 0), (1, 1)])]
    [(0, 0), (1, 1), (2, 0)]
    >>> next_domains([(0, 0), (2, 0)], 3, 2)
    (1, 1)

Pure: no I/O; the service passes the domains of the VMs already in the set.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable
from typing import Any

from scaleset.domain.errors import ArmError, invalid
from scaleset.domain.resource_location import validate_location
from scaleset.domain.scaleset_spec import validate_resource_name

Json = dict[str, Any]

DEFAULT_UPDATE_DOMAINS = 5
MAX_UPDATE_DOMAINS = 20
DEFAULT_FAULT_DOMAINS = 2
MAX_FAULT_DOMAINS = 3
# Azure's two kinds: `Aligned` for managed disks (what `az vm availability-set create` makes), `Classic`.
SKUS = ("Aligned", "Classic")
_READ_ONLY_PROPERTIES = ("virtualMachines", "statuses", "provisioningState")


def _count(properties: Json, key: str, default: int, high: int, current: Json | None) -> int:
    before = (current or {}).get("properties", {}).get(key)
    value = properties.get(key)
    if value is None:
        return int(before) if before is not None else default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise invalid(f"properties.{key}", f"'{key}' must be an integer between 1 and {high}.")
    if before is not None and value != before:
        raise ArmError(
            409,
            "PropertyChangeNotAllowed",
            f"'{key}' of an existing availability set cannot change (it is {before}).",
            f"properties.{key}",
        )
    return value


def validate_availability_set(body: Any, name: str, current: Json | None) -> Json:
    """The stored document for a PUT body (`current`: the set as it is, None on create)."""
    validate_resource_name(name)
    if not isinstance(body, dict):
        raise invalid("body", "The request body must be a JSON object.")
    region = validate_location(
        body.get("location"), "Microsoft.Compute/availabilitySets", "an availability set", current
    )
    properties = body.get("properties") or {}
    if not isinstance(properties, dict):
        raise invalid("properties", "'properties' must be a JSON object.")
    properties = {k: copy.deepcopy(v) for k, v in properties.items() if k not in _READ_ONLY_PROPERTIES}
    properties["platformUpdateDomainCount"] = _count(
        properties, "platformUpdateDomainCount", DEFAULT_UPDATE_DOMAINS, MAX_UPDATE_DOMAINS, current
    )
    properties["platformFaultDomainCount"] = _count(
        properties, "platformFaultDomainCount", DEFAULT_FAULT_DOMAINS, MAX_FAULT_DOMAINS, current
    )
    document: Json = {
        "location": region.name,
        "sku": {"name": _sku_name(body.get("sku"), current)},
        "properties": properties,
    }
    tags = body.get("tags")
    if tags is not None:
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise invalid("tags", "Tags must be an object of strings.")
        document["tags"] = dict(tags)
    return document


def _sku_name(raw: Any, current: Json | None) -> str:
    if raw is None:
        return str((current or {}).get("sku", {}).get("name", "Aligned"))
    name = raw.get("name") if isinstance(raw, dict) else None
    for sku in SKUS:
        if isinstance(name, str) and name.lower() == sku.lower():
            return sku
    raise invalid("sku.name", f"The availability set SKU must be one of {', '.join(SKUS)}.")


def next_domains(used: Iterable[tuple[int, int]], update_domains: int, fault_domains: int) -> tuple[int, int]:
    """(update domain, fault domain) for the next VM, given those of the VMs already in the set."""
    placed = list(used)
    ud_use = Counter(ud for ud, _ in placed)
    fd_use = Counter(fd for _, fd in placed)
    update_domain = min(range(update_domains), key=lambda d: (ud_use[d], d))
    fault_domain = min(range(fault_domains), key=lambda d: (fd_use[d], d))
    return update_domain, fault_domain
