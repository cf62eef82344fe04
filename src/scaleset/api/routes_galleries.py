"""Azure Compute Gallery (`Microsoft.Compute/galleries[/images[/versions]]`), synchronous as load balancers
are: a PUT answers 201/200 with the resource in `Succeeded`, which the SDK's pollers accept as finished, and
a DELETE answers 200 (204 when there was nothing to delete).

Image versions are published from an artifact, not from a disk or snapshot: `PUT .../versions/{v}` with an
archive body (`Content-Type: application/gzip`, `application/x-tar` or `application/zip`, what
`scaleset sig image-version create --artifact` sends) and the publishing profile in the query
(`targetRegions=eastus,westus`, `excludeFromLatest=true`). A JSON body (the SDK's `begin_create_or_update`)
is refused with a 400 that says so (docs/galleries.md).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from scaleset.api.deps import container, json_body, require_access
from scaleset.api.uploads import receive_upload
from scaleset.domain.errors import ArmError, invalid
from scaleset.domain.gallery_spec import GALLERY_TYPE, IMAGE_TYPE, VERSION_TYPE
from scaleset.services.galleries import GalleryPath, GalleryService
from scaleset.store.tables import Gallery, GalleryImage, GalleryImageVersion

Json = dict[str, Any]

router = APIRouter(dependencies=[Depends(require_access)])
SUB = "/subscriptions/{subscription}"
RG = SUB + "/resourcegroups/{group}/providers/microsoft.compute/galleries"
GALLERY = RG + "/{gallery}"
IMAGES = GALLERY + "/images"
IMAGE = IMAGES + "/{image}"
VERSIONS = IMAGE + "/versions"
VERSION = VERSIONS + "/{version}"
ARCHIVE_TYPES = ("application/gzip", "application/x-gzip", "application/x-tar", "application/zip")


def _service(request: Request) -> GalleryService:
    c = container(request)
    return GalleryService(c.db, c.clock, c.catalog)


# ---------------------------------------------------------------------------------------------- views
def _resource(resource_id: str, name: str, kind: str, document: Json) -> Json:
    return {
        "id": resource_id,
        "name": name,
        "type": kind,
        "location": document["location"],
        "tags": dict(document.get("tags") or {}),
    }


def gallery_view(row: Gallery, path: GalleryPath) -> Json:
    view = _resource(path.gallery_id, row.name, GALLERY_TYPE, row.document)
    properties = copy.deepcopy(row.document.get("properties") or {})
    properties["identifier"] = {"uniqueName": f"{row.subscription}-{row.name.upper()}"}
    properties["provisioningState"] = "Succeeded"
    view["properties"] = properties
    return view


def definition_view(row: GalleryImage, path: GalleryPath) -> Json:
    view = _resource(path.image_id, row.name, IMAGE_TYPE, row.document)
    view["properties"] = {**copy.deepcopy(row.document["properties"]), "provisioningState": "Succeeded"}
    return view


def version_view(row: GalleryImageVersion, path: GalleryPath) -> Json:
    view = _resource(path.version_id(row.name), row.name, VERSION_TYPE, row.document)
    properties = copy.deepcopy(row.document["properties"])
    properties["provisioningState"] = "Succeeded"
    regions = [region["name"] for region in properties["publishingProfile"].get("targetRegions") or []]
    # Replication is the catalog row each region gets at publish: complete when the version exists.
    properties["replicationStatus"] = {
        "aggregatedState": "Completed",
        "summary": [{"region": region, "state": "Completed", "progress": 100} for region in regions],
    }
    view["properties"] = properties
    return view


# -------------------------------------------------------------------------------------------- galleries
@router.put(GALLERY)
def put_gallery(
    request: Request, subscription: str, group: str, gallery: str, body: Any = Depends(json_body)
) -> JSONResponse:
    row, path, created = _service(request).put_gallery(subscription, group, gallery, body)
    return JSONResponse(status_code=201 if created else 200, content=gallery_view(row, path))


@router.get(GALLERY)
def get_gallery(request: Request, subscription: str, group: str, gallery: str) -> Json:
    return gallery_view(*_service(request).get_gallery(subscription, group, gallery))


@router.delete(GALLERY)
def delete_gallery(request: Request, subscription: str, group: str, gallery: str) -> Response:
    deleted = _service(request).delete_gallery(subscription, group, gallery)
    return Response(status_code=200 if deleted else 204)


@router.get(RG)
def list_galleries_in_group(request: Request, subscription: str, group: str) -> Json:
    return {"value": [gallery_view(r, p) for r, p in _service(request).list_galleries(subscription, group)]}


@router.get(SUB + "/providers/microsoft.compute/galleries")
def list_galleries(request: Request, subscription: str) -> Json:
    return {"value": [gallery_view(r, p) for r, p in _service(request).list_galleries(subscription, None)]}


# ------------------------------------------------------------------------------------------ definitions
@router.put(IMAGE)
def put_definition(
    request: Request, subscription: str, group: str, gallery: str, image: str, body: Any = Depends(json_body)
) -> JSONResponse:
    row, path, created = _service(request).put_definition(subscription, group, gallery, image, body)
    return JSONResponse(status_code=201 if created else 200, content=definition_view(row, path))


@router.get(IMAGE)
def get_definition(request: Request, subscription: str, group: str, gallery: str, image: str) -> Json:
    return definition_view(*_service(request).get_definition(subscription, group, gallery, image))


@router.delete(IMAGE)
def delete_definition(request: Request, subscription: str, group: str, gallery: str, image: str) -> Response:
    deleted = _service(request).delete_definition(subscription, group, gallery, image)
    return Response(status_code=200 if deleted else 204)


@router.get(IMAGES)
def list_definitions(request: Request, subscription: str, group: str, gallery: str) -> Json:
    rows = _service(request).list_definitions(subscription, group, gallery)
    return {"value": [definition_view(r, p) for r, p in rows]}


# --------------------------------------------------------------------------------------------- versions
def _regions_query(request: Request) -> list[str] | None:
    raw = request.query_params.getlist("targetRegions")
    names = [name.strip() for item in raw for name in item.split(",") if name.strip()]
    return names or None


def _flag_query(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw.lower() not in ("true", "false"):
        raise invalid(name, f"'{name}' must be true or false.")
    return raw.lower() == "true"


def _tags_query(request: Request) -> dict[str, str]:
    raw = request.query_params.get("tags")
    if raw is None:
        return {}
    try:
        tags = json.loads(raw)
    except ValueError:
        tags = None
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise invalid("tags", "'tags' must be a JSON object of strings.")
    return tags


@router.put(VERSION)
async def publish_version(
    request: Request, subscription: str, group: str, gallery: str, image: str, version: str
) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ARCHIVE_TYPES:
        raise ArmError(
            400,
            "InvalidRequestContent",
            "A gallery image version is published from an image artifact: send the archive (a .tar.gz, .tar "
            "or .zip with a scaleset-image.json manifest) as the body, e.g. with `scaleset sig image-version "
            "create --artifact DIR`. Versions made from disks or snapshots are not supported.",
            "properties.storageProfile",
        )
    service = _service(request)
    regions = _regions_query(request)
    exclude = _flag_query(request, "excludeFromLatest")
    tags = _tags_query(request)
    c = container(request)
    async with receive_upload(
        request, c.settings.data_dir / "uploads", "the image as a .tar.gz, .tar or .zip archive"
    ) as artifact:
        row, path = await run_in_threadpool(
            service.publish_version,
            subscription,
            group,
            gallery,
            image,
            version,
            artifact,
            regions,
            exclude,
            tags,
        )
    return JSONResponse(status_code=201, content=version_view(row, path))


@router.get(VERSION)
def get_version(
    request: Request, subscription: str, group: str, gallery: str, image: str, version: str
) -> Json:
    return version_view(*_service(request).get_version(subscription, group, gallery, image, version))


@router.delete(VERSION)
def delete_version(
    request: Request, subscription: str, group: str, gallery: str, image: str, version: str
) -> Response:
    deleted = _service(request).delete_version(subscription, group, gallery, image, version)
    return Response(status_code=200 if deleted else 204)


@router.get(VERSIONS)
def list_versions(request: Request, subscription: str, group: str, gallery: str, image: str) -> Json:
    rows = _service(request).list_versions(subscription, group, gallery, image)
    return {"value": [version_view(r, p) for r, p in rows]}
