"""Load balancers and their probes (`Microsoft.Network/loadBalancers[/probes]`), synchronous: a PUT answers
201/200 with the resource in `Succeeded`, which the SDK's pollers accept as finished."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from scaleset.api.deps import container, json_body, require_access
from scaleset.domain.errors import ArmError
from scaleset.domain.loadbalancer_spec import find_probe, probes_of
from scaleset.services.loadbalancers import load_balancer_id_of
from scaleset.store.tables import LoadBalancer

Json = dict[str, Any]

router = APIRouter(dependencies=[Depends(require_access)])
RG = "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.network"
LB = RG + "/loadbalancers/{name}"
LB_TYPE = "Microsoft.Network/loadBalancers"


# ---------------------------------------------------------------------------------------------- views
def probe_view(lb_id: str, probe: Json, rules: Any) -> Json:
    """One probe; `rules` are the load balancer's loadBalancingRules as stored (opaque), of which those
    naming this probe are listed, as Azure lists them (read-only)."""
    probe_id = f"{lb_id}/probes/{probe['name']}"
    properties: Json = {**copy.deepcopy(probe["properties"]), "provisioningState": "Succeeded"}
    users = [
        {"id": f"{lb_id}/loadBalancingRules/{rule['name']}"}
        for rule in (rules if isinstance(rules, list) else [])
        if isinstance(rule, dict)
        and isinstance(rule.get("name"), str)
        and _rule_probe_id(rule).lower() == probe_id.lower()
    ]
    if users:
        properties["loadBalancingRules"] = users
    return {
        "id": probe_id,
        "name": probe["name"],
        "type": f"{LB_TYPE}/probes",
        "properties": properties,
    }


def _rule_probe_id(rule: Json) -> str:
    properties = rule.get("properties")
    probe = properties.get("probe") if isinstance(properties, dict) else None
    probe_id = probe.get("id") if isinstance(probe, dict) else None
    return probe_id if isinstance(probe_id, str) else ""


def load_balancer_view(row: LoadBalancer, group_name: str) -> Json:
    lb_id = load_balancer_id_of(row.subscription, group_name, row.name)
    document = row.document
    properties: Json = {"provisioningState": "Succeeded"}
    properties.update((k, copy.deepcopy(v)) for k, v in document["properties"].items() if k != "probes")
    rules = properties.get("loadBalancingRules")
    properties["probes"] = [probe_view(lb_id, p, rules) for p in probes_of(document)]
    view: Json = {
        "id": lb_id,
        "name": row.name,
        "type": LB_TYPE,
        "location": row.location,
        "tags": dict(document.get("tags") or {}),
    }
    for key in ("sku", "extendedLocation"):
        if key in document:
            view[key] = copy.deepcopy(document[key])
    view["properties"] = properties
    return view


# --------------------------------------------------------------------------------------------- routes
@router.put(LB)
def put_load_balancer(
    request: Request, subscription: str, group: str, name: str, body: Any = Depends(json_body)
) -> JSONResponse:
    service = container(request).loadbalancers
    row, created = service.put(subscription, group, name, body)
    view = load_balancer_view(row, service.group_name_of(row))
    return JSONResponse(status_code=201 if created else 200, content=view)


@router.get(LB)
def get_load_balancer(request: Request, subscription: str, group: str, name: str) -> Json:
    service = container(request).loadbalancers
    row = service.get(subscription, group, name)
    return load_balancer_view(row, service.group_name_of(row))


@router.delete(LB)
def delete_load_balancer(request: Request, subscription: str, group: str, name: str) -> Response:
    deleted = container(request).loadbalancers.delete(subscription, group, name)
    return Response(status_code=200 if deleted else 204)


@router.get(RG + "/loadbalancers")
def list_load_balancers(request: Request, subscription: str, group: str) -> Json:
    service = container(request).loadbalancers
    rows = service.list(subscription, group)
    group_name = service.group_name_of(rows[0]) if rows else group
    return {"value": [load_balancer_view(row, group_name) for row in rows]}


@router.get(LB + "/probes")
def list_probes(request: Request, subscription: str, group: str, name: str) -> Json:
    service = container(request).loadbalancers
    row = service.get(subscription, group, name)
    return {"value": load_balancer_view(row, service.group_name_of(row))["properties"]["probes"]}


@router.get(LB + "/probes/{probe}")
def get_probe(request: Request, subscription: str, group: str, name: str, probe: str) -> Json:
    service = container(request).loadbalancers
    row = service.get(subscription, group, name)
    found = find_probe(row.document, probe)
    if found is None:
        raise ArmError(
            404, "ResourceNotFound", f"The probe '{probe}' of load balancer '{row.name}' was not found."
        )
    lb_id = load_balancer_id_of(row.subscription, service.group_name_of(row), row.name)
    return probe_view(lb_id, found, row.document["properties"].get("loadBalancingRules"))
