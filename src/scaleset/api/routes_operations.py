"""The status resource behind every long-running operation's `Azure-AsyncOperation` and `Location`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from scaleset.api.deps import container, require_access
from scaleset.api.lro import lro_headers
from scaleset.api.views import operation_view
from scaleset.services.operations import get_operation

router = APIRouter(dependencies=[Depends(require_access)])


@router.get(
    "/subscriptions/{subscription}/providers/microsoft.compute/locations/{location}/operations/{operation_id}"
)
def get_operation_status(request: Request, subscription: str, location: str, operation_id: str) -> Response:
    with container(request).db.read() as session:
        operation = get_operation(session, subscription, operation_id)
        view = operation_view(operation)
        headers = lro_headers(request, operation)
        failed_status = int((operation.payload or {}).get("httpStatus", 500))
    if request.query_params.get("monitor", "").lower() != "true":
        return JSONResponse(view, headers={"Retry-After": "1"} if headers else None)
    # The Location form: 202 while running, then the operation's own outcome.
    if headers:
        return Response(status_code=202, headers={"Location": str(request.url), "Retry-After": "1"})
    if view["status"] == "Failed":
        return JSONResponse(status_code=failed_status, content={"error": view.get("error")})
    return Response(status_code=200)
