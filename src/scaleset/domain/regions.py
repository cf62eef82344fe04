"""Regions scaleset knows: their availability zones and their pairs.

Modelled on Azure's public regions (names, which have zones, and the documented region pairs). A location
not listed here is refused, as ARM refuses an unknown location. The pairs are used by platform rollouts
(M-21: paired regions are never upgraded in the same phase).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Region:
    name: str
    display_name: str
    zones: tuple[str, ...]
    pair: str | None


_THREE = ("1", "2", "3")

REGIONS: dict[str, Region] = {
    region.name: region
    for region in (
        Region("eastus", "East US", _THREE, "westus"),
        Region("westus", "West US", (), "eastus"),
        Region("eastus2", "East US 2", _THREE, "centralus"),
        Region("centralus", "Central US", _THREE, "eastus2"),
        Region("westus2", "West US 2", _THREE, "westcentralus"),
        Region("westcentralus", "West Central US", (), "westus2"),
        Region("westus3", "West US 3", _THREE, "eastus"),
        Region("northcentralus", "North Central US", (), "southcentralus"),
        Region("southcentralus", "South Central US", _THREE, "northcentralus"),
        Region("northeurope", "North Europe", _THREE, "westeurope"),
        Region("westeurope", "West Europe", _THREE, "northeurope"),
        Region("swedencentral", "Sweden Central", _THREE, "swedensouth"),
        Region("swedensouth", "Sweden South", (), "swedencentral"),
        Region("germanywestcentral", "Germany West Central", _THREE, "germanynorth"),
        Region("germanynorth", "Germany North", (), "germanywestcentral"),
        Region("uksouth", "UK South", _THREE, "ukwest"),
        Region("ukwest", "UK West", (), "uksouth"),
        Region("francecentral", "France Central", _THREE, "francesouth"),
        Region("francesouth", "France South", (), "francecentral"),
        Region("japaneast", "Japan East", _THREE, "japanwest"),
        Region("japanwest", "Japan West", _THREE, "japaneast"),
        Region("australiaeast", "Australia East", _THREE, "australiasoutheast"),
        Region("australiasoutheast", "Australia Southeast", (), "australiaeast"),
    )
}


def normalize_location(location: str) -> str:
    """ARM accepts 'West Europe' and 'westeurope' alike; the canonical form is lower case, no spaces."""
    return location.replace(" ", "").lower()


def find_region(location: str) -> Region | None:
    return REGIONS.get(normalize_location(location))
