"""Extension handler packages, read side (`VirtualMachineExtensionImages`) and publishing (ours)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from scaleset.api.deps import container, require_access, require_admin
from scaleset.api.routes_admin import DEFAULT_SUBSCRIPTION
from scaleset.api.uploads import receive_upload
from scaleset.domain.errors import ArmError
from scaleset.domain.regions import normalize_location
from scaleset.store.tables import ExtensionImage

router = APIRouter(dependencies=[Depends(require_access)])
admin_router = APIRouter(dependencies=[Depends(require_admin)])
TYPES = (
    "/subscriptions/{subscription}/providers/microsoft.compute/locations/{location}/publishers/{publisher}"
    "/artifacttypes/vmextension/types"
)
VERSIONS = TYPES + "/{type_}/versions"


def extension_image_view(
    image: ExtensionImage, subscription: str, location: str, name: str | None = None
) -> dict[str, Any]:
    manifest = image.handler_manifest.get("handlerManifest", {})
    return {
        "id": (
            f"/Subscriptions/{subscription}/Providers/Microsoft.Compute/Locations/{location}/Publishers/"
            f"{image.publisher}/ArtifactTypes/VMExtension/Types/{image.type}/Versions/{image.version}"
        ),
        "name": name or image.version,
        "type": "Microsoft.Compute/locations/publishers/artifacttypes/vmextension/types/versions",
        "location": location,
        "properties": {
            "operatingSystem": "Linux",
            "computeRole": "IaaS",
            "handlerSchema": "",
            "vmScaleSetEnabled": True,
            "supportsMultipleExtensions": bool(manifest.get("supportsMultipleExtensions", False)),
        },
    }


@router.get(TYPES)
def list_extension_types(
    request: Request, subscription: str, location: str, publisher: str
) -> list[dict[str, Any]]:
    catalog = container(request).extensions
    where = normalize_location(location)
    result = []
    for type_name in catalog.list_types(publisher):
        newest = catalog.list_versions(publisher, type_name)[-1]
        result.append(extension_image_view(newest, subscription, where, name=newest.type))
    return result


@router.get(VERSIONS)
def list_extension_versions(
    request: Request, subscription: str, location: str, publisher: str, type_: str
) -> list[dict[str, Any]]:
    where = normalize_location(location)
    images = container(request).extensions.list_versions(publisher, type_)
    return [extension_image_view(i, subscription, where) for i in images]


@router.get(VERSIONS + "/{version}")
def get_extension_version(
    request: Request, subscription: str, location: str, publisher: str, type_: str, version: str
) -> dict[str, Any]:
    try:
        image = container(request).extensions.find(publisher, type_, version)
    except ValueError:
        image = None
    if image is None:
        raise ArmError(
            404,
            "ArtifactNotFound",
            f"The extension {publisher}.{type_} version {version} is not published.",
            "version",
        )
    return extension_image_view(image, subscription, normalize_location(location))


@admin_router.post("/scaleset/admin/extensions")
async def publish_extension(request: Request, publisher: str, type: str, version: str) -> JSONResponse:
    c = container(request)
    async with receive_upload(
        request, c.settings.data_dir / "uploads", "a handler package (.zip or .tar.gz)"
    ) as path:
        image = await run_in_threadpool(c.extensions.publish, publisher, type, version, path)
    subscription = request.query_params.get("subscription", DEFAULT_SUBSCRIPTION)
    return JSONResponse(status_code=201, content=extension_image_view(image, subscription, "global"))
