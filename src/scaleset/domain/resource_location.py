"""A resource's location as a PUT gives it: a known region, and the one the resource already has.

Pure: the rule every record resource (VMs, availability sets, load balancers) applies to `location`.
"""

from __future__ import annotations

from typing import Any

from scaleset.domain.errors import ArmError
from scaleset.domain.regions import Region, find_region

Json = dict[str, Any]


def validate_location(location: Any, resource_type: str, noun: str, current: Json | None) -> Region:
    """The region `location` names, for a resource of `resource_type` (`Microsoft.Compute/virtualMachines`)
    that the messages call `noun` ('a VM'); `current` is the resource as stored (None on create), whose
    location cannot change.

    >>> validate_location("West Europe", "Microsoft.Compute/virtualMachines", "a VM", None).name
    'westeurope'
    """
    region = find_region(location) if isinstance(location, str) else None
    if region is None:
        raise ArmError(
            400,
            "LocationNotAvailableForResourceType",
            f"The provided location '{location}' is not available for resource type '{resource_type}'.",
            "location",
        )
    if current is not None and current["location"] != region.name:
        raise ArmError(400, "PropertyChangeNotAllowed", f"The location of {noun} cannot change.", "location")
    return region
