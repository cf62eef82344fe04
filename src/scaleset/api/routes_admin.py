"""scaleset's own endpoints: health, publishing images, minting tokens (documented in docs/api.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from scaleset import __version__
from scaleset.api.deps import container, json_body, require_admin
from scaleset.api.uploads import receive_upload
from scaleset.api.views import image_view
from scaleset.catalog.service import ImageCoordinates
from scaleset.domain.errors import invalid

health_router = APIRouter()
router = APIRouter(dependencies=[Depends(require_admin)])
DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


@health_router.get("/scaleset/health")
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.post("/scaleset/admin/images")
async def publish_image(
    request: Request, location: str, publisher: str, offer: str, sku: str, version: str
) -> JSONResponse:
    c = container(request)
    async with receive_upload(
        request, c.settings.data_dir / "uploads", "the image as a .tar.gz, .tar or .zip archive"
    ) as path:
        where = ImageCoordinates(location, publisher, offer, sku, version)
        image = await run_in_threadpool(c.catalog.publish, where, path)
    subscription = request.query_params.get("subscription", DEFAULT_SUBSCRIPTION)
    return JSONResponse(status_code=201, content=image_view(image, subscription))


@router.post("/scaleset/admin/tokens")
def create_token(request: Request, body: Any = Depends(json_body)) -> JSONResponse:
    if not isinstance(body, dict):
        raise invalid("body", 'The body must be {"role": "reader" | "contributor" | "admin", "name": "..."}.')
    role = body.get("role")
    name = body.get("name") or ""
    if not isinstance(role, str) or not isinstance(name, str):
        raise invalid("role", "'role' and 'name' must be strings.")
    row, token = container(request).tokens.create(role, name)
    return JSONResponse(
        status_code=201, content={"id": row.id, "role": row.role, "name": row.name, "token": token}
    )
