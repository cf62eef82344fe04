"""The exact extension versions a model version runs (M-18, M-19), written with the model version.

A model names an extension by `typeHandlerVersion` ("1.0") and `autoUpgradeMinorVersion`; what an instance
runs is one exact package version. Resolving that afresh at every goal state (as scaleset did before) let the
catalog change what a model meant: an instance rolled back to its previous model would still get the newest
minor version, the very one that failed. So the resolution is pinned, as `exact_image_version` pins `latest`:
`ScaleSetModel.extension_versions` = {extension name: exact version}, and an instance gets its model's pins.

When a model version is written, each extension's pin is:
- the `overrides` entry, when the caller names one (the automatic extension upgrade moves one extension);
- the previous model version's pin, when the extension's own configuration is unchanged and that version is
  still published and not excluded on the set (a change elsewhere in the model, an OS upgrade, a tag, does
  not move extensions);
- otherwise resolved afresh (`resolve_handler_version`; but a change of settings alone never takes an
  extension back below its previous pin): the newest build of that major.minor, or with
  `autoUpgradeMinorVersion` the newest of that major — Azure: "used during VM creation and while you upgrade
  the VM with a new configuration"), skipping versions that failed on the set
  (`services/extension_failures.py`). `afresh=True` (POST extensionRollingUpgrade) resolves every extension
  this way.

An extension none of whose versions is allowed gets no pin: its goal state is resolved as before, and fails
the instance if the catalog has nothing (the error names the extension).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.catalog.extensions import resolve_handler_version
from scaleset.domain.versions import ExtensionVersion
from scaleset.engine.guest_goal import auto_upgrade_minor, extension_config, extensions_of
from scaleset.services.extension_failures import excluded_extension_versions
from scaleset.store.tables import ExtensionImage, ScaleSet, ScaleSetModel

Json = dict[str, Any]


def extension_key(publisher: str, type_: str) -> str:
    """An extension whatever its version: "publisher.type" in lower case."""
    return f"{publisher}.{type_}".lower()


def pins_for(
    session: Session,
    scale_set: ScaleSet,
    model: Json,
    previous: ScaleSetModel | None,
    now: datetime,
    *,
    afresh: bool = False,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The pins of a new model version `model` of `scale_set` (see the module's rules)."""
    excluded = excluded_extension_versions(session, scale_set, now)
    published: dict[str, list[str]] = {}
    earlier = {e["name"].lower(): e for e in extensions_of(previous.model)} if previous is not None else {}
    kept_pins = (previous.extension_versions if previous is not None else None) or {}
    earlier_pins = {k.lower(): v for k, v in kept_pins.items()}
    wanted = {k.lower(): v for k, v in (overrides or {}).items()}
    pins: dict[str, str] = {}
    for extension in extensions_of(model):
        name, properties = extension["name"], extension["properties"]
        key = extension_key(properties["publisher"], properties["type"])
        if key not in published:
            published[key] = _published(session, properties["publisher"], properties["type"])
        allowed = [v for v in published[key] if (key, v) not in excluded]
        if name.lower() in wanted:
            pins[name] = wanted[name.lower()]
            continue
        before = earlier.get(name.lower())
        kept = earlier_pins.get(name.lower())
        if (
            not afresh
            and before is not None
            and kept is not None
            and extension_config(before) == extension_config(extension)
            and kept in allowed
        ):
            pins[name] = kept
            continue
        chosen = resolve_handler_version(
            properties["typeHandlerVersion"], allowed, auto_upgrade_minor(properties)
        )
        if (
            chosen is not None
            and not afresh
            and before is not None
            and kept is not None
            and kept in allowed
            and _resolution(before) == _resolution(extension)
            and ExtensionVersion.parse(kept) > ExtensionVersion.parse(chosen)
        ):
            # Only the settings changed, and the extension already runs a newer version than its
            # typeHandlerVersion resolves to (the automatic extension upgrade moved it): a settings change
            # must not take it backwards.
            chosen = kept
        if chosen is not None:
            pins[name] = chosen
    return pins


def _resolution(extension: Json) -> tuple[object, ...]:
    """What decides which version an extension resolves to."""
    properties = extension["properties"]
    return (
        str(properties["publisher"]).lower(),
        str(properties["type"]).lower(),
        properties["typeHandlerVersion"],
        auto_upgrade_minor(properties),
    )


def _published(session: Session, publisher: str, type_: str) -> list[str]:
    versions = session.scalars(
        select(ExtensionImage.version).where(
            ExtensionImage.publisher_key == publisher.lower(), ExtensionImage.type_key == type_.lower()
        )
    )
    return sorted(versions, key=ExtensionVersion.parse)
