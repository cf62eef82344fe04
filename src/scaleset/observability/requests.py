"""An ASGI middleware that times each API request and binds the log context of what it concerns.

It sits inside `CaseInsensitivePaths` (added to the app before it), so it passes on the very scope the
router fills in: after the call, `scope["route"]` is the route that served the request, whose template
(`/subscriptions/{subscription}/…/virtualmachinescalesets/{name}`) labels the latency, keeping the number
of series bounded whatever names clients use.
"""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scaleset.observability.logs import log_context
from scaleset.observability.metrics import Metrics

# What an ARM path names, read case-insensitively as ARM does: the subscription, then optionally the group,
# the scale set and the instance, or a long-running operation.
_RESOURCE = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)"
    r"(?:/resourcegroups/(?P<group>[^/]+)"
    r"(?:/providers/microsoft\.compute/virtualmachinescalesets/(?P<set>[^/]+)"
    r"(?:/virtualmachines/(?P<instance>[^/]+))?)?)?"
    r"(?:/providers/microsoft\.compute/locations/[^/]+/operations/(?P<operation>[^/]+))?",
    re.IGNORECASE,
)


def context_of_path(path: str) -> dict[str, str]:
    """The log-context fields an ARM path names.

    >>> context_of_path("/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/"
    ...                 "virtualMachineScaleSets/web/virtualMachines/3")
    {'subscription': 's1', 'group': 'rg', 'set': 'web', 'instance': '3'}
    """
    match = _RESOURCE.match(path)
    if match is None:
        return {}
    return {name: value for name, value in match.groupdict().items() if value is not None}


def route_template(scope: Scope) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class RequestObservation:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes before the response starts is a server error
        started = time.perf_counter()

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        fields: dict[str, Any] = context_of_path(scope["path"])
        try:
            with log_context(**fields):
                await self.app(scope, receive, send_and_see)
        finally:
            self.metrics.observe_request(
                scope["method"], route_template(scope), status, time.perf_counter() - started
            )
