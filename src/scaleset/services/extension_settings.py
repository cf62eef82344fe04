"""Readying a scale-set document's extensions for storage: each must resolve in the extension catalog, and
its protected settings are sealed.

Shared by the scale-set service and the VM service (a VM's extensions are those of its hidden set's
model, services/vms.py), so both keep protected settings by the same rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scaleset.catalog.extensions import ExtensionCatalog
from scaleset.domain.errors import invalid
from scaleset.domain.extensions_spec import extension_named
from scaleset.services.secrets import SecretBox

Json = dict[str, Any]


def set_extension_target(index: int) -> str:
    """Where the `index`th extension's properties stand in a scale-set body."""
    return f"properties.virtualMachineProfile.extensionProfile.extensions[{index}].properties"


def prepare_extensions(
    document: Json,
    current: Json | None,
    catalog: ExtensionCatalog,
    secrets: SecretBox,
    target: Callable[[int], str] = set_extension_target,
) -> None:
    """Check every extension of `document` resolves in the catalog and seal its protected settings (in
    place); `target` names the `index`th extension's properties in errors, as the client wrote them.

    An extension written again without protected settings keeps those stored (`current`): clients
    (`az vmss extension set`, `az vmss update`, a VM's GET and PUT) GET the resource, which never shows
    them, and PUT it back.
    """
    profile = document["properties"]["virtualMachineProfile"]
    extensions = (profile.get("extensionProfile") or {}).get("extensions") or []
    before = (
        (current or {}).get("properties", {}).get("virtualMachineProfile", {}).get("extensionProfile") or {}
    ).get("extensions") or []
    for index, extension in enumerate(extensions):
        properties = extension["properties"]
        auto_minor = properties.get("autoUpgradeMinorVersion", True) is not False
        if (
            catalog.resolve(
                properties["publisher"], properties["type"], properties["typeHandlerVersion"], auto_minor
            )
            is None
        ):
            raise invalid(
                f"{target(index)}.typeHandlerVersion",
                f"Extension {properties['publisher']}.{properties['type']} version "
                f"{properties['typeHandlerVersion']} is not in the extension catalog.",
            )
        if properties.get("protectedSettings") is not None:
            properties["protectedSettingsSealed"] = secrets.seal(properties.pop("protectedSettings"))
            continue
        old = extension_named(before, str(extension["name"]))
        if (
            old is not None
            and _same_handler(old["properties"], properties)
            and "protectedSettingsSealed" in old["properties"]
        ):
            properties["protectedSettingsSealed"] = old["properties"]["protectedSettingsSealed"]


def _same_handler(a: Json, b: Json) -> bool:
    """Two extensions' properties name the same handler (publisher and type, without case)."""
    return all(str(a.get(key, "")).lower() == str(b.get(key, "")).lower() for key in ("publisher", "type"))
