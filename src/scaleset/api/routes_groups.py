"""Resource groups, in the `Microsoft.Resources` shape so `azure-mgmt-resource` works unchanged."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from scaleset.api.deps import container, json_body, require_access
from scaleset.api.lro import accepted
from scaleset.api.views import group_view

router = APIRouter(dependencies=[Depends(require_access)])
GROUP = "/subscriptions/{subscription}/resourcegroups/{group}"


@router.put(GROUP)
def put_group(
    request: Request, subscription: str, group: str, body: Any = Depends(json_body)
) -> JSONResponse:
    row, created = container(request).scalesets.put_group(subscription, group, body)
    return JSONResponse(status_code=201 if created else 200, content=group_view(row))


@router.get(GROUP)
def get_group(request: Request, subscription: str, group: str) -> dict[str, Any]:
    return group_view(container(request).scalesets.get_group(subscription, group))


@router.head(GROUP)
def group_exists(request: Request, subscription: str, group: str) -> Response:
    container(request).scalesets.get_group(subscription, group)
    return Response(status_code=204)


@router.get("/subscriptions/{subscription}/resourcegroups")
def list_groups(request: Request, subscription: str) -> dict[str, Any]:
    return {"value": [group_view(g) for g in container(request).scalesets.list_groups(subscription)]}


@router.delete(GROUP)
def delete_group(request: Request, subscription: str, group: str) -> Response:
    operation = container(request).scalesets.delete_group(subscription, group)
    return accepted(request, operation)
