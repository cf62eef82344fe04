"""Azure Compute Gallery: galleries, image definitions and image versions (issue 5 §1, M-12).

Galleries and definitions are plain resources: validated (`domain/gallery_spec.py`), then written in one
transaction, synchronously (nothing to provision). A version is published from an artifact, as a platform
image is (`scaleset sig image-version create --artifact DIR`): the image catalog unpacks it once and files
it under the definition's synthetic coordinates in each target region, together with the version's row,
in one transaction (`ImageCatalog.publish_gallery_version`). From there the scale-set service, the executor,
reimage, rolling upgrades, rollback and automatic OS upgrades use it like any catalog image.

Deletes follow Azure: a gallery with definitions, or a definition with versions, is refused with
`CannotDeleteResource` (409). Azure does let a version that scale sets run be deleted; here that is refused
too (409 `OperationNotAllowed`, naming the sets), because the artifact is what reimage, repairs, scale-out
and rollback of those instances are made from, and nothing else holds a copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.catalog.service import ImageCatalog
from scaleset.domain.errors import ArmError, operation_not_allowed
from scaleset.domain.gallery_spec import (
    GALLERY_PUBLISHER,
    GALLERY_TYPE,
    IMAGE_TYPE,
    VERSION_TYPE,
    definition_id_of,
    definition_key,
    excluded_from_latest,
    gallery_id_of,
    validate_definition,
    validate_definition_name,
    validate_gallery,
    validate_gallery_name,
    validate_publish,
    validate_version_name,
    version_document,
    version_id_of,
)
from scaleset.domain.rolling import ACTIVE_STATUSES
from scaleset.domain.scaleset_spec import image_request
from scaleset.domain.versions import ImageVersion
from scaleset.engine.clock import Clock
from scaleset.services.lookups import (
    add_to_group,
    find_in_group,
    require_group,
    require_writable_group,
    resource_not_found,
    stored_document,
)
from scaleset.store.db import Database
from scaleset.store.tables import (
    Gallery,
    GalleryImage,
    GalleryImageVersion,
    Instance,
    ResourceGroup,
    RollingUpgrade,
    ScaleSet,
    UpgradeInstance,
)

Json = dict[str, Any]


@dataclass(frozen=True)
class GalleryPath:
    """The stored names above a gallery resource, for its id."""

    subscription: str
    group: str
    gallery: str
    image: str | None = None

    @property
    def gallery_id(self) -> str:
        return gallery_id_of(self.subscription, self.group, self.gallery)

    @property
    def image_id(self) -> str:
        assert self.image is not None
        return definition_id_of(self.subscription, self.group, self.gallery, self.image)

    def version_id(self, version: str) -> str:
        assert self.image is not None
        return version_id_of(self.subscription, self.group, self.gallery, self.image, version)


def nested_resources_exist(kind: str, child_ids: Sequence[str]) -> ArmError:
    """Azure's refusal to delete a gallery or definition that still has children."""
    shown = ", ".join(f"'{child}'" for child in child_ids[:3])
    return ArmError(
        409,
        "CannotDeleteResource",
        f"Cannot delete the {kind} while nested resources exist. Some existing nested resource IDs "
        f"include: {shown}. Please delete all nested resources before deleting this resource.",
    )


def _directory_size(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink())


class GalleryService:
    def __init__(self, db: Database, clock: Clock, catalog: ImageCatalog) -> None:
        self._db = db
        self._clock = clock
        self._catalog = catalog

    # ------------------------------------------------------------------------------------ galleries
    def put_gallery(
        self, subscription: str, group_name: str, name: str, body: Any
    ) -> tuple[Gallery, GalleryPath, bool]:
        validate_gallery_name(name)
        with self._db.read() as session:
            current = stored_document(session, Gallery, subscription, group_name, name)
        document = validate_gallery(body, name, current)
        now = self._clock.now()
        with self._db.write() as session:
            group = require_writable_group(session, subscription, group_name)
            row = find_in_group(session, Gallery, group, name)
            created = row is None
            if row is None:
                row = add_to_group(session, Gallery, group, name, document, now)
            else:
                row.document = document
                row.updated_at = now
            return row, GalleryPath(subscription, group.name, row.name), created

    def get_gallery(self, subscription: str, group_name: str, name: str) -> tuple[Gallery, GalleryPath]:
        with self._db.read() as session:
            gallery, group = self._require_gallery(session, subscription, group_name, name)
            return gallery, GalleryPath(subscription, group.name, gallery.name)

    def list_galleries(self, subscription: str, group_name: str | None) -> list[tuple[Gallery, GalleryPath]]:
        with self._db.read() as session:
            query = (
                select(Gallery, ResourceGroup.name)
                .join(ResourceGroup, ResourceGroup.id == Gallery.group_id)
                .where(Gallery.subscription == subscription)
                .order_by(Gallery.name_key)
            )
            if group_name is not None:
                query = query.where(Gallery.group_id == require_group(session, subscription, group_name).id)
            return [
                (row, GalleryPath(subscription, group, row.name)) for row, group in session.execute(query)
            ]

    def delete_gallery(self, subscription: str, group_name: str, name: str) -> bool:
        with self._db.write() as session:
            group = require_group(session, subscription, group_name)
            gallery = find_in_group(session, Gallery, group, name)
            if gallery is None:
                return False
            children = session.scalars(
                select(GalleryImage.name).where(GalleryImage.gallery_id == gallery.id)
            ).all()
            if children:
                gallery_id = GalleryPath(subscription, group.name, gallery.name).gallery_id
                raise nested_resources_exist(
                    "gallery", [f"{gallery_id}/images/{child}" for child in children]
                )
            session.delete(gallery)
            return True

    # ---------------------------------------------------------------------------------- definitions
    def put_definition(
        self, subscription: str, group_name: str, gallery_name: str, name: str, body: Any
    ) -> tuple[GalleryImage, GalleryPath, bool]:
        validate_definition_name(name)
        with self._db.read() as session:
            gallery, _ = self._require_gallery(session, subscription, group_name, gallery_name)
            existing = self._find_definition(session, gallery, name)
            current = existing.document if existing is not None else None
            gallery_location = gallery.location
        document = validate_definition(body, name, gallery_location, current)
        now = self._clock.now()
        stale: list[Path] = []
        with self._db.write() as session:
            gallery, group = self._require_gallery(session, subscription, group_name, gallery_name)
            row = self._find_definition(session, gallery, name)
            created = row is None
            if row is None:
                key = definition_key(subscription, group.name, gallery.name, name)
                # Catalog rows of an earlier definition of this id (its group was deleted with them in it).
                stale = self._catalog.remove_gallery_definition(session, key)
                row = GalleryImage(
                    gallery_id=gallery.id,
                    name=name,
                    name_key=name.lower(),
                    location=document["location"],
                    catalog_key=key,
                    document=document,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
            else:
                row.document = document
                row.updated_at = now
            path = GalleryPath(subscription, group.name, gallery.name, row.name)
        self._catalog.remove_files(stale)
        return row, path, created

    def get_definition(
        self, subscription: str, group_name: str, gallery_name: str, name: str
    ) -> tuple[GalleryImage, GalleryPath]:
        with self._db.read() as session:
            definition, gallery, group = self._require_definition(
                session, subscription, group_name, gallery_name, name
            )
            return definition, GalleryPath(subscription, group.name, gallery.name, definition.name)

    def list_definitions(
        self, subscription: str, group_name: str, gallery_name: str
    ) -> list[tuple[GalleryImage, GalleryPath]]:
        with self._db.read() as session:
            gallery, group = self._require_gallery(session, subscription, group_name, gallery_name)
            rows = session.scalars(
                select(GalleryImage)
                .where(GalleryImage.gallery_id == gallery.id)
                .order_by(GalleryImage.name_key)
            ).all()
            return [(row, GalleryPath(subscription, group.name, gallery.name, row.name)) for row in rows]

    def delete_definition(self, subscription: str, group_name: str, gallery_name: str, name: str) -> bool:
        with self._db.write() as session:
            gallery, group = self._require_gallery(session, subscription, group_name, gallery_name)
            definition = self._find_definition(session, gallery, name)
            if definition is None:
                return False
            versions = session.scalars(
                select(GalleryImageVersion.name).where(GalleryImageVersion.image_id == definition.id)
            ).all()
            if versions:
                path = GalleryPath(subscription, group.name, gallery.name, definition.name)
                raise nested_resources_exist("image definition", [path.version_id(v) for v in versions])
            session.delete(definition)
            return True

    # ------------------------------------------------------------------------------------- versions
    def publish_version(
        self,
        subscription: str,
        group_name: str,
        gallery_name: str,
        image_name: str,
        version_name: str,
        artifact: Path,
        target_regions: Sequence[str] | None,
        exclude_from_latest: bool,
        tags: dict[str, str] | None = None,
    ) -> tuple[GalleryImageVersion, GalleryPath]:
        """Publish a version from an artifact (a directory packed by the CLI, or an archive). Immutable:
        a version that exists is a 409, whatever the body."""
        version = validate_version_name(version_name)
        with self._db.read() as session:
            definition, gallery, group = self._require_definition(
                session, subscription, group_name, gallery_name, image_name
            )
            self._refuse_existing_version(session, definition, version)
            path = GalleryPath(subscription, group.name, gallery.name, definition.name)
            definition_id, key, sku, location = (
                definition.id,
                definition.catalog_key,
                definition.name,
                definition.location,
            )
        publish = validate_publish(target_regions, exclude_from_latest, location)
        now = self._clock.now()
        document: Json = {}

        def record(session: Session, unpacked: Path) -> GalleryImageVersion:
            current = session.get(GalleryImage, definition_id)
            if current is None:
                raise resource_not_found(IMAGE_TYPE, path.group, f"{path.gallery}/{image_name}")
            self._refuse_existing_version(session, current, version)
            document.update(
                version_document(location, publish, now.isoformat(), _directory_size(unpacked), tags or {})
            )
            row = GalleryImageVersion(
                image_id=definition_id, name=version, catalog_key=key, document=document, published_at=now
            )
            session.add(row)
            return row

        row = self._catalog.publish_gallery_version(
            key,
            sku.lower(),
            version,
            publish.target_regions,
            artifact,
            record,
            excluded=lambda region: excluded_from_latest(document, region),
        )
        return row, path

    def get_version(
        self, subscription: str, group_name: str, gallery_name: str, image_name: str, version_name: str
    ) -> tuple[GalleryImageVersion, GalleryPath]:
        with self._db.read() as session:
            definition, gallery, group = self._require_definition(
                session, subscription, group_name, gallery_name, image_name
            )
            row = self._find_version(session, definition, version_name)
            if row is None:
                raise resource_not_found(
                    VERSION_TYPE, group.name, f"{gallery.name}/{definition.name}/{version_name}"
                )
            return row, GalleryPath(subscription, group.name, gallery.name, definition.name)

    def list_versions(
        self, subscription: str, group_name: str, gallery_name: str, image_name: str
    ) -> list[tuple[GalleryImageVersion, GalleryPath]]:
        with self._db.read() as session:
            definition, gallery, group = self._require_definition(
                session, subscription, group_name, gallery_name, image_name
            )
            rows = session.scalars(
                select(GalleryImageVersion).where(GalleryImageVersion.image_id == definition.id)
            ).all()
            path = GalleryPath(subscription, group.name, gallery.name, definition.name)
            return [(row, path) for row in sorted(rows, key=lambda r: ImageVersion.parse(r.name))]

    def delete_version(
        self, subscription: str, group_name: str, gallery_name: str, image_name: str, version_name: str
    ) -> bool:
        with self._db.write() as session:
            definition, _, _ = self._require_definition(
                session, subscription, group_name, gallery_name, image_name
            )
            row = self._find_version(session, definition, version_name)
            if row is None:
                return False
            users = _sets_running(session, definition.catalog_key, row.name)
            if users:
                raise operation_not_allowed(
                    f"Image version {row.name} of '{definition.name}' is in use by {', '.join(users)}: "
                    "reimage, scale-out and rollback of their instances are made from it. Move them to "
                    "another version (or delete them) first.",
                )
            paths = self._catalog.remove_gallery_version(session, definition.catalog_key, row.name)
            session.delete(row)
        self._catalog.remove_files(paths)
        return True

    # -------------------------------------------------------------------------------------- lookups
    def _require_gallery(
        self, session: Session, subscription: str, group_name: str, name: str
    ) -> tuple[Gallery, ResourceGroup]:
        group = require_group(session, subscription, group_name)
        gallery = find_in_group(session, Gallery, group, name)
        if gallery is None:
            raise resource_not_found(GALLERY_TYPE, group.name, name)
        return gallery, group

    @staticmethod
    def _find_definition(session: Session, gallery: Gallery, name: str) -> GalleryImage | None:
        return session.scalars(
            select(GalleryImage).where(
                GalleryImage.gallery_id == gallery.id, GalleryImage.name_key == name.lower()
            )
        ).first()

    def _require_definition(
        self, session: Session, subscription: str, group_name: str, gallery_name: str, name: str
    ) -> tuple[GalleryImage, Gallery, ResourceGroup]:
        gallery, group = self._require_gallery(session, subscription, group_name, gallery_name)
        definition = self._find_definition(session, gallery, name)
        if definition is None:
            raise resource_not_found(IMAGE_TYPE, group.name, f"{gallery.name}/{name}")
        return definition, gallery, group

    @staticmethod
    def _find_version(session: Session, definition: GalleryImage, name: str) -> GalleryImageVersion | None:
        try:
            wanted = ImageVersion.parse(name)
        except ValueError:
            return None
        rows = session.scalars(
            select(GalleryImageVersion).where(GalleryImageVersion.image_id == definition.id)
        )
        return next((row for row in rows if ImageVersion.parse(row.name) == wanted), None)

    def _refuse_existing_version(self, session: Session, definition: GalleryImage, version: str) -> None:
        if self._find_version(session, definition, version) is not None:
            raise ArmError(
                409,
                "Conflict",
                f"Image version {version} of '{definition.name}' already exists; gallery image versions are "
                "immutable. Publish a new version instead.",
                "galleryImageVersionName",
            )


def _sets_running(session: Session, catalog_key: str, version: str) -> list[str]:
    """Scale sets (and VMs' hidden sets) of this gallery image whose model, or one of whose instances, is on
    `version`."""
    users = []
    for scale_set in session.scalars(select(ScaleSet).order_by(ScaleSet.id)):
        request = image_request(scale_set.document)
        if request.publisher != GALLERY_PUBLISHER or request.offer != catalog_key:
            continue
        on_it = (
            scale_set.exact_image_version == version
            or session.scalar(
                select(Instance.id)
                .where(Instance.set_id == scale_set.id, Instance.image_version == version)
                .limit(1)
            )
            is not None
            # A running upgrade may still roll its members back onto the image they ran before it.
            or session.scalar(
                select(UpgradeInstance.instance_row_id)
                .join(RollingUpgrade, RollingUpgrade.id == UpgradeInstance.upgrade_id)
                .where(
                    RollingUpgrade.set_id == scale_set.id,
                    RollingUpgrade.status.in_(ACTIVE_STATUSES),
                    UpgradeInstance.before_image_version == version,
                )
                .limit(1)
            )
            is not None
        )
        if on_it:
            users.append(f"scale set '{scale_set.name}'")
    return users
