"""The extension catalog: handler packages filed under publisher / type / version.

A package is a directory or zip holding Azure's `HandlerManifest.json` (anywhere in the tree, as the guest
agent searches for it). Publishing follows the image catalog's rules: artifact safety, immutable versions,
nothing left behind by a refused package.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import select

from scaleset.catalog.service import install_into_catalog
from scaleset.domain.errors import ArmError, invalid
from scaleset.domain.scaleset_spec import validate_resource_name
from scaleset.domain.versions import ExtensionVersion
from scaleset.engine.clock import Clock
from scaleset.guest.handler_manifest import ManifestError, find_manifest, parse_manifest
from scaleset.store.db import Database
from scaleset.store.tables import ExtensionImage

log = logging.getLogger("scaleset.catalog")


def resolve_handler_version(requested: str, available: Iterable[str], auto_upgrade_minor: bool) -> str | None:
    """The package version a `typeHandlerVersion` ("major.minor") asks for.

    With `autoUpgradeMinorVersion` the highest published version of the same major is used (Azure: "the
    latest minor version ... overrides the TypeHandlerVersion"); without it, the highest build of that very
    major.minor. A major version is never crossed. Worked example, published 1.0.0, 1.0.3, 1.2.0, 2.0.0:
    "1.0" → 1.0.3 without, 1.2.0 with auto upgrade; "3.0" → None.
    """
    wanted = ExtensionVersion.parse(requested)
    candidates = [ExtensionVersion.parse(v) for v in available]
    matching = [
        v
        for v in candidates
        if v.major == wanted.major
        and ((auto_upgrade_minor and v.minor >= wanted.minor) or v.minor == wanted.minor)
    ]
    return str(max(matching)) if matching else None


class ExtensionCatalog:
    def __init__(self, db: Database, root: Path, clock: Clock) -> None:
        self._db = db
        self._root = root
        self._clock = clock
        # Called with each newly published version, after its row is committed (automatic extension
        # upgrades start there, M-18).
        self.on_publish: list[Callable[[ExtensionImage], object]] = []

    def publish(
        self, publisher: str, type_: str, version: str, artifact: Path, *, builtin: bool = False
    ) -> ExtensionImage:
        image = self._publish(publisher, type_, version, artifact, builtin=builtin)
        for listener in self.on_publish:
            try:
                listener(image)
            except Exception:  # the version is published whatever a listener makes of it
                log.exception("a listener failed on the publish of %s.%s %s", publisher, type_, version)
        return image

    def _publish(
        self, publisher: str, type_: str, version: str, artifact: Path, *, builtin: bool
    ) -> ExtensionImage:
        for field, value in (("publisher", publisher), ("type", type_)):
            validate_resource_name(value, field)
        try:
            ExtensionVersion.parse(version)
        except ValueError as error:
            raise invalid("version", str(error)) from None
        if self.find(publisher, type_, version) is not None:
            raise ArmError(
                409,
                "Conflict",
                f"Extension {publisher}.{type_} {version} is already published; versions are immutable.",
                "version",
            )

        def record(target: Path) -> ExtensionImage:
            manifest_path = find_manifest(target)
            if manifest_path is None:
                raise ArmError(
                    400,
                    "InvalidHandlerPackage",
                    "The package has no HandlerManifest.json.",
                    "HandlerManifest.json",
                )
            try:
                text = manifest_path.read_text()
                parse_manifest(text)  # refuses what the guest agent would refuse (codes 1002/1003)
            except (ManifestError, UnicodeDecodeError) as error:
                raise ArmError(400, "InvalidHandlerPackage", str(error), "HandlerManifest.json") from None
            with self._db.write() as session:
                image = ExtensionImage(
                    publisher=publisher,
                    publisher_key=publisher.lower(),
                    type=type_,
                    type_key=type_.lower(),
                    version=version,
                    handler_manifest=json.loads(text)[0],
                    path=str(target),
                    builtin=builtin,
                    published_at=self._clock.now(),
                )
                session.add(image)
            return image

        target = self._root / publisher.lower() / type_.lower() / version
        return install_into_catalog(artifact, target, self._root, record)

    def find(self, publisher: str, type_: str, version: str) -> ExtensionImage | None:
        """One exact version (compared by number: 1.0 is 1.0.0.0)."""
        wanted = ExtensionVersion.parse(version)
        return next(
            (i for i in self.list_versions(publisher, type_) if ExtensionVersion.parse(i.version) == wanted),
            None,
        )

    def resolve(
        self, publisher: str, type_: str, type_handler_version: str, auto_upgrade_minor: bool
    ) -> ExtensionImage | None:
        images = self.list_versions(publisher, type_)
        chosen = resolve_handler_version(
            type_handler_version, (i.version for i in images), auto_upgrade_minor
        )
        return next((i for i in images if i.version == chosen), None)

    def list_types(self, publisher: str) -> list[str]:
        with self._db.read() as session:
            names = session.scalars(
                select(ExtensionImage.type).where(ExtensionImage.publisher_key == publisher.lower())
            ).all()
        return sorted({n.lower(): n for n in names}.values(), key=str.lower)

    def list_versions(self, publisher: str, type_: str) -> list[ExtensionImage]:
        with self._db.read() as session:
            images = session.scalars(
                select(ExtensionImage).where(
                    ExtensionImage.publisher_key == publisher.lower(),
                    ExtensionImage.type_key == type_.lower(),
                )
            ).all()
        return sorted(images, key=lambda i: ExtensionVersion.parse(i.version))
