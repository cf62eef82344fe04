"""Every error leaves the API in ARM's envelope, whatever raised it."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scaleset.domain.errors import ArmError

log = logging.getLogger("scaleset.api")


def error_response(error: ArmError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=error.status, content={"error": error.to_body()}, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ArmError)
    async def arm_error(_request: Request, error: ArmError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            return error_response(ArmError(404, "NotFound", f"No API serves the path '{request.url.path}'."))
        if error.status_code == 405:
            return error_response(
                ArmError(
                    405,
                    "MethodNotAllowed",
                    f"The method {request.method} is not allowed on '{request.url.path}'.",
                )
            )
        return error_response(ArmError(error.status_code, "BadRequest", str(error.detail)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        target = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return error_response(
            ArmError(400, "InvalidParameter", str(first.get("msg", "Invalid request.")), target)
        )

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(
            ArmError(500, "InternalServerError", "The server met an unexpected error; it is logged.")
        )
