"""A small blob store that checks SAS-like tokens, for tests about expired credentials (M-13).

A real HTTP server on 127.0.0.1 (a thread of the test process) serving files at
`/<container>/<blob>?sv=…&sp=r&se=<ISO 8601 expiry>&sig=<HMAC>` with the semantics of an Azure Storage
service SAS, as far as a download cares:

- a valid, unexpired token for this very blob → 200 and the content;
- a token whose expiry has passed, or whose signature does not match (tampered with, made for another
  blob, signed with another key) → 403 `AuthenticationFailed`, with Azure's reason phrase, the
  `x-ms-error-code` header and the XML error body with its `AuthenticationErrorDetail`;
- no token at all → 404 `ResourceNotFound` (a private container does not say what it holds);
- a valid token for a blob that is not there → 404 `BlobNotFound`.

Time is the server's own: real UTC time plus an offset the test moves forward with `advance()`, so a
token can expire between two steps of a test without the test sleeping (what a storage account's clock
does to a token over weeks, in one call).

    with BlobServer({"container/setup.sh": b"#!/bin/sh\\n"}) as blobs:
        uri = blobs.sas_uri("container/setup.sh", valid_for=timedelta(hours=1))
        blobs.advance(timedelta(hours=2))   # `uri` now answers 403 AuthenticationFailed
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

ACCOUNT = "scalesettest"
SERVICE_VERSION = "2022-11-02"
AUTHENTICATION_FAILED = "AuthenticationFailed"
# Azure Storage sends its error message as the HTTP reason phrase too.
AUTHENTICATION_MESSAGE = (
    "Server failed to authenticate the request. Make sure the value of Authorization header is formed "
    "correctly including the signature."
)
_EXPIRY_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_HTTP_DATE = "%a, %d %b %Y %H:%M:%S GMT"


@dataclass(frozen=True)
class Served:
    """One request as the server answered it."""

    path: str
    status: int
    error_code: str | None  # x-ms-error-code, None on success
    signature: str | None  # the `sig` the request carried


class BlobServer:
    def __init__(self, blobs: Mapping[str, bytes]) -> None:
        self._blobs = {name.strip("/"): content for name, content in blobs.items()}
        self._key = secrets.token_bytes(32)
        self._offset = timedelta(0)
        self._lock = threading.Lock()
        self._served: list[Served] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="blob-server", daemon=True)

    # ------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> BlobServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # ----------------------------------------------------------------------------------------- time
    def now(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> None:
        """Move the server's clock forward: tokens that expire within `delta` are expired now."""
        with self._lock:
            self._offset += delta

    # --------------------------------------------------------------------------------------- tokens
    def sas_uri(self, blob: str, valid_for: timedelta) -> str:
        """A read-only URI for `blob`, valid for `valid_for` from the server's now."""
        expiry = (self.now() + valid_for).strftime(_EXPIRY_FORMAT)
        query = {"sv": SERVICE_VERSION, "sp": "r", "se": expiry, "sig": self.signature(blob, "r", expiry)}
        return f"{self.endpoint}/{blob.strip('/')}?{urllib.parse.urlencode(query)}"

    def signature(self, blob: str, permissions: str, expiry: str) -> str:
        """HMAC-SHA256 over the fields the token grants, base64: a service SAS's signature in spirit."""
        to_sign = f"{permissions}\n{expiry}\n/blob/{ACCOUNT}/{blob.strip('/')}\n{SERVICE_VERSION}"
        digest = hmac.new(self._key, to_sign.encode(), hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    # ------------------------------------------------------------------------------------- requests
    @property
    def served(self) -> list[Served]:
        with self._lock:
            return list(self._served)

    def answer(self, target: str) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for a GET of `target` (path and query)."""
        parts = urllib.parse.urlsplit(target)
        blob = urllib.parse.unquote(parts.path).strip("/")
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        signature = query.get("sig")
        status, headers, body = self._decide(blob, query)
        with self._lock:
            self._served.append(Served(parts.path, status, headers.get("x-ms-error-code"), signature))
        return status, headers, body

    def _decide(self, blob: str, query: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        now = self.now()
        if "sig" not in query:
            return _error(404, "ResourceNotFound", "The specified resource does not exist.", None, now)
        permissions, expiry = query.get("sp", ""), query.get("se", "")
        expected = self.signature(blob, permissions, expiry)
        if not hmac.compare_digest(expected.encode(), query["sig"].encode()) or "r" not in permissions:
            detail = (
                f"Signature did not match. String to sign used was {permissions}\n{expiry}\n"
                f"/blob/{ACCOUNT}/{blob}\n{SERVICE_VERSION}"
            )
            return _error(403, AUTHENTICATION_FAILED, AUTHENTICATION_MESSAGE, detail, now)
        try:
            expires = datetime.strptime(expiry, _EXPIRY_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            return _error(403, AUTHENTICATION_FAILED, AUTHENTICATION_MESSAGE, f"se={expiry!r}", now)
        if now >= expires:
            detail = (
                "Signature not valid in the specified time frame: "
                f"Expiry [{expires.strftime(_HTTP_DATE)}] - Current [{now.strftime(_HTTP_DATE)}]"
            )
            return _error(403, AUTHENTICATION_FAILED, AUTHENTICATION_MESSAGE, detail, now)
        content = self._blobs.get(blob)
        if content is None:
            return _error(404, "BlobNotFound", "The specified blob does not exist.", None, now)
        headers = {
            "Content-Type": "application/octet-stream",
            "x-ms-version": SERVICE_VERSION,
            "x-ms-blob-type": "BlockBlob",
        }
        return 200, headers, content


def _error(
    status: int, code: str, message: str, detail: str | None, now: datetime
) -> tuple[int, dict[str, str], bytes]:
    request_id = uuid.uuid4()
    text = f"{message}\nRequestId:{request_id}\nTime:{now.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"
    extra = f"<AuthenticationErrorDetail>{_xml(detail)}</AuthenticationErrorDetail>" if detail else ""
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{_xml(text)}</Message>{extra}</Error>"
    ).encode()
    headers = {
        "Content-Type": "application/xml",
        "x-ms-error-code": code,
        "x-ms-request-id": str(request_id),
        "x-ms-version": SERVICE_VERSION,
    }
    return status, headers, body


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _handler_for(blobs: BlobServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            status, headers, body = blobs.answer(self.path)
            reason = AUTHENTICATION_MESSAGE if status == 403 else None
            self.send_response(status, reason)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reads `served`; stderr stays quiet

    return Handler
