"""The dashboard (M-6, M-25): static files at `/dashboard`, served without authentication.

The page holds no data of its own. The user pastes an API token, the browser keeps it in sessionStorage,
and every data call goes to the ARM API with `Authorization: Bearer`, so the page can do exactly what the
token may do and the server keeps no session. A strict Content-Security-Policy allows only our own
scripts, styles and API: no inline script, no other origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from scaleset.domain.errors import ArmError

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).resolve().parent.parent / "dashboard"
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The files change with the package; a browser must not keep an old app.js next to a new page.
    "Cache-Control": "no-cache",
}


def _asset_names() -> dict[str, Path]:
    """The files the dashboard may serve: what the package ships, nothing a path could reach beyond."""
    return {p.name: p for p in STATIC.iterdir() if p.is_file() and p.suffix in _MEDIA_TYPES}


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/dashboard")
def dashboard() -> Response:
    return _file(STATIC / "index.html")


@router.get("/dashboard/")
def dashboard_slash() -> Response:
    return RedirectResponse("/dashboard", status_code=308)


@router.get("/dashboard/{name}")
def dashboard_asset(name: str) -> Response:
    found = _asset_names().get(name)
    if found is None:
        raise ArmError(404, "NotFound", f"The dashboard has no file '{name}'.")
    return _file(found)
