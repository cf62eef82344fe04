"""Automatic OS upgrades: the image versions blocked on a set, lifting a block, approving a deferred upgrade
(docs/automatic-os-upgrades.md).

`approveRollingUpgrade` is Azure's (azure-api.md §1.1); `blockedImageVersions` and
`clearBlockedImageVersions` are scaleset's own, on the set's path so that the same roles apply: reading
needs reader, clearing and approving need contributor.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from scaleset.api.deps import container, json_body, require_access
from scaleset.api.lro import accepted
from scaleset.api.views import iso
from scaleset.domain.errors import invalid
from scaleset.store.tables import BlockedImageVersion

router = APIRouter(dependencies=[Depends(require_access)])
SET = (
    "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.compute"
    "/virtualmachinescalesets/{name}"
)


def blocked_view(row: BlockedImageVersion) -> dict[str, Any]:
    return {
        "imageVersion": row.image_version,
        "rollingUpgradeId": row.run_id,
        "reason": row.reason,
        "blockedTime": iso(row.blocked_at),
        "clearedTime": iso(row.cleared_at),
    }


@router.get(SET + "/blockedimageversions")
def list_blocked_image_versions(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    """Every block the set has had; those with `clearedTime` null are in force."""
    rows = container(request).platform.list_blocked(subscription, group, name)
    return {"value": [blocked_view(row) for row in rows]}


@router.post(SET + "/clearblockedimageversions")
def clear_blocked_image_versions(
    request: Request, subscription: str, group: str, name: str, body: Any = Depends(json_body)
) -> JSONResponse:
    """Lift the blocks in force (all, or `{"versions": [...]}`); answers with the blocks lifted."""
    versions = _versions(body)
    rows = container(request).platform.clear_blocked(subscription, group, name, versions)
    return JSONResponse({"value": [blocked_view(row) for row in rows]})


@router.post(SET + "/approverollingupgrade")
def approve_rolling_upgrade(request: Request, subscription: str, group: str, name: str) -> Response:
    """Start the automatic OS upgrade that `osRollingUpgradeDeferral` holds back (202, as Azure)."""
    operation = container(request).platform.approve(subscription, group, name)
    return accepted(request, operation, done_status=202)


def _versions(body: Any) -> list[str] | None:
    if body is None:
        return None
    versions = body.get("versions") if isinstance(body, dict) else None
    if not isinstance(body, dict) or set(body) - {"versions"}:
        raise invalid("body", 'The body is empty or {"versions": ["1.2.0", ...]}.')
    if versions is None:
        return None
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise invalid("versions", "'versions' must be a list of image version strings.")
    return versions
