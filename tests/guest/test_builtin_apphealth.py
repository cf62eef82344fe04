"""The built-in Application Health handler: its pure rules, then the real package run the agent's way.

The pure parts (settings, classifying answers, the state machine on a fake clock, substatuses) are
imported from the package's own `bin/apphealth.py` by path. The end-to-end tests lay out a handler
directory as the guest agent does (spec/extension-protocol.md §1), run `bin/applicationhealth-shim
<verb>` from it and watch `status/<seq>.status` while a small HTTP server on a loopback address of its
own plays the application. SCALESET_APPHEALTH_TIME_SCALE=100 makes a 5 s interval 0.05 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import scaleset.guest.builtin as builtin
from tests.guest.handler_harness import (
    WAIT_SECONDS,
    HandlerDir,
    LoopbackServer,
    QuietHandler,
    kill_leftovers,
    load_program,
    processes_under,
    save_pem,
    self_signed_certificate,
    serve_in_thread,
)

HANDLER_NAME = "Microsoft.ManagedServices.ApplicationHealthLinux"
TIME_SCALE = 100.0

# Both versions ship 2.0.0's bin/apphealth.py; imported by path.
ah = load_program(
    builtin.BUILTIN_DIR / "ApplicationHealthLinux-2.0.0" / "bin" / "apphealth.py", "apphealth_2_0_0"
)
HEALTHY, UNHEALTHY, UNKNOWN, INITIALIZING = ah.HEALTHY, ah.UNHEALTHY, ah.UNKNOWN, ah.INITIALIZING


# --------------------------------------------------------------------------------------------------
# The packages


def package(version: str) -> builtin.BuiltinPackage:
    (found,) = [
        p for p in builtin.builtin_packages() if p.type == "ApplicationHealthLinux" and p.version == version
    ]
    return found


def assembled(version: str, tmp_path: Path) -> Path:
    return package(version).assemble(tmp_path / f"ApplicationHealthLinux-{version}")


def test_both_versions_ship_the_same_program_and_differ_in_their_manifest(tmp_path: Path) -> None:
    one = assembled("1.0.0", tmp_path)
    two = assembled("2.0.0", tmp_path)
    assert (one / "bin" / "apphealth.py").read_bytes() == (two / "bin" / "apphealth.py").read_bytes()
    assert (one / "bin" / "applicationhealth-shim").read_bytes() == (
        two / "bin" / "applicationhealth-shim"
    ).read_bytes()
    assert ah.package_version(str(one)) == "1.0.0" and not ah.rich_states("1.0.0")
    assert ah.package_version(str(two)) == "2.0.0" and ah.rich_states("2.0.0")


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
def test_handler_manifest_runs_the_shim_for_every_verb(version: str, tmp_path: Path) -> None:
    package = assembled(version, tmp_path)
    manifest = json.loads((package / "HandlerManifest.json").read_text())
    assert isinstance(manifest, list) and len(manifest) == 1
    commands = manifest[0]["handlerManifest"]
    for verb in ("install", "uninstall", "update", "enable", "disable"):
        assert commands[f"{verb}Command"] == f"bin/applicationhealth-shim {verb}"
    assert commands["updateMode"] == "UpdateWithInstall"
    assert os.access(package / "bin" / "applicationhealth-shim", os.X_OK)


def test_builtin_packages_lists_every_shipped_package(tmp_path: Path) -> None:
    found = {(p.publisher, p.type, p.version): p for p in builtin.builtin_packages()}
    assert set(found) == {
        ("Microsoft.ManagedServices", "ApplicationHealthLinux", "1.0.0"),
        ("Microsoft.ManagedServices", "ApplicationHealthLinux", "2.0.0"),
        ("Microsoft.Azure.Extensions", "CustomScript", "2.1.0"),
    }
    for package in found.values():
        assert package.path.name == f"{package.type}-{package.version}"
        complete = package.assemble(tmp_path / package.path.name)
        assert (complete / "HandlerManifest.json").is_file()
        assert not list(complete.rglob("__pycache__")) and not (complete / builtin.BASED_ON).exists()
    assert found["Microsoft.ManagedServices", "ApplicationHealthLinux", "2.0.0"].handler_name == HANDLER_NAME


def test_read_package_refuses_a_directory_named_unlike_its_manifest(tmp_path: Path) -> None:
    package = tmp_path / "ApplicationHealthLinux-9.9.9"
    shutil.copytree(builtin.BUILTIN_DIR / "ApplicationHealthLinux-2.0.0", package)
    with pytest.raises(ValueError, match=r"name it ApplicationHealthLinux-2\.0\.0"):
        builtin.read_package(package)


# --------------------------------------------------------------------------------------------------
# Settings


def http_settings(**overrides: Any) -> dict[str, Any]:
    return {"protocol": "http", "port": 8080, "requestPath": "/health", **overrides}


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        ({"intervalInSeconds": 5}, "interval_seconds", 5),
        ({"intervalInSeconds": 60}, "interval_seconds", 60),
        ({"numberOfProbes": 1}, "number_of_probes", 1),
        ({"numberOfProbes": 24}, "number_of_probes", 24),
        ({"gracePeriod": 5}, "grace_period_seconds", 5),
        ({"gracePeriod": 14400}, "grace_period_seconds", 14400),
        ({"port": 1}, "port", 1),
        ({"port": 65535}, "port", 65535),
        ({"intervalInSeconds": 60, "numberOfProbes": 4}, "number_of_probes", 4),  # 240 s: the limit
        ({"intervalInSeconds": 10, "numberOfProbes": 24}, "number_of_probes", 24),  # 240 s again
        ({"vmWatchSettings": {"enabled": False}}, "protocol", "http"),
        ({"requestPath": "health"}, "request_path", "/health"),
    ],
)
def test_settings_at_every_boundary_are_accepted(
    overrides: dict[str, Any], field: str, expected: object
) -> None:
    assert getattr(ah.validate_settings(http_settings(**overrides)), field) == expected


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (http_settings(intervalInSeconds=4), "intervalInSeconds must be from 5 to 60, not 4"),
        (http_settings(intervalInSeconds=61), "intervalInSeconds must be from 5 to 60, not 61"),
        (http_settings(numberOfProbes=0), "numberOfProbes must be from 1 to 24, not 0"),
        (http_settings(numberOfProbes=25), "numberOfProbes must be from 1 to 24, not 25"),
        (http_settings(gracePeriod=4), "gracePeriod must be from 5 to 14400, not 4"),
        (http_settings(gracePeriod=14401), "gracePeriod must be from 5 to 14400, not 14401"),
        (http_settings(port=0), "port must be from 1 to 65535, not 0"),
        (http_settings(port=65536), "port must be from 1 to 65535, not 65536"),
        (http_settings(intervalInSeconds=60, numberOfProbes=5), "must not exceed 240 seconds"),
        (http_settings(intervalInSeconds=11, numberOfProbes=22), "11 \\* 22 = 242"),
        (http_settings(port="8080"), 'port must be an integer from 1 to 65535, not "8080"'),
        (http_settings(intervalInSeconds=5.0), "intervalInSeconds must be an integer"),
        (http_settings(numberOfProbes=True), "numberOfProbes must be an integer"),
        (http_settings(protocol="HTTP"), "protocol must be 'tcp', 'http' or 'https', not \"HTTP\""),
        (http_settings(protocol="udp"), "protocol must be"),
        ({"protocol": "tcp"}, "port is required when protocol is 'tcp'"),
        (
            {"protocol": "tcp", "port": 22, "requestPath": "/x"},
            "requestPath is not allowed when protocol is 'tcp'",
        ),
        ({"protocol": "http", "port": 80}, "requestPath is required when protocol is 'http'"),
        ({"protocol": "https"}, "requestPath is required when protocol is 'https'"),
        (http_settings(requestPath=5), "requestPath must be a string"),
        (http_settings(interval=5), "unknown setting 'interval'"),
        (http_settings(vmWatchSettings=True), "vmWatchSettings must be a JSON object"),
        ([], "publicSettings must be a JSON object"),
    ],
)
def test_invalid_settings_are_refused_with_the_reason(settings: object, message: str) -> None:
    with pytest.raises(ah.SettingsError, match=message):
        ah.validate_settings(settings)


def test_protected_settings_must_be_empty() -> None:
    assert ah.validate_settings(http_settings(), {}).protocol == "http"
    with pytest.raises(ah.SettingsError, match="protectedSettings must be empty"):
        ah.validate_settings(http_settings(), {"port": 80})


def test_defaults() -> None:
    default = ah.validate_settings(None)
    assert (default.protocol, default.port, default.interval_seconds, default.number_of_probes) == (
        ah.DEFAULT,
        None,
        5,
        1,
    )
    assert default.grace_period_seconds == 5
    assert ah.validate_settings({"protocol": "http", "requestPath": "/"}).port == 80
    assert ah.validate_settings({"protocol": "https", "requestPath": "/"}).port == 443
    probes = ah.validate_settings(http_settings(intervalInSeconds=7, numberOfProbes=3))
    assert probes.grace_period_seconds == 21  # interval × probes
    assert ah.validate_settings({"protocol": "tcp", "port": 22, "requestPath": ""}).request_path == ""


# --------------------------------------------------------------------------------------------------
# Classifying answers


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, HEALTHY), (201, UNHEALTHY), (302, UNHEALTHY), (500, UNHEALTHY), (None, UNHEALTHY)],
)
def test_binary_http_is_healthy_only_on_200_whatever_the_body(status: int | None, expected: str) -> None:
    assert ah.classify_http(status, b"not json", rich=False).state == expected


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b'{"ApplicationHealthState": "Healthy"}', HEALTHY),
        (299, b'{"ApplicationHealthState": "Unhealthy"}', UNHEALTHY),
        (200, b'{"applicationhealthstate": "Healthy"}', HEALTHY),  # the key in any case
        (200, b'{"ApplicationHealthState": "healthy"}', UNKNOWN),  # the value exactly
        (200, b'{"ApplicationHealthState": "Initializing"}', UNKNOWN),
        (200, b'{"state": "Healthy"}', UNKNOWN),
        (200, b"Healthy", UNKNOWN),
        (200, b'["Healthy"]', UNKNOWN),
        (200, b"\xff\xfe", UNKNOWN),
        (302, b'{"ApplicationHealthState": "Healthy"}', UNKNOWN),
        (500, b'{"ApplicationHealthState": "Healthy"}', UNKNOWN),
        (None, b"", UNKNOWN),
    ],
)
def test_rich_http_needs_2xx_and_an_exact_state(status: int | None, body: bytes, expected: str) -> None:
    assert ah.classify_http(status, body, rich=True).state == expected


def test_rich_http_carries_custom_metrics() -> None:
    body = (
        b'{"ApplicationHealthState": "Healthy", "customMetrics": "{\\"rollingUpgrade\\": {\\"phase\\": 1}}"}'
    )
    result = ah.classify_http(200, body, rich=True)
    assert (result.state, result.custom_metrics) == (HEALTHY, '{"rollingUpgrade": {"phase": 1}}')
    assert ah.custom_metrics_valid(result.custom_metrics)
    assert not ah.custom_metrics_valid("{}") and not ah.custom_metrics_valid("[1]")
    assert not ah.custom_metrics_valid("nope")
    assert ah.classify_http(200, b'{"ApplicationHealthState": "Healthy"}', rich=True).custom_metrics is None


def test_tcp_is_healthy_iff_the_handshake_succeeds() -> None:
    assert ah.classify_tcp(True).state == HEALTHY
    assert ah.classify_tcp(False).state == UNHEALTHY


# --------------------------------------------------------------------------------------------------
# The state machine, on a fake clock


def replay(settings: dict[str, Any], rich: bool, probes: list[tuple[float, str]]) -> list[str]:
    """Feed (time, probe result) pairs to a tracker started at t=0; return the reported states."""
    tracker = ah.HealthTracker(ah.validate_settings(settings), rich, started_at=0.0)
    return [tracker.observe(state, now) for now, state in probes]


def every_5s(*states: str) -> list[tuple[float, str]]:
    return [(5.0 * index, state) for index, state in enumerate(states)]


H, U, K = HEALTHY, UNHEALTHY, UNKNOWN


def test_rich_reports_initializing_until_number_of_probes_identical_results() -> None:
    settings = http_settings(numberOfProbes=3)  # grace 15 s by default
    assert replay(settings, True, every_5s(H, H, H)) == [INITIALIZING, INITIALIZING, H]
    assert replay(settings, True, [*every_5s(K, H, H), (14.0, H)]) == [INITIALIZING] * 3 + [H]


def test_rich_with_one_probe_commits_the_first_good_result() -> None:
    assert replay(http_settings(), True, every_5s(H)) == [H]
    assert replay(http_settings(), True, every_5s(U)) == [U]  # Unhealthy is an answer, for http


def test_rich_http_grace_expiry_forces_unknown_then_changes_need_number_of_probes() -> None:
    settings = http_settings(numberOfProbes=3)  # grace 15 s
    states = replay(settings, True, every_5s(K, K, K, H, H, H, H))
    assert states == [INITIALIZING, INITIALIZING, INITIALIZING, K, K, K, H]


def test_rich_grace_expiry_wins_over_a_good_probe_at_that_moment() -> None:
    settings = http_settings(numberOfProbes=3, gracePeriod=12)
    assert replay(settings, True, every_5s(U, U, H, H)) == [INITIALIZING, INITIALIZING, INITIALIZING, K]


def test_rich_tcp_leaves_grace_early_only_when_healthy_and_expires_to_unhealthy() -> None:
    tcp = {"protocol": "tcp", "port": 22, "gracePeriod": 10}
    assert replay(tcp, True, every_5s(U, U, U, H)) == [INITIALIZING, INITIALIZING, U, H]
    assert replay(tcp, True, every_5s(H)) == [H]
    assert K not in replay(tcp, True, every_5s(U, U, U, U))


def test_rich_default_probe_is_healthy_after_number_of_probes() -> None:
    assert replay({"numberOfProbes": 2}, True, every_5s(H, H, H)) == [INITIALIZING, H, H]


def test_rich_changes_after_grace_need_number_of_probes_consecutive_results() -> None:
    settings = http_settings(numberOfProbes=3)
    states = replay(settings, True, every_5s(H, H, H, U, U, H, U, U, U, K, K, K))
    assert states == [INITIALIZING, INITIALIZING, H, H, H, H, H, H, U, U, U, K]


def test_rich_never_goes_back_to_initializing() -> None:
    settings = http_settings(numberOfProbes=2, gracePeriod=600)
    states = replay(settings, True, every_5s(H, H, K, U, K, U))
    assert states[2:] == [H, H, H, H] and INITIALIZING not in states[1:]


def test_binary_has_no_initializing_nor_grace_and_the_same_commit_rule() -> None:
    settings = http_settings(numberOfProbes=2)
    assert replay(settings, False, every_5s(U, H, H, U, H, U, U)) == [U, U, H, H, H, H, U]
    assert replay(settings, False, [(0.0, H), (100_000.0, H)]) == [H, H]


# --------------------------------------------------------------------------------------------------
# Status documents


def substatus(name: str, status: str, message: str) -> dict[str, Any]:
    return {
        "name": name,
        "status": status,
        "code": 0,
        "formattedMessage": {"lang": "en-US", "message": message},
    }


@pytest.mark.parametrize(
    ("state", "app_health", "state_status"),
    [
        (HEALTHY, ("success", "Application found to be healthy"), "success"),
        (INITIALIZING, ("success", "Application found to be healthy"), "transitioning"),
        (UNHEALTHY, ("error", "Application found to be unhealthy"), "success"),
        (UNKNOWN, ("error", "Application found to be unhealthy"), "error"),
    ],
)
def test_substatuses_per_state(state: str, app_health: tuple[str, str], state_status: str) -> None:
    assert ah.health_substatuses(state) == [
        substatus("AppHealthStatus", *app_health),
        substatus("ApplicationHealthState", state_status, state),
    ]


def test_custom_metrics_come_third_and_say_whether_they_are_valid() -> None:
    good = ah.health_substatuses(HEALTHY, '{"a": 1}')
    assert [s["name"] for s in good] == ["AppHealthStatus", "ApplicationHealthState", "CustomMetrics"]
    assert good[2] == substatus("CustomMetrics", "success", '{"a": 1}')
    assert ah.health_substatuses(HEALTHY, "{}")[2] == substatus("CustomMetrics", "error", "{}")


def test_status_document_shape() -> None:
    [document] = ah.health_status(HEALTHY, moment=0)
    assert document["version"] == 1.0 and document["timestampUTC"] == "1970-01-01T00:00:00Z"
    status = document["status"]
    assert (status["status"], status["operation"], status["code"]) == ("success", "enable", 0)
    assert status["formattedMessage"] == {
        "lang": "en-US",
        "message": "Successfully polling for application health",
    }
    assert status["configurationAppliedTime"] == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("value", "scale"), [(None, 1.0), ("100", 100.0), ("0.5", 0.5), ("0", 1.0), ("x", 1.0)]
)
def test_time_scale(monkeypatch: pytest.MonkeyPatch, value: str | None, scale: float) -> None:
    if value is None:
        monkeypatch.delenv(ah.TIME_SCALE_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(ah.TIME_SCALE_VARIABLE, value)
    assert ah.time_scale() == scale


# --------------------------------------------------------------------------------------------------
# End to end: the real package in a handler directory laid out as the agent does


def random_loopback() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


class App(LoopbackServer):
    """The instance's application: GET /health answers according to `mode`."""

    mode = "healthy"

    def __init__(self) -> None:
        super().__init__((random_loopback(), 0), AppHandler)
        self.requests: list[tuple[str, str]] = []

    @property
    def address(self) -> str:
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class AppHandler(QuietHandler):
    server: App

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("User-Agent", "")))
        mode = self.server.mode
        with contextlib.suppress(OSError):
            if mode == "slow":  # far beyond the probe timeout of 30 s / TIME_SCALE
                time.sleep(1.5)
                self.answer(200, b'{"ApplicationHealthState": "Healthy"}', "application/json")
            elif mode == "redirect":
                self.send_response(302)
                self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                status, body = {
                    "healthy": (200, b'{"ApplicationHealthState": "Healthy"}'),
                    "unhealthy": (200, b'{"ApplicationHealthState": "Unhealthy"}'),
                    "error": (500, b'{"ApplicationHealthState": "Healthy"}'),
                    "wrong-body": (200, b"all good"),
                }[mode]
                self.answer(status, body, "application/json")


@pytest.fixture
def app() -> Iterator[App]:
    with serve_in_thread(App()) as server:
        yield server


def test_https_probe_does_not_verify_the_certificate(tmp_path: Path) -> None:
    server = App()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert_path, key_path = tmp_path / "app.crt", tmp_path / "app.key"
    save_pem(*self_signed_certificate("not-the-probed-name"), cert_path, key_path)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with serve_in_thread(server):
        settings = ah.validate_settings({"protocol": "https", "port": server.port, "requestPath": "/health"})
        assert ah.probe_http(settings, server.address, True, 5.0).state == HEALTHY
        server.mode = "unhealthy"
        assert ah.probe_http(settings, server.address, True, 5.0).state == UNHEALTHY
        plain = ah.validate_settings({"protocol": "http", "port": server.port, "requestPath": "/health"})
        assert ah.probe_http(plain, server.address, True, 5.0).state == UNKNOWN  # http to a TLS port
    assert {agent for _, agent in server.requests} == {"ApplicationHealthExtension/1.0"}


class Handler(HandlerDir):
    """One installed handler directory, `<root>/var/lib/waagent/<HandlerName>-<version>`."""

    handler_name = HANDLER_NAME
    shim = "applicationhealth-shim"

    def __init__(self, root: Path, version: str, address: str) -> None:
        self.address = address
        super().__init__(root, version)

    def install_package(self, directory: Path) -> None:
        package(self.version).assemble(directory)

    def write_settings(
        self,
        seq: int,
        public: dict[str, Any] | None,
        protected: str | None = None,
        thumbprint: str | None = None,
    ) -> None:
        if public is None:  # what the agent writes for an extension without settings
            (self.dir / "config" / f"{seq}.settings").write_text("")
        else:
            super().write_settings(seq, public, protected, thumbprint)

    def command_environment(self, seq: int) -> dict[str, str]:
        return {
            **super().command_environment(seq),
            "SCALESET_INSTANCE_ADDRESS": self.address,
            "SCALESET_APPHEALTH_TIME_SCALE": str(TIME_SCALE),
        }

    def enable(self, seq: int = 0, public: dict[str, Any] | None = None) -> None:
        self.write_settings(seq, public)
        super().enable(seq)

    def health(self, seq: int = 0) -> str | None:
        """The ApplicationHealthState substatus's message, None before the first probe."""
        status = self.status(seq)
        for entry in (status or {}).get("substatus") or []:
            if entry["name"] == "ApplicationHealthState":
                return str(entry["formattedMessage"]["message"])
        return None

    def wait_for_health(self, expected: str, seq: int = 0, seen: list[str] | None = None) -> dict[str, Any]:
        """Poll until the reported state is `expected`; every distinct state on the way goes to `seen`."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            state = self.health(seq)
            if seen is not None and state is not None and (not seen or seen[-1] != state):
                seen.append(state)
            if state == expected:
                status = self.status(seq)
                if status is not None:
                    return status
            time.sleep(0.005)
        raise AssertionError(f"never reported {expected}; last {self.health(seq)}; log:\n{self.log()}")

    def daemon_pid(self) -> int:
        return int(json.loads((self.dir / "apphealth" / "daemon.json").read_text())["pid"])

    def log(self) -> str:
        path = self.log_folder / "apphealth.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def make_handler(tmp_path: Path) -> Iterator[Callable[..., Handler]]:
    handlers: list[Handler] = []

    def make(version: str = "2.0.0", address: str = "127.0.0.1", name: str = "instance") -> Handler:
        handler = Handler(tmp_path / name, version, address)
        handler.install()
        handlers.append(handler)
        return handler

    yield make
    # Runs even when the test failed: no probe may outlive its test.
    leftovers = []
    for handler in handlers:
        if handler.dir.exists():
            handler.run("disable")
        leftovers += processes_under(handler.dir)
    kill_leftovers(leftovers)


def substatus_map(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {s["name"]: (s["status"], s["formattedMessage"]["message"]) for s in status["substatus"]}


def test_rich_http_moves_through_initializing_healthy_unhealthy_and_unknown(
    app: App, make_handler: Callable[..., Handler]
) -> None:
    handler = make_handler(address=app.address)
    app.mode = "wrong-body"  # Unknown never ends the grace period (200 s = 2 s here)
    handler.enable(0, http_settings(port=app.port, numberOfProbes=2, gracePeriod=200))

    status = handler.wait_for_health(INITIALIZING)
    assert (status["status"], status["operation"]) == ("success", "enable")
    assert status["formattedMessage"]["message"] == "Successfully polling for application health"
    assert substatus_map(status) == {
        "AppHealthStatus": ("success", "Application found to be healthy"),
        "ApplicationHealthState": ("transitioning", "Initializing"),
    }
    assert [s["name"] for s in status["substatus"]] == ["AppHealthStatus", "ApplicationHealthState"]

    app.mode = "healthy"
    status = handler.wait_for_health(HEALTHY)
    assert substatus_map(status)["AppHealthStatus"] == ("success", "Application found to be healthy")
    assert substatus_map(status)["ApplicationHealthState"] == ("success", "Healthy")

    app.mode = "unhealthy"
    status = handler.wait_for_health(UNHEALTHY)
    assert substatus_map(status) == {
        "AppHealthStatus": ("error", "Application found to be unhealthy"),
        "ApplicationHealthState": ("success", "Unhealthy"),
    }

    app.mode = "slow"
    status = handler.wait_for_health(UNKNOWN)
    assert substatus_map(status)["ApplicationHealthState"] == ("error", "Unknown")

    for mode in ("wrong-body", "error", "redirect"):
        app.mode = "healthy"
        handler.wait_for_health(HEALTHY)
        app.mode = mode
        seen: list[str] = []
        handler.wait_for_health(UNKNOWN, seen=seen)
        assert seen[-1] == UNKNOWN and INITIALIZING not in seen

    assert {agent for _, agent in app.requests} == {"ApplicationHealthExtension/1.0"}
    assert {path for path, _ in app.requests} == {"/health"}  # the redirect was not followed


def test_rich_http_grace_expiry_turns_initializing_into_unknown(
    app: App, make_handler: Callable[..., Handler]
) -> None:
    handler = make_handler(address=app.address)
    app.mode = "wrong-body"
    handler.enable(0, http_settings(port=app.port, gracePeriod=100))  # 1 s here
    seen: list[str] = []
    handler.wait_for_health(UNKNOWN, seen=seen)
    assert seen == [INITIALIZING, UNKNOWN]


def test_rich_tcp_grace_expiry_turns_initializing_into_unhealthy_then_healthy_once_listening(
    make_handler: Callable[..., Handler],
) -> None:
    address = random_loopback()
    with socket.socket() as listener:
        listener.bind((address, 0))  # bound but not listening: connections are refused
        handler = make_handler(address=address)
        handler.enable(0, {"protocol": "tcp", "port": listener.getsockname()[1], "gracePeriod": 100})
        seen: list[str] = []
        handler.wait_for_health(UNHEALTHY, seen=seen)
        assert seen == [INITIALIZING, UNHEALTHY]
        listener.listen()
        handler.wait_for_health(HEALTHY)


def test_binary_http_is_healthy_on_200_and_never_initializing_or_unknown(
    app: App, make_handler: Callable[..., Handler]
) -> None:
    handler = make_handler(version="1.0.0", address=app.address)
    app.mode = "wrong-body"  # a 200 is all binary states look at
    handler.enable(0, http_settings(port=app.port))
    seen: list[str] = []
    handler.wait_for_health(HEALTHY, seen=seen)
    assert seen == [HEALTHY]
    for mode in ("error", "slow"):
        app.mode = mode
        handler.wait_for_health(UNHEALTHY, seen=seen)
        app.mode = "healthy"
        handler.wait_for_health(HEALTHY, seen=seen)
    assert INITIALIZING not in seen and UNKNOWN not in seen


def test_no_settings_means_always_healthy(make_handler: Callable[..., Handler]) -> None:
    handler = make_handler()
    handler.enable(0, None)  # the agent writes an empty 0.settings for an extension without settings
    handler.wait_for_health(HEALTHY)


def test_invalid_settings_fail_enable_with_an_error_status(make_handler: Callable[..., Handler]) -> None:
    handler = make_handler()
    handler.write_settings(0, http_settings(intervalInSeconds=4))
    done = handler.run("enable", 0)
    assert done.returncode == 3
    status = handler.status(0)
    assert status is not None and status["status"] == "error"
    assert (
        status["formattedMessage"]["message"]
        == "Invalid settings: intervalInSeconds must be from 5 to 60, not 4"
    )
    assert not processes_under(handler.dir)


def test_enable_is_idempotent_per_seq_and_a_new_seq_replaces_the_daemon(
    app: App, make_handler: Callable[..., Handler]
) -> None:
    handler = make_handler(address=app.address)
    handler.enable(0, http_settings(port=app.port))
    handler.wait_for_health(HEALTHY, seq=0)
    first = handler.daemon_pid()
    handler.enable(0, http_settings(port=app.port))  # the agent re-runs enable after every restart
    assert handler.daemon_pid() == first
    assert [p.pid for p in processes_under(handler.dir)] == [first]

    app.mode = "unhealthy"
    handler.enable(1, http_settings(port=app.port))
    handler.wait_for_health(UNHEALTHY, seq=1)
    second = handler.daemon_pid()
    assert second != first
    assert [p.pid for p in processes_under(handler.dir)] == [second]
    assert (handler.dir / "mrseq").read_text().strip() == "1"
    old_status = (handler.dir / "status" / "0.status").read_text()
    time.sleep(0.2)  # several intervals: the old seq's status is no longer written
    assert (handler.dir / "status" / "0.status").read_text() == old_status


def test_disable_and_uninstall_stop_only_their_own_daemon(
    app: App, make_handler: Callable[..., Handler]
) -> None:
    one = make_handler(address=app.address, name="one")
    two = make_handler(address=app.address, name="two")
    for handler in (one, two):
        handler.enable(0, http_settings(port=app.port))
        handler.wait_for_health(HEALTHY)
    assert one.run("disable").returncode == 0
    assert not processes_under(one.dir)
    assert [p.pid for p in processes_under(two.dir)] == [two.daemon_pid()]  # another instance's probe

    assert one.run("enable", 0).returncode == 0  # enabled again after a disable: probing resumes
    one.wait_for_health(HEALTHY)
    assert processes_under(one.dir)
    assert one.run("uninstall").returncode == 0
    assert not processes_under(one.dir) and not (one.dir / "apphealth").exists()
    assert two.run("update").returncode == 0
    assert not processes_under(two.dir)


def test_daemon_ends_when_its_handler_directory_is_removed(make_handler: Callable[..., Handler]) -> None:
    handler = make_handler()
    handler.enable(0, None)
    handler.wait_for_health(HEALTHY)
    daemon = psutil.Process(handler.daemon_pid())
    shutil.rmtree(handler.dir)  # what the agent does to a handler dropped from the goal state
    deadline = time.monotonic() + WAIT_SECONDS
    while processes_under(handler.dir) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not processes_under(handler.dir), daemon
