"""The image catalog: publishing image versions and finding them again.

Publishing unpacks the artifact under `<data dir>/images/...` with the artifact-safety rules of
`catalog/artifacts.py`, then records it; a publish that fails leaves neither files nor a row. Once the row
is committed, the `on_publish` listeners hear of the new version (automatic OS upgrades start there, M-8).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.catalog.artifacts import ArtifactError, install_artifact
from scaleset.catalog.manifest import MANIFEST_FILE, ManifestError, parse_image_manifest, read_image_manifest
from scaleset.domain.errors import ArmError, invalid
from scaleset.domain.gallery_spec import GALLERY_PUBLISHER, excluded_from_latest
from scaleset.domain.regions import find_region
from scaleset.domain.scaleset_spec import ImageRequest, validate_resource_name
from scaleset.domain.versions import ImageVersion, is_latest
from scaleset.engine.clock import Clock
from scaleset.providers.base import ImageArtifact
from scaleset.store.db import Database
from scaleset.store.tables import GalleryImageVersion, Image

T = TypeVar("T")
log = logging.getLogger("scaleset.catalog")


@dataclass(frozen=True)
class ImageCoordinates:
    location: str
    publisher: str
    offer: str
    sku: str
    version: str


def image_not_found(location: str, request: ImageRequest) -> ArmError:
    if request.gallery_image is not None:
        return ArmError(
            404,
            "GalleryImageNotFound",
            f"The gallery image '{request.urn}' is not available in location '{location}': it does not "
            "exist, no version of it is replicated there (publishingProfile.targetRegions), or every "
            "version there is excluded from latest.",
            "properties.virtualMachineProfile.storageProfile.imageReference.id",
        )
    return ArmError(
        404,
        "PlatformImageNotFound",
        f"The platform image '{request.urn}' is not available in location '{location}'. "
        "List what is published with GET .../publishers/{publisher}/artifacttypes/vmimage/offers/{offer}"
        "/skus/{sku}/versions or `scaleset vm image list --all -l <location>`.",
        "properties.virtualMachineProfile.storageProfile.imageReference",
    )


def _image_filter(
    location: str, publisher: str, offer: str | None = None, sku: str | None = None
) -> list[Any]:
    conditions: list[Any] = [Image.location == location, Image.publisher_key == publisher.lower()]
    if offer is not None:
        conditions.append(Image.offer_key == offer.lower())
    if sku is not None:
        conditions.append(Image.sku_key == sku.lower())
    return conditions


class ImageCatalog:
    def __init__(self, db: Database, root: Path, clock: Clock) -> None:
        self._db = db
        self._root = root
        self._clock = clock
        # Called with each newly published image, after its row is committed.
        self.on_publish: list[Callable[[Image], object]] = []

    # ------------------------------------------------------------------------------------ publishing
    def publish(self, where: ImageCoordinates, artifact: Path) -> Image:
        image = self._publish(where, artifact)
        for listener in self.on_publish:
            try:
                listener(image)
            except Exception:  # the version is published whatever a listener makes of it
                log.exception("a listener failed on the publish of %s %s", image.sku, image.version)
        return image

    def _publish(self, where: ImageCoordinates, artifact: Path) -> Image:
        location = self._check_coordinates(where)
        request = ImageRequest(where.publisher, where.offer, where.sku, where.version)
        if self.find(location, request) is not None:
            raise ArmError(
                409,
                "Conflict",
                f"Image version {where.version} of {where.publisher}:{where.offer}:{where.sku} is already "
                f"published in {location}; versions are immutable.",
                "version",
            )
        parent = self._root / location / where.publisher.lower() / where.offer.lower() / where.sku.lower()

        def record(target: Path) -> Image:
            manifest = read_image_manifest(target)
            with self._db.write() as session:
                image = Image(
                    location=location,
                    publisher=where.publisher,
                    publisher_key=where.publisher.lower(),
                    offer=where.offer,
                    offer_key=where.offer.lower(),
                    sku=where.sku,
                    sku_key=where.sku.lower(),
                    version=where.version,
                    manifest=manifest.to_json(),
                    path=str(target),
                    published_at=self._clock.now(),
                )
                session.add(image)
            return image

        try:
            return install_into_catalog(artifact, parent / where.version, self._root, record)
        except ManifestError as error:
            target_field = (
                MANIFEST_FILE if error.target in (None, MANIFEST_FILE) else f"{MANIFEST_FILE}:{error.target}"
            )
            raise ArmError(400, "InvalidImageManifest", error.message, target_field) from None

    @staticmethod
    def _check_coordinates(where: ImageCoordinates) -> str:
        region = find_region(where.location)
        if region is None:
            raise invalid("location", f"Unknown location '{where.location}'.")
        for field in ("publisher", "offer", "sku"):
            validate_resource_name(getattr(where, field), field)
        try:
            ImageVersion.parse(where.version)
        except ValueError as error:
            raise invalid("version", str(error)) from None
        return region.name

    # --------------------------------------------------------------------------------------- reading
    def find(self, location: str, request: ImageRequest) -> Image | None:
        """The image a request names; 'latest' is the highest published version."""
        with self._db.read() as session:
            return self._find(session, location, request)

    @staticmethod
    def _find(session: Session, location: str, request: ImageRequest) -> Image | None:
        candidates = session.scalars(
            select(Image).where(*_image_filter(location, request.publisher, request.offer, request.sku))
        ).all()
        if is_latest(request.version):
            candidates = _latest_candidates(session, location, request, candidates)
            return max(candidates, key=lambda image: ImageVersion.parse(image.version), default=None)
        try:
            wanted = ImageVersion.parse(request.version)
        except ValueError:
            return None
        # 1.0.01 and 1.0.1 are the same version, as Azure compares them.
        return next((image for image in candidates if ImageVersion.parse(image.version) == wanted), None)

    def find_allowed(self, location: str, request: ImageRequest, blocked: frozenset[str]) -> Image | None:
        """As `find`, but 'latest' passes over the `blocked` versions (rolled back on the set asking)."""
        if not is_latest(request.version) or not blocked:
            return self.find(location, request)
        refused = {ImageVersion.parse(version) for version in blocked}
        with self._db.read() as session:
            candidates = session.scalars(
                select(Image).where(*_image_filter(location, request.publisher, request.offer, request.sku))
            ).all()
            candidates = _latest_candidates(session, location, request, candidates)
        allowed = [image for image in candidates if ImageVersion.parse(image.version) not in refused]
        return max(allowed, key=lambda image: ImageVersion.parse(image.version), default=None)

    def resolve(self, location: str, request: ImageRequest) -> Image:
        image = self.find(location, request)
        if image is None:
            raise image_not_found(location, request)
        return image

    def list_publishers(self, location: str) -> list[str]:
        """Platform publishers only: gallery images are listed through their galleries."""
        with self._db.read() as session:
            names = session.scalars(
                select(Image.publisher).where(
                    Image.location == location, Image.publisher_key != GALLERY_PUBLISHER
                )
            ).all()
        return _unique_case_insensitive(names)

    def list_offers(self, location: str, publisher: str) -> list[str]:
        with self._db.read() as session:
            names = session.scalars(select(Image.offer).where(*_image_filter(location, publisher))).all()
        return _unique_case_insensitive(names)

    def list_skus(self, location: str, publisher: str, offer: str) -> list[str]:
        with self._db.read() as session:
            names = session.scalars(select(Image.sku).where(*_image_filter(location, publisher, offer))).all()
        return _unique_case_insensitive(names)

    def latest_candidates(self, location: str, request: ImageRequest) -> list[Image]:
        """The versions of the requested image in `location` that 'latest' may pick (a gallery image's
        not excluded from latest there), oldest first."""
        with self._db.read() as session:
            return latest_candidates_in(session, location, request)

    def list_versions(self, location: str, publisher: str, offer: str, sku: str) -> list[Image]:
        with self._db.read() as session:
            images = session.scalars(
                select(Image).where(*_image_filter(location, publisher, offer, sku))
            ).all()
        return sorted(images, key=lambda image: ImageVersion.parse(image.version))

    # ------------------------------------------------------------------------------- gallery images
    def publish_gallery_version(
        self,
        offer: str,
        sku: str,
        version: str,
        regions: Sequence[str],
        artifact: Path,
        record: Callable[[Session, Path], GalleryImageVersion],
        excluded: Callable[[str], bool],
    ) -> GalleryImageVersion:
        """File a gallery image version in the catalog: the artifact unpacked once, one `images` row per
        target region (what 'replicated to a region' means here) under the definition's synthetic
        coordinates, and the gallery's own row written by `record` in the same transaction, so a failed
        publish leaves neither files nor rows. The `on_publish` listeners hear of each region's row that
        `latest` may pick (not `excluded` there): automatic OS upgrades of gallery sets start there."""
        target = self._root / "_galleries" / offer / version
        rows: list[Image] = []

        def write(unpacked: Path) -> GalleryImageVersion:
            manifest = read_image_manifest(unpacked)
            with self._db.write() as session:
                gallery_row = record(session, unpacked)
                for location in regions:
                    row = Image(
                        location=location,
                        publisher=GALLERY_PUBLISHER,
                        publisher_key=GALLERY_PUBLISHER,
                        offer=offer,
                        offer_key=offer.lower(),
                        sku=sku,
                        sku_key=sku.lower(),
                        version=version,
                        manifest=manifest.to_json(),
                        path=str(unpacked),
                        published_at=self._clock.now(),
                    )
                    session.add(row)
                    rows.append(row)
            return gallery_row

        try:
            published = install_into_catalog(artifact, target, self._root, write)
        except ManifestError as error:
            target_field = (
                MANIFEST_FILE if error.target in (None, MANIFEST_FILE) else f"{MANIFEST_FILE}:{error.target}"
            )
            raise ArmError(400, "InvalidImageManifest", error.message, target_field) from None
        for image in rows:
            if excluded(image.location):
                continue
            for listener in self.on_publish:
                try:
                    listener(image)
                except Exception:  # the version is published whatever a listener makes of it
                    log.exception("a listener failed on the publish of gallery version %s", version)
        return published

    @staticmethod
    def remove_gallery_version(session: Session, offer: str, version: str) -> list[Path]:
        """Delete a gallery version's catalog rows (every region); returns the folders to remove once the
        transaction has committed."""
        rows = session.scalars(
            select(Image).where(
                Image.publisher_key == GALLERY_PUBLISHER,
                Image.offer_key == offer.lower(),
                Image.version == version,
            )
        ).all()
        paths = {Path(row.path) for row in rows}
        for row in rows:
            session.delete(row)
        return sorted(paths)

    @staticmethod
    def remove_gallery_definition(session: Session, offer: str) -> list[Path]:
        """Every catalog row of a definition's synthetic offer: what a resource-group delete, which drops
        gallery rows by cascade, leaves behind; cleared when a definition of that id is made again, so
        a new definition never inherits the versions of an old one."""
        rows = session.scalars(
            select(Image).where(Image.publisher_key == GALLERY_PUBLISHER, Image.offer_key == offer.lower())
        ).all()
        paths = {Path(row.path) for row in rows}
        for row in rows:
            session.delete(row)
        return sorted(paths)

    def remove_files(self, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.is_relative_to(self._root):
                shutil.rmtree(path, ignore_errors=True)
                _remove_empty_folders(path.parent, stop=self._root)


def supports_automatic_os_upgrade(image: Image) -> bool:
    """M-12: a platform image whose manifest sets `automaticOSUpgradeSupported`, or any gallery image
    version. A gallery image is the user's own: newer Azure lets it upgrade automatically without a
    publisher's flag, and 'latest' already passes over the versions its owner excluded from latest."""
    if image.publisher_key == GALLERY_PUBLISHER:
        return True
    return parse_image_manifest(image.manifest).automatic_os_upgrade_supported


def latest_candidates_in(session: Session, location: str, request: ImageRequest) -> list[Image]:
    """`ImageCatalog.latest_candidates` inside the caller's transaction."""
    images = session.scalars(
        select(Image).where(*_image_filter(location, request.publisher, request.offer, request.sku))
    ).all()
    allowed = _latest_candidates(session, location, request, images)
    return sorted(allowed, key=lambda image: ImageVersion.parse(image.version))


def _latest_candidates(
    session: Session, location: str, request: ImageRequest, candidates: Sequence[Image]
) -> list[Image]:
    """The versions 'latest' may pick: all of a platform image's; a gallery image's that are not excluded
    from latest in `location`."""
    if request.publisher.lower() != GALLERY_PUBLISHER:
        return list(candidates)
    excluded = {
        ImageVersion.parse(row.name)
        for row in session.scalars(
            select(GalleryImageVersion).where(GalleryImageVersion.catalog_key == request.offer.lower())
        )
        if excluded_from_latest(row.document, location)
    }
    return [image for image in candidates if ImageVersion.parse(image.version) not in excluded]


def artifact_of(image: Image) -> ImageArtifact:
    manifest = parse_image_manifest(image.manifest)
    return ImageArtifact(
        path=Path(image.path),
        entrypoint=tuple(manifest.entrypoint),
        ports=tuple(manifest.ports),
        environment=dict(manifest.environment),
    )


def install_into_catalog(artifact: Path, target: Path, root: Path, record: Callable[[Path], T]) -> T:
    """Unpack an artifact to `target` under the catalog `root`, then `record` it (validate and write the row).

    A refused artifact, or one that `record` refuses, leaves nothing: not its files, not the folders made
    for it, not a row.
    """
    if target.exists():
        # Files without a row: a publish that died between unpacking and recording; start afresh.
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        install_artifact(artifact, target)
        return record(target)
    except BaseException as error:
        shutil.rmtree(target, ignore_errors=True)
        _remove_empty_folders(target.parent, stop=root)
        if isinstance(error, ArtifactError):
            raise ArmError(400, "InvalidArtifact", str(error), error.member or "artifact") from None
        raise


def _remove_empty_folders(folder: Path, stop: Path) -> None:
    while folder != stop and folder.is_relative_to(stop):
        try:
            folder.rmdir()
        except OSError:  # not empty (another version lives there) or already gone
            return
        folder = folder.parent


def _unique_case_insensitive(names: Sequence[str]) -> list[str]:
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.lower(), name)
    return sorted(seen.values(), key=str.lower)
