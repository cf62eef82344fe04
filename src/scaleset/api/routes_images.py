"""Platform images, read side (`VirtualMachineImages`): bare JSON arrays, as Azure answers them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from scaleset.api.deps import container, require_access
from scaleset.api.views import image_name_view, image_resource_view, image_view
from scaleset.catalog.service import image_not_found
from scaleset.domain.errors import invalid
from scaleset.domain.regions import normalize_location
from scaleset.domain.scaleset_spec import ImageRequest

router = APIRouter(dependencies=[Depends(require_access)])
BASE = "/subscriptions/{subscription}/providers/microsoft.compute/locations/{location}/publishers"
OFFERS = BASE + "/{publisher}/artifacttypes/vmimage/offers"
SKUS = OFFERS + "/{offer}/skus"
VERSIONS = SKUS + "/{sku}/versions"


def _id(subscription: str, location: str, *parts: str) -> str:
    path = f"/Subscriptions/{subscription}/Providers/Microsoft.Compute/Locations/{location}"
    path += f"/Publishers/{parts[0]}"
    if len(parts) > 1:
        path += f"/ArtifactTypes/VMImage/Offers/{parts[1]}"
    if len(parts) > 2:
        path += f"/Skus/{parts[2]}"
    return path


@router.get(BASE)
def list_publishers(request: Request, subscription: str, location: str) -> list[dict[str, Any]]:
    where = normalize_location(location)
    names = container(request).catalog.list_publishers(where)
    return [image_name_view(name, where, _id(subscription, where, name)) for name in names]


@router.get(OFFERS)
def list_offers(request: Request, subscription: str, location: str, publisher: str) -> list[dict[str, Any]]:
    where = normalize_location(location)
    names = container(request).catalog.list_offers(where, publisher)
    return [image_name_view(name, where, _id(subscription, where, publisher, name)) for name in names]


@router.get(SKUS)
def list_skus(
    request: Request, subscription: str, location: str, publisher: str, offer: str
) -> list[dict[str, Any]]:
    where = normalize_location(location)
    names = container(request).catalog.list_skus(where, publisher, offer)
    return [image_name_view(name, where, _id(subscription, where, publisher, offer, name)) for name in names]


@router.get(VERSIONS)
def list_versions(
    request: Request, subscription: str, location: str, publisher: str, offer: str, sku: str
) -> list[dict[str, Any]]:
    images = container(request).catalog.list_versions(normalize_location(location), publisher, offer, sku)
    if "desc" in request.query_params.get("$orderby", "").lower():
        images.reverse()
    top = request.query_params.get("$top")
    if top is not None:
        if not top.isdigit():
            raise invalid("$top", "$top must be a non-negative integer.")
        images = images[: int(top)]
    expand = bool(request.query_params.get("$expand"))
    return [image_view(i, subscription) if expand else image_resource_view(i, subscription) for i in images]


@router.get(VERSIONS + "/{version}")
def get_version(
    request: Request, subscription: str, location: str, publisher: str, offer: str, sku: str, version: str
) -> dict[str, Any]:
    where = normalize_location(location)
    wanted = ImageRequest(publisher, offer, sku, version)
    image = container(request).catalog.find(where, wanted)
    if image is None:
        raise image_not_found(where, wanted)
    return image_view(image, subscription)
