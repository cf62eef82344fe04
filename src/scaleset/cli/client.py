"""A small HTTP client for scaleset's API: Azure paths, ARM errors and long-running operations.

The CLI talks to the server only through this module. It knows three things beyond plain HTTP:
- every Azure path (`/subscriptions/...`) gets `api-version`;
- a non-2xx answer carries ARM's error envelope, which becomes a `CliError`;
- a 201/202 with `Azure-AsyncOperation` is a long-running operation, polled until it ends.
"""

from __future__ import annotations

import os
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

API_VERSION = "2026-04-01"
DEFAULT_ENDPOINT = "http://127.0.0.1:8420"
DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
TOKEN_FILE_NAME = "admin.token"

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
# Statuses a resource body reports while a PUT/PATCH is still being applied.
BUSY_PROVISIONING_STATES = frozenset({"creating", "updating", "deleting", "accepted", "inprogress"})


class CliError(Exception):
    """An error the CLI reports as `ERROR (code) message` and exit code 1."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        target: str | None = None,
        status: int | None = None,
        details: list[Any] | None = None,
    ) -> None:
        super().__init__(f"({code}) {message}")
        self.code = code
        self.message = message
        self.target = target
        self.status = status
        self.details = details or []


class CaCertError(ValueError):
    """The CA certificate given with `--ca-cert` cannot be used (a usage error, not an API one)."""


@dataclass(frozen=True)
class ClientConfig:
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None
    subscription: str = DEFAULT_SUBSCRIPTION
    ca_cert: str | None = None
    timeout: float = 60.0


def data_dir(environ: dict[str, str] | None = None) -> Path:
    """Where `scaleset serve` keeps its state: `$SCALESET_DATA_DIR` or `~/.scaleset`."""
    env = os.environ if environ is None else environ
    configured = env.get("SCALESET_DATA_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".scaleset"


def resolve_token(explicit: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The token to send: the flag/env value, else the admin token the server wrote in its data dir.

    Reading `admin.token` makes the CLI work with no set-up on the server's own machine.
    """
    if explicit:
        return explicit.strip()
    try:
        token = (data_dir(environ) / TOKEN_FILE_NAME).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def segment(name: str) -> str:
    """One URL path segment, with everything but unreserved characters escaped."""
    return quote(name, safe="")


@dataclass
class LroPolicy:
    """How long-running operations are waited for."""

    default_delay: float = 1.0  # when the server sends no Retry-After
    max_delay: float = 10.0  # a cap on what Retry-After may ask for
    timeout: float = 3600.0  # give up waiting (the operation goes on on the server)
    sleep: Callable[[float], None] = field(default=time.sleep)
    clock: Callable[[], float] = field(default=time.monotonic)


@dataclass(frozen=True)
class Started:
    """A long-running operation just started: its status URL (None when it finished inside the
    request), the first answer's body, and how long the server asked us to wait before looking."""

    status_url: str | None
    body: Any
    delay: float


def is_terminal(status: str) -> bool:
    return status.lower() in TERMINAL_STATUSES


class ApiClient:
    """Requests against one scaleset endpoint, as one subscription, with one token."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        lro: LroPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        debug: bool = False,
    ) -> None:
        self.config = config
        self.lro = lro or LroPolicy()
        self.debug = debug
        headers = {"Accept": "application/json", "User-Agent": "scaleset-cli"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self._http = httpx.Client(
            base_url=config.endpoint.rstrip("/"),
            headers=headers,
            timeout=config.timeout,
            verify=_verify(config.ca_cert),
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- paths ---------------------------------------------------------------------------------

    @property
    def subscription_path(self) -> str:
        return f"/subscriptions/{segment(self.config.subscription)}"

    def group_path(self, group: str) -> str:
        return f"{self.subscription_path}/resourcegroups/{segment(group)}"

    def compute_path(self, group: str, *parts: str) -> str:
        """`/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/<parts...>`."""
        tail = "/".join(segment(part) for part in parts)
        base = f"{self.subscription_path}/resourceGroups/{segment(group)}/providers/Microsoft.Compute"
        return f"{base}/{tail}" if tail else base

    def vmss_path(self, group: str, name: str, *parts: str) -> str:
        return self.compute_path(group, "virtualMachineScaleSets", name, *parts)

    def location_path(self, location: str, *parts: str) -> str:
        tail = "/".join(segment(part) for part in parts)
        base = f"{self.subscription_path}/providers/Microsoft.Compute/locations/{segment(location)}"
        return f"{base}/{tail}" if tail else base

    # --- requests ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One request; a path is relative to the endpoint, an absolute URL (a link the server
        returned) is re-based onto it. Raises `CliError` for any answer >= 400."""
        url, query = self._target(path, params)
        extra: dict[str, Any] = {}
        if body is not None:
            extra["json"] = body
        if content is not None:
            extra["content"] = content
        try:
            response = self._http.request(
                method,
                url,
                params=query,
                headers=headers,
                timeout=self.config.timeout if timeout is None else timeout,
                **extra,
            )
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        self._log(f"{method} {response.request.url} -> {response.status_code}")
        if response.status_code >= 400:
            error = error_from_response(response)
            if response.status_code == 401 and not self.config.token:
                error.message += (
                    " (no token given: pass --token, set SCALESET_TOKEN, or run where the server's "
                    f"{TOKEN_FILE_NAME} is readable)"
                )
            raise error
        return response

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return json_body(self.request("GET", path, params=params))

    def get_pages(self, path: str, params: dict[str, str] | None = None) -> list[Any]:
        """All items of a paged list, following `nextLink`."""
        return list(self.iter_pages(path, params))

    def iter_pages(self, path: str, params: dict[str, str] | None = None) -> Iterator[Any]:
        body = self.get(path, params)
        seen: set[str] = set()
        while True:
            if isinstance(body, list):  # a bare array (the image lists)
                yield from body
                return
            if not isinstance(body, dict):
                return
            yield from body.get("value") or []
            next_link = body.get("nextLink")
            if not next_link or next_link in seen:
                return
            seen.add(next_link)
            body = self.get(next_link)

    def begin(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        wait: bool = True,
        params: dict[str, str] | None = None,
    ) -> Any:
        """Start a long-running operation and (unless `wait` is false) see it to its end.

        Returns the resource for PUT/PATCH (fetched again once the operation succeeded), the final
        body otherwise (often nothing). A Failed or Canceled operation raises `CliError`.
        """
        response = self.request(method, path, params=params, body=body)
        initial = json_body(response)
        if not wait:
            return initial
        async_url = response.headers.get("Azure-AsyncOperation")
        location = response.headers.get("Location")
        delay = self._retry_after(response)
        is_write = method.upper() in ("PUT", "PATCH")
        if async_url:
            self._poll_async_operation(async_url, delay)
        elif location and response.status_code == 202:
            self._poll_location(location, delay)
        elif is_write and _busy(initial):
            return self._poll_resource(path, params, delay)
        else:
            return initial
        return self.get(path, params) if is_write else None

    def start(
        self, method: str, path: str, body: Any = None, *, params: dict[str, str] | None = None
    ) -> Started:
        """Start a long-running operation and return at once with what is needed to follow it."""
        response = self.request(method, path, params=params, body=body)
        return Started(
            status_url=response.headers.get("Azure-AsyncOperation"),
            body=json_body(response),
            delay=self._retry_after(response),
        )

    def operation_status(self, url: str) -> dict[str, Any]:
        """One look at an operation's status resource (`{"name", "status", "error"?}`)."""
        body = self.get(url)
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise CliError("BadResponse", f"the operation status at {url} has no 'status'")
        return body

    # --- long-running operations ---------------------------------------------------------------

    def _poll_async_operation(self, url: str, delay: float) -> dict[str, Any]:
        deadline = self.lro.clock() + self.lro.timeout
        while True:
            self.lro.sleep(delay)
            response = self.request("GET", url)
            body = json_body(response)
            status = body.get("status") if isinstance(body, dict) else None
            if not isinstance(status, str):
                raise CliError("BadResponse", f"the operation status at {url} has no 'status'")
            if status.lower() in TERMINAL_STATUSES:
                assert isinstance(body, dict)
                _raise_if_unsuccessful(status, body)
                return body
            delay = self._retry_after(response)
            self._check_deadline(deadline, url, status)

    def _poll_location(self, url: str, delay: float) -> None:
        deadline = self.lro.clock() + self.lro.timeout
        while True:
            self.lro.sleep(delay)
            response = self.request("GET", url)
            if response.status_code != 202:
                return
            delay = self._retry_after(response)
            self._check_deadline(deadline, url, "InProgress")

    def _poll_resource(self, path: str, params: dict[str, str] | None, delay: float) -> Any:
        deadline = self.lro.clock() + self.lro.timeout
        while True:
            self.lro.sleep(delay)
            body = self.get(path, params)
            state = _provisioning_state(body)
            if state is not None and state.lower() == "failed":
                raise CliError("ProvisioningFailed", f"provisioning of {path} failed", status=None)
            if not _busy(body):
                return body
            self._check_deadline(deadline, path, state or "InProgress")

    def _check_deadline(self, deadline: float, url: str, status: str) -> None:
        if self.lro.clock() > deadline:
            raise CliError(
                "OperationTimedOut",
                f"still {status} after {self.lro.timeout:.0f}s; the operation goes on on the server ({url})",
            )

    def _retry_after(self, response: httpx.Response) -> float:
        raw = response.headers.get("Retry-After")
        try:
            delay = float(raw) if raw is not None else self.lro.default_delay
        except ValueError:  # the HTTP-date form: not worth parsing for a local server
            delay = self.lro.default_delay
        return min(max(delay, 0.0), self.lro.max_delay)

    # --- helpers -------------------------------------------------------------------------------

    def _target(self, path: str, params: dict[str, str] | None) -> tuple[str, dict[str, str] | None]:
        if path.startswith(("http://", "https://")):
            # A link from the server (nextLink, Azure-AsyncOperation): keep its path and query but
            # send it to the configured endpoint, so the token never goes anywhere else.
            endpoint = httpx.URL(self.config.endpoint)
            return str(endpoint.copy_with(raw_path=httpx.URL(path).raw_path)), None
        query = dict(params or {})
        if path.lower().startswith("/subscriptions"):
            query.setdefault("api-version", API_VERSION)
        return path, query or None

    def _transport_error(self, exc: httpx.TransportError) -> CliError:
        hint = ""
        if self.config.endpoint.startswith("https") and "CERTIFICATE" in str(exc).upper():
            hint = " (for the server's self-signed certificate pass --ca-cert or set SCALESET_CA_CERT)"
        return CliError("ConnectionError", f"cannot reach {self.config.endpoint}: {exc}{hint}")

    def _log(self, line: str) -> None:
        if self.debug:
            print(f"DEBUG {line}", file=sys.stderr)


def error_from_response(response: httpx.Response) -> CliError:
    """ARM's `{"error": {"code", "message", "target", "details"}}` → `CliError`."""
    status = response.status_code
    body = json_body(response, strict=False)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and (error.get("code") or error.get("message")):
        target = error.get("target")
        details = error.get("details")
        return CliError(
            str(error.get("code") or f"HTTP{status}"),
            str(error.get("message") or ""),
            target=str(target) if target else None,
            status=status,
            details=details if isinstance(details, list) else None,
        )
    if isinstance(body, dict) and "detail" in body:  # a framework-level error, not ARM's shape
        return CliError(f"HTTP{status}", str(body["detail"]), status=status)
    text = response.text.strip()[:500] or response.reason_phrase
    return CliError(f"HTTP{status}", text, status=status)


def _raise_if_unsuccessful(status: str, body: dict[str, Any]) -> None:
    if status.lower() == "succeeded":
        return
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    assert isinstance(error, dict)
    code = str(
        error.get("code") or ("OperationCanceled" if status.lower() == "canceled" else "OperationFailed")
    )
    message = str(error.get("message") or f"the operation ended {status}")
    target = error.get("target")
    raise CliError(code, message, target=str(target) if target else None)


def json_body(response: httpx.Response, *, strict: bool = True) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        if not strict:
            return None
        raise CliError("BadResponse", f"the server answered non-JSON ({response.status_code})") from exc


def _provisioning_state(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    properties = body.get("properties")
    state = properties.get("provisioningState") if isinstance(properties, dict) else None
    return state if isinstance(state, str) else None


def _busy(body: Any) -> bool:
    state = _provisioning_state(body)
    return state is not None and state.lower() in BUSY_PROVISIONING_STATES


def _verify(ca_cert: str | None) -> ssl.SSLContext | bool:
    if not ca_cert:
        return True
    try:
        return ssl.create_default_context(cafile=ca_cert)
    except (OSError, ssl.SSLError) as exc:
        raise CaCertError(f"cannot use CA certificate {ca_cert!r}: {exc}") from exc
