"""ARM paths are case-insensitive in their fixed parts (`resourceGroups` = `resourcegroups`), while
resource names keep the case the client sent. Routes are written in lower case; this middleware finds the
route template a request path fits, ignoring case, and rewrites only the template's literal segments.

Templates with more literal segments are tried first, so `.../{name}/instanceView` is read as the
instance-view route and not as a POST action named 'instanceView'.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

_PARAM = re.compile(r"^\{[^}]+\}$")


class _Template:
    def __init__(self, path: str) -> None:
        self.segments = path.strip("/").split("/")
        self.literals = sum(1 for s in self.segments if not _PARAM.match(s))

    def rewrite(self, segments: list[str]) -> list[str] | None:
        if len(segments) != len(self.segments):
            return None
        rewritten: list[str] = []
        for mine, theirs in zip(self.segments, segments, strict=True):
            if _PARAM.match(mine):
                rewritten.append(theirs)
            elif mine.lower() == theirs.lower():
                rewritten.append(mine)
            else:
                return None
        return rewritten


class CaseInsensitivePaths:
    def __init__(self, app: ASGIApp, templates: Iterable[str]) -> None:
        self.app = app
        unique = {t for t in templates if t.startswith("/subscriptions/")}
        self.templates = sorted((_Template(t) for t in unique), key=lambda t: -t.literals)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].lower().startswith("/subscriptions/"):
            segments = scope["path"].strip("/").split("/")
            for template in self.templates:
                rewritten = template.rewrite(segments)
                if rewritten is not None:
                    path = "/" + "/".join(rewritten)
                    if path != scope["path"]:
                        scope = dict(scope, path=path, raw_path=path.encode())
                    break
        await self.app(scope, receive, send)
