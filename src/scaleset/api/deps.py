"""Request plumbing shared by the routes: the container, the JSON body, authorisation."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import Request

from scaleset.domain.errors import ArmError
from scaleset.services.tokens import role_allows

if TYPE_CHECKING:
    from scaleset.bootstrap import Container


def container(request: Request) -> Container:
    found: Container = request.app.state.container
    return found


async def json_body(request: Request) -> Any:
    """The parsed body; an empty body is None. Malformed JSON is the client's error, not a 500."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ArmError(
            400,
            "InvalidRequestContent",
            f"The request content was invalid and could not be deserialized: {error}.",
        ) from None


def authorize(request: Request, needed: str | None = None) -> str:
    """The caller's role, after checking it may do this: GET/HEAD need reader, other methods contributor."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ArmError(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or is not a bearer token.",
        )
    role = container(request).tokens.role_of(token.strip())
    if role is None:
        raise ArmError(401, "AuthenticationFailed", "Authentication failed. The access token is not valid.")
    if needed is None:
        needed = "reader" if request.method in ("GET", "HEAD") else "contributor"
    if not role_allows(role, needed):
        raise ArmError(
            403,
            "AuthorizationFailed",
            f"The client with role '{role}' does not have authorization to perform "
            f"'{request.method} {request.url.path}' (needs '{needed}').",
        )
    return role


def require_access(request: Request) -> None:
    authorize(request)


def require_admin(request: Request) -> None:
    authorize(request, "admin")
