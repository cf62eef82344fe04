"""Automatic extension upgrades: the extension versions that failed on a set or a VM, and clearing them
(docs/automatic-extension-upgrades.md).

scaleset's own endpoints (Azure keeps this memory to itself), on the resource's path so that the same roles
apply: reading needs reader, clearing needs contributor. A VM's are kept on its hidden set
(services/vms.py) and shown on the VM's path.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from scaleset.api.deps import container, json_body, require_access
from scaleset.api.views import iso
from scaleset.domain.errors import invalid
from scaleset.store.tables import ExtensionUpgradeFailure

router = APIRouter(dependencies=[Depends(require_access)])
GROUP = "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.compute"
SET = GROUP + "/virtualmachinescalesets/{name}"
VM = GROUP + "/virtualmachines/{name}"


def failure_view(row: ExtensionUpgradeFailure) -> dict[str, Any]:
    """One failure; `blocked` true means no automatic retry is left, `retryTime` when one is due."""
    return {
        "extensionName": row.extension_name,
        "extensionType": row.extension_key,
        "version": row.version,
        "kind": row.kind,
        "blocked": row.kind == "failed" and row.retry_at is None,
        "rollingUpgradeId": row.run_id,
        "reason": row.reason,
        "failedTime": iso(row.failed_at),
        "retryTime": iso(row.retry_at),
        "clearedTime": iso(row.cleared_at),
    }


@router.get(SET + "/blockedextensionversions")
def list_set_failures(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    """Every failed automatic extension upgrade of the set; those with `clearedTime` null are in force."""
    rows = container(request).extension_platform.list_failures(subscription, group, name)
    return {"value": [failure_view(row) for row in rows]}


@router.get(VM + "/blockedextensionversions")
def list_vm_failures(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    rows = container(request).extension_platform.list_failures(subscription, group, name, vm=True)
    return {"value": [failure_view(row) for row in rows]}


@router.post(SET + "/clearblockedextensionversions")
def clear_set_failures(
    request: Request, subscription: str, group: str, name: str, body: Any = Depends(json_body)
) -> JSONResponse:
    """Forget failed versions (all, or `{"extension": name or publisher.type, "versions": [...]}`); answers
    with what was cleared. The set may start an upgrade to them at once."""
    return _clear(request, subscription, group, name, body, vm=False)


@router.post(VM + "/clearblockedextensionversions")
def clear_vm_failures(
    request: Request, subscription: str, group: str, name: str, body: Any = Depends(json_body)
) -> JSONResponse:
    return _clear(request, subscription, group, name, body, vm=True)


def _clear(request: Request, subscription: str, group: str, name: str, body: Any, vm: bool) -> JSONResponse:
    extension, versions = _selection(body)
    rows = container(request).extension_platform.clear(
        subscription, group, name, extension=extension, versions=versions, vm=vm
    )
    return JSONResponse({"value": [failure_view(row) for row in rows]})


def _selection(body: Any) -> tuple[str | None, list[str] | None]:
    if body is None:
        return None, None
    if not isinstance(body, dict) or set(body) - {"extension", "versions"}:
        raise invalid("body", 'The body is empty or {"extension": "...", "versions": ["1.2.0", ...]}.')
    extension, versions = body.get("extension"), body.get("versions")
    if extension is not None and not isinstance(extension, str):
        raise invalid("extension", "'extension' must be an extension name or publisher.type.")
    if versions is not None and (
        not isinstance(versions, list) or not all(isinstance(v, str) for v in versions)
    ):
        raise invalid("versions", "'versions' must be a list of extension version strings.")
    return extension, versions
