"""Update-domain walks and update-domain manual upgrades: scaleset's own endpoints (M-5, M-17).

Azure has no such API, so these paths use names Azure's scale-set API does not (docs/update-domain-walks.md):

- `POST …/virtualMachineScaleSets/{name}/upgradeDomainWalk`: every update domain in order, health-gated;
- `POST …/virtualMachineScaleSets/{name}/updateDomains/{n}/manualUpgrade`: one domain's instances onto
  the latest model;
- `GET …/virtualMachineScaleSets/{name}/updateDomains`: the domains that hold instances;
- `GET …/virtualMachineScaleSets/{name}/rollingUpgrades/latest/batches[?operationId=]`: the newest run
  (any kind, not only walks) — or the run a start's operation waits for — with its status, counts and
  batches, each batch with its update domain, zone and members' states.

The POSTs are long-running operations answered like Azure's (202 + `Azure-AsyncOperation` + `Location`).
This router is included before the scale-set routes, whose `POST …/{name}/{action}` would take
`upgradeDomainWalk` for an unknown Azure action.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from scaleset.api.deps import container, require_access
from scaleset.api.lro import accepted
from scaleset.services.walks import WalkService

router = APIRouter(dependencies=[Depends(require_access)])
SET = (
    "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.compute"
    "/virtualmachinescalesets/{name}"
)


def _walks(request: Request) -> WalkService:
    c = container(request)
    return WalkService(c.db, c.clock, c.scalesets, c.executor.wake)


@router.post(SET + "/upgradedomainwalk")
def start_walk(request: Request, subscription: str, group: str, name: str) -> Response:
    return accepted(request, _walks(request).start_walk(subscription, group, name))


@router.get(SET + "/updatedomains")
def list_update_domains(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    domains = _walks(request).list_update_domains(subscription, group, name)
    return {"value": [domain.view() for domain in domains]}


@router.post(SET + "/updatedomains/{update_domain}/manualupgrade")
def upgrade_update_domain(
    request: Request, subscription: str, group: str, name: str, update_domain: str
) -> Response:
    operation = _walks(request).upgrade_update_domain(subscription, group, name, update_domain)
    return accepted(request, operation)


@router.get(SET + "/rollingupgrades/latest/batches")
def run_batches(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    """The newest run's batches, or with `?operationId=` those of the run that operation waits for."""
    operation_id = request.query_params.get("operationId")
    return _walks(request).run_batches(subscription, group, name, operation_id)
