"""Long-running-operation responses as ARM sends them (azure-api.md §3).

While an operation runs, the response carries `Azure-AsyncOperation` (the status resource), `Location`
(the same with `monitor=true`) and `Retry-After`. An operation that finished inside the request (a tags-only
PUT, a delete of an empty group) answers like a synchronous call, which every ARM client also accepts.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from scaleset.store.tables import Operation

DEFAULT_API_VERSION = "2026-04-01"


def operation_url(request: Request, operation: Operation) -> str:
    base = str(request.base_url).rstrip("/")
    return (
        f"{base}/subscriptions/{operation.subscription}/providers/Microsoft.Compute/locations/"
        f"{operation.location}/operations/{operation.id}"
    )


def lro_headers(request: Request, operation: Operation) -> dict[str, str]:
    if operation.status != "InProgress":
        return {}
    api_version = request.query_params.get("api-version", DEFAULT_API_VERSION)
    url = operation_url(request, operation)
    return {
        "Azure-AsyncOperation": f"{url}?api-version={api_version}",
        "Location": f"{url}?monitor=true&api-version={api_version}",
        "Retry-After": "1",
    }


def accepted(request: Request, operation: Operation, done_status: int = 200) -> Response:
    """A POST or DELETE: 202 with the polling headers while running, `done_status` once finished."""
    headers = lro_headers(request, operation)
    if headers:
        return Response(status_code=202, headers=headers)
    return Response(status_code=done_status)


def resource_response(request: Request, operation: Operation, body: Any, created: bool) -> JSONResponse:
    """A PUT or PATCH: the resource itself, 201 when it was created, with polling headers if running."""
    return JSONResponse(
        status_code=201 if created else 200, content=body, headers=lro_headers(request, operation)
    )
