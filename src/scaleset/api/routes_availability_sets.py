"""Availability sets (`Microsoft.Compute/availabilitySets`): PUT, GET, DELETE and the lists.

Not long-running on Azure: PUT answers 200 with the set (the SDK accepts nothing else, not even 201),
DELETE answers 200, or 204 when there was nothing to delete.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from scaleset.api.deps import json_body, require_access
from scaleset.api.vm_deps import availability_set_service
from scaleset.services.availability_sets import AvailabilitySetService, availability_set_id_of
from scaleset.services.vms import vm_id_of
from scaleset.store.tables import AvailabilitySet

router = APIRouter(dependencies=[Depends(require_access)])
RG = "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.compute"
AVAILABILITY_SET = RG + "/availabilitysets/{name}"
TYPE = "Microsoft.Compute/availabilitySets"


def availability_set_view(service: AvailabilitySetService, row: AvailabilitySet) -> dict[str, Any]:
    group = service.group_name_of(row)
    document = row.document
    properties = dict(document["properties"])
    properties["virtualMachines"] = [
        {"id": vm_id_of(row.subscription, group, vm.name)} for vm in service.members(row)
    ]
    properties["statuses"] = []
    return {
        "id": availability_set_id_of(row.subscription, group, row.name),
        "name": row.name,
        "type": TYPE,
        "location": row.location,
        "tags": document.get("tags", {}),
        "sku": document["sku"],
        "properties": properties,
    }


@router.put(AVAILABILITY_SET)
def put_availability_set(
    request: Request, subscription: str, group: str, name: str, body: Any = Depends(json_body)
) -> dict[str, Any]:
    service = availability_set_service(request)
    row, _created = service.put(subscription, group, name, body)
    return availability_set_view(service, row)


@router.get(AVAILABILITY_SET)
def get_availability_set(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    service = availability_set_service(request)
    return availability_set_view(service, service.get(subscription, group, name))


@router.delete(AVAILABILITY_SET)
def delete_availability_set(request: Request, subscription: str, group: str, name: str) -> Response:
    deleted = availability_set_service(request).delete(subscription, group, name)
    return Response(status_code=200 if deleted else 204)


@router.get(RG + "/availabilitysets")
def list_availability_sets(request: Request, subscription: str, group: str) -> dict[str, Any]:
    service = availability_set_service(request)
    return {"value": [availability_set_view(service, row) for row in service.list_sets(subscription, group)]}


@router.get("/subscriptions/{subscription}/providers/microsoft.compute/availabilitysets")
def list_all_availability_sets(request: Request, subscription: str) -> dict[str, Any]:
    service = availability_set_service(request)
    return {"value": [availability_set_view(service, row) for row in service.list_sets(subscription)]}
