"""Load-balancer probes (`scaleset.providers.probing`) against real servers on the loopback interface."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scaleset.cli.tls import ensure_certificate
from scaleset.providers.base import HealthProbe
from scaleset.providers.probing import probe_address

HOST = "127.0.0.1"


class QuietHandler(BaseHTTPRequestHandler):
    """Answers every GET with `status`; counts the paths it was asked for."""

    status = 200
    delay = 0.0
    paths: list[str]

    def do_GET(self) -> None:
        self.paths.append(self.path)
        time.sleep(self.delay)
        body = b'{"ApplicationHealthState": "Healthy"}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping must not hold up the shutdown

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a probe that gave up closes the connection under a slow handler: expected here


@contextmanager
def http_server(
    status: int = 200, *, delay: float = 0.0, wrap: Callable[[socket.socket], socket.socket] | None = None
) -> Iterator[tuple[int, list[str]]]:
    """A server on 127.0.0.1 (port chosen by the kernel) in a thread: yields (port, paths asked for)."""
    paths: list[str] = []
    handler = type("Handler", (QuietHandler,), {"status": status, "delay": delay, "paths": paths})
    server = QuietServer((HOST, 0), handler)
    if wrap is not None:
        server.socket = wrap(server.socket)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A port nothing listens on: bound, then released (the kernel does not hand it out again at once)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def test_http_200_is_healthy_and_asks_for_the_request_path() -> None:
    with http_server(200) as (port, paths):
        assert probe_address(HOST, HealthProbe("Http", port, "/health")) is True
        assert probe_address(HOST, HealthProbe("http", port, "ready")) is True  # any case, path made absolute
        assert probe_address(HOST, HealthProbe("Http", port)) is True

    assert paths == ["/health", "/ready", "/"]


@pytest.mark.parametrize("status", [500, 503, 404, 204])
def test_http_answer_other_than_200_is_unhealthy(status: int) -> None:
    with http_server(status) as (port, _):
        assert probe_address(HOST, HealthProbe("Http", port, "/health")) is False


def test_http_redirect_is_not_followed_and_is_unhealthy() -> None:
    with http_server(302) as (port, paths):
        assert probe_address(HOST, HealthProbe("Http", port, "/health")) is False
    assert paths == ["/health"]


def test_http_to_a_closed_port_is_unhealthy() -> None:
    assert probe_address(HOST, HealthProbe("Http", closed_port(), "/health", timeout_seconds=1.0)) is False


def test_tcp_handshake_is_healthy_on_an_open_port_only() -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]

        assert probe_address(HOST, HealthProbe("Tcp", port)) is True

    assert probe_address(HOST, HealthProbe("Tcp", port, timeout_seconds=1.0)) is False


def test_a_server_slower_than_the_timeout_is_unhealthy() -> None:
    with http_server(200, delay=1.0) as (port, paths):
        started = time.monotonic()

        healthy = probe_address(HOST, HealthProbe("Http", port, "/health", timeout_seconds=0.3))

        assert healthy is False
        assert time.monotonic() - started < 0.9
        assert paths == ["/health"]  # it was asked, and did not answer in time


def test_https_probe_does_not_check_the_certificate(tmp_path: Path) -> None:
    cert, key = ensure_certificate(tmp_path, HOST)  # self-signed: no client trusts it
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def wrap(sock: socket.socket) -> socket.socket:
        return context.wrap_socket(sock, server_side=True)

    with http_server(200, wrap=wrap) as (port, paths):
        assert probe_address(HOST, HealthProbe("Https", port, "/health")) is True
        # The same server spoken to in plain HTTP does not answer a probe.
        assert probe_address(HOST, HealthProbe("Http", port, "/health", timeout_seconds=1.0)) is False

    assert paths == ["/health"]
