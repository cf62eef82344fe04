#!/usr/bin/env python3
"""Application Health handler (Microsoft.ManagedServices.ApplicationHealthLinux) for scaleset instances.

One program serves both packages: typeHandlerVersion 1.0 (binary states: Healthy/Unhealthy) and 2.0
(rich states: Initializing/Healthy/Unhealthy/Unknown). It reads the package's own version from the
`manifest.xml` beside `bin/` (the file real handler packages carry to name themselves), so the two
packages hold byte-identical copies and only their manifests differ.

It runs inside an instance with the system python3 and the standard library only (it cannot import
scaleset), started by the guest agent through `bin/applicationhealth-shim <verb>` with the handler
directory as its working directory (spec/extension-protocol.md §1.3, §3):

    install     create the handler's state directory and log folder
    enable      validate config/<seq>.settings; invalid settings write an `error` status and exit 3.
                Otherwise stop a probing daemon of another seq, record `mrseq`, write a placeholder
                `transitioning` status if none exists, start the daemon detached and exit 0. The same
                seq with its daemon still running is a no-op (the agent re-runs enable at every start).
    disable     stop the daemon
    update      stop the daemon
    uninstall   stop the daemon and remove the state directory
    daemon SEQ  (internal) the probing loop: one probe per interval, then status/<seq>.status rewritten
                atomically

Every path comes from HandlerEnvironment.json (in the working directory, else the package root); the
daemon's pid lives in `<handler dir>/apphealth/daemon.json` with its start time, so a stop only ever
signals that very process, never every probe on the host (one host runs many instances). Probes target
the instance's own address, `SCALESET_INSTANCE_ADDRESS`, falling back to `localhost`.

`SCALESET_APPHEALTH_TIME_SCALE` (a float > 0, default 1; for tests) divides every interval, grace
period and probe timeout: with 100, `intervalInSeconds: 5` probes every 0.05 s and a probe times out
after 0.3 s. Settings are still validated in unscaled seconds.

The pure parts (settings validation, classifying a probe's answer, the state machine on an injected
clock, the status document) are plain functions and one small class, importable by path for tests.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import http.client
import json
import math
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

HANDLER_NAME = "Microsoft.ManagedServices.ApplicationHealthLinux"
TIME_SCALE_VARIABLE = "SCALESET_APPHEALTH_TIME_SCALE"
ADDRESS_VARIABLE = "SCALESET_INSTANCE_ADDRESS"
SEQUENCE_VARIABLE = "ConfigSequenceNumber"
USER_AGENT = "ApplicationHealthExtension/1.0"
STATUS_MESSAGE = "Successfully polling for application health"

EXIT_FAILED = 3
EXIT_INSTALL_FAILED = 52
ERROR_CODE = 1  # the `code` of an error status this handler writes about itself

PROBE_TIMEOUT_SECONDS = 30.0
# A health answer is a small JSON document; reading more only costs memory.
MAX_BODY_BYTES = 64 * 1024
STOP_TIMEOUT_SECONDS = 5.0

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
UNKNOWN = "Unknown"
INITIALIZING = "Initializing"

TCP = "tcp"
HTTP = "http"
HTTPS = "https"
# No protocol: a probe that always answers Healthy (the extension only reports "the VM is up").
DEFAULT = "default"

PUBLIC_KEYS = (
    "protocol",
    "port",
    "requestPath",
    "intervalInSeconds",
    "numberOfProbes",
    "gracePeriod",
    "vmWatchSettings",
)
INTERVAL_RANGE = (5, 60)
PROBES_RANGE = (1, 24)
GRACE_RANGE = (5, 14400)
PORT_RANGE = (1, 65535)
MAX_SETTLE_SECONDS = 240


class HandlerError(Exception):
    """A failure to report in the status file and as a non-zero exit."""


class SettingsError(HandlerError):
    """Settings the extension refuses; the message says which key and why."""


# --------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class ProbeSettings:
    """Validated settings; `port` is resolved for http(s) (80/443) and None for the default probe."""

    protocol: str
    port: int | None
    request_path: str
    interval_seconds: int
    number_of_probes: int
    grace_period_seconds: int


def _integer_setting(settings: Mapping[str, Any], key: str, bounds: tuple[int, int]) -> int | None:
    value = settings.get(key)
    if value is None:
        return None
    low, high = bounds
    # JSON true is a Python int; a health setting never means it.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{key} must be an integer from {low} to {high}, not {json.dumps(value)}")
    if not low <= value <= high:
        raise SettingsError(f"{key} must be from {low} to {high}, not {value}")
    return value


def validate_settings(public: object, protected: object = None) -> ProbeSettings:
    """Check public and (decrypted) protected settings against §3's rules; raise SettingsError.

    Validated in unscaled seconds whatever SCALESET_APPHEALTH_TIME_SCALE says. gracePeriod is checked
    for both state models but only rich states use it.
    """
    if protected not in (None, {}):
        raise SettingsError("protectedSettings must be empty: this extension takes no protected settings")
    if public is None:
        public = {}
    if not isinstance(public, dict):
        raise SettingsError("publicSettings must be a JSON object")
    unknown = sorted(key for key in public if key not in PUBLIC_KEYS)
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]!r}; the settings are {', '.join(PUBLIC_KEYS)}")
    watch = public.get("vmWatchSettings")
    if watch is not None and not isinstance(watch, dict):
        raise SettingsError("vmWatchSettings must be a JSON object")
    return ProbeSettings(*_probe_target(public), *_probe_timing(public))


def _probe_target(public: Mapping[str, Any]) -> tuple[str, int | None, str]:
    """(protocol, port, request path): tcp needs a port and no path, http(s) a path and maybe a port."""
    protocol = public.get("protocol")
    if protocol is None:
        protocol = DEFAULT
    elif protocol not in (TCP, HTTP, HTTPS):
        raise SettingsError(f"protocol must be 'tcp', 'http' or 'https', not {json.dumps(protocol)}")
    port = _integer_setting(public, "port", PORT_RANGE)
    path = public.get("requestPath")
    if path is None:
        path = ""
    if not isinstance(path, str):
        raise SettingsError(f"requestPath must be a string, not {json.dumps(path)}")
    if protocol == TCP:
        if port is None:
            raise SettingsError("port is required when protocol is 'tcp'")
        if path:
            raise SettingsError("requestPath is not allowed when protocol is 'tcp'")
        return protocol, port, path
    if protocol in (HTTP, HTTPS):
        if not path:
            raise SettingsError(f"requestPath is required when protocol is '{protocol}'")
        default_port = 80 if protocol == HTTP else 443
        return protocol, port or default_port, path if path.startswith("/") else "/" + path
    return DEFAULT, None, ""  # the default probe touches no port


def _probe_timing(public: Mapping[str, Any]) -> tuple[int, int, int]:
    """(interval, numberOfProbes, gracePeriod); the grace period defaults to interval × probes."""
    interval = _integer_setting(public, "intervalInSeconds", INTERVAL_RANGE) or 5
    probes = _integer_setting(public, "numberOfProbes", PROBES_RANGE) or 1
    if interval * probes > MAX_SETTLE_SECONDS:
        raise SettingsError(
            f"intervalInSeconds * numberOfProbes must not exceed {MAX_SETTLE_SECONDS} seconds "
            f"(the probe settle time), not {interval} * {probes} = {interval * probes}"
        )
    grace = _integer_setting(public, "gracePeriod", GRACE_RANGE) or interval * probes
    return interval, probes, grace


# --------------------------------------------------------------------------------------------------
# Probe results


@dataclass(frozen=True)
class ProbeResult:
    """One probe's verdict; `custom_metrics` is the CustomMetrics string a rich answer carried."""

    state: str
    custom_metrics: str | None = None
    detail: str = ""


def classify_tcp(connected: bool, detail: str = "") -> ProbeResult:
    """TCP has no Unknown: the handshake either happens or it does not, in both state models."""
    return ProbeResult(HEALTHY if connected else UNHEALTHY, detail=detail)


def _field(document: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """A JSON object's member matched case-insensitively; the last match wins, as a JSON decoder
    assigning members in document order would leave it."""
    found, value = False, None
    for key, member in document.items():
        if key.lower() == name.lower():
            found, value = True, member
    return found, value


def classify_http(status: int | None, body: bytes, rich: bool, detail: str = "") -> ProbeResult:
    """Classify an http(s) answer; `status` None means no answer (refused, timeout, TLS failure).

    Binary: Healthy iff 200, anything else Unhealthy. Rich: a 2xx whose JSON body has
    ApplicationHealthState (key in any case) exactly "Healthy" or "Unhealthy" is that state; any other
    answer is Unknown.
    """
    if not rich:
        return ProbeResult(HEALTHY if status == 200 else UNHEALTHY, detail=detail or f"HTTP {status}")
    if status is None or not 200 <= status <= 299:
        return ProbeResult(UNKNOWN, detail=detail or f"HTTP {status}")
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ProbeResult(UNKNOWN, detail="the body is not JSON")
    if not isinstance(document, dict):
        return ProbeResult(UNKNOWN, detail="the body is not a JSON object")
    has_metrics, metrics = _field(document, "CustomMetrics")
    custom_metrics = None
    if has_metrics and metrics is not None:
        custom_metrics = metrics if isinstance(metrics, str) else json.dumps(metrics)
    _, state = _field(document, "ApplicationHealthState")
    if state not in (HEALTHY, UNHEALTHY):
        return ProbeResult(UNKNOWN, custom_metrics, f"ApplicationHealthState is {json.dumps(state)}")
    return ProbeResult(state, custom_metrics, f"HTTP {status}")


def custom_metrics_valid(metrics: str) -> bool:
    """CustomMetrics must be a string holding a non-empty JSON object."""
    try:
        document = json.loads(metrics)
    except ValueError:
        return False
    return isinstance(document, dict) and bool(document)


# --------------------------------------------------------------------------------------------------
# The state machine


class HealthTracker:
    """Turns probe results into the reported state, on a clock the caller passes in (seconds).

    Rich (2.0) starts in a grace period that reports Initializing until `numberOfProbes` identical
    results in a row, unless that result is the after-grace state (Unknown for http(s), Unhealthy for
    tcp and the default probe: so tcp leaves early only on Healthy). When `gracePeriod` seconds have
    passed first, that probe's result is forced to the after-grace state. Outside the grace period the
    first result commits at once and any change later needs `numberOfProbes` identical results in a row.

    Binary (1.0) has no grace period and no Initializing: only the commit rule.

    Worked example, rich http, numberOfProbes 2, gracePeriod 10, probes every 5 s:
        t=0 Unknown → Initializing;  t=5 Healthy → Initializing;  t=10 Healthy → grace expired, forced
        Unknown;  t=15 Healthy → Unknown (1 of 2);  t=20 Healthy → Healthy.
    """

    def __init__(self, settings: ProbeSettings, rich: bool, started_at: float) -> None:
        self._needed = settings.number_of_probes
        self._grace_ends_at = started_at + settings.grace_period_seconds
        self._after_grace = UNKNOWN if settings.protocol in (HTTP, HTTPS) else UNHEALTHY
        self._in_grace = rich
        self._streak_state: str | None = None
        self._streak = 0
        self._committed: str | None = None

    def observe(self, probed: str, now: float) -> str:
        """Feed one probe result observed at `now`; return the state to report."""
        if self._in_grace and now >= self._grace_ends_at:
            self._in_grace = False
            probed = self._after_grace
            self._committed = None
            self._streak_state, self._streak = None, 0
        if probed == self._streak_state:
            self._streak += 1
        else:
            self._streak_state, self._streak = probed, 1
        if self._in_grace:
            if self._streak < self._needed or probed == self._after_grace:
                return INITIALIZING
            self._in_grace = False
        if self._committed is None or self._streak >= self._needed:
            self._committed = probed
        return self._committed


# --------------------------------------------------------------------------------------------------
# Status documents (spec/extension-protocol.md §1.7)


def utc_timestamp(moment: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _substatus(name: str, status: str, message: str) -> dict[str, Any]:
    return {
        "name": name,
        "status": status,
        "code": 0,
        "formattedMessage": {"lang": "en-US", "message": message},
    }


def health_substatuses(state: str, custom_metrics: str | None = None) -> list[dict[str, Any]]:
    """AppHealthStatus, ApplicationHealthState, then CustomMetrics when the last answer had them."""
    bad = state in (UNHEALTHY, UNKNOWN)
    app_health = _substatus(
        "AppHealthStatus",
        "error" if bad else "success",
        "Application found to be unhealthy" if bad else "Application found to be healthy",
    )
    state_status = {INITIALIZING: "transitioning", UNKNOWN: "error"}.get(state, "success")
    substatuses = [app_health, _substatus("ApplicationHealthState", state_status, state)]
    if custom_metrics is not None:
        valid = custom_metrics_valid(custom_metrics)
        substatuses.append(_substatus("CustomMetrics", "success" if valid else "error", custom_metrics))
    return substatuses


def status_document(
    status: str,
    message: str,
    substatuses: list[dict[str, Any]] | None = None,
    code: int = 0,
    moment: float | None = None,
) -> list[dict[str, Any]]:
    stamp = utc_timestamp(moment)
    return [
        {
            "version": 1.0,
            "timestampUTC": stamp,
            "status": {
                "name": HANDLER_NAME,
                "operation": "enable",
                "configurationAppliedTime": stamp,
                "status": status,
                "code": code,
                "formattedMessage": {"lang": "en-US", "message": message},
                "substatus": substatuses or [],
            },
        }
    ]


def health_status(state: str, custom_metrics: str | None = None, moment: float | None = None) -> list[Any]:
    return status_document(
        "success", STATUS_MESSAGE, health_substatuses(state, custom_metrics), moment=moment
    )


# --------------------------------------------------------------------------------------------------
# Probes (I/O)


def probe_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return classify_tcp(False, f"connect to {host}:{port} failed: {exc}")
    # Close with a reset, as the reference probe does: no TIME_WAIT pile-up at one probe per second.
    with connection, contextlib.suppress(OSError):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return classify_tcp(True, f"connected to {host}:{port}")


def probe_http(settings: ProbeSettings, host: str, rich: bool, timeout: float) -> ProbeResult:
    """GET the request path once: no redirects followed (http.client never does), https unverified."""
    assert settings.port is not None
    connection: http.client.HTTPConnection
    if settings.protocol == HTTPS:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(host, settings.port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, settings.port, timeout=timeout)
    try:
        connection.request("GET", settings.request_path, headers={"User-Agent": USER_AGENT})
        response = connection.getresponse()
        body = response.read(MAX_BODY_BYTES)
    except (OSError, http.client.HTTPException) as exc:
        return classify_http(
            None, b"", rich, f"GET {settings.request_path} failed: {exc or type(exc).__name__}"
        )
    finally:
        connection.close()
    return classify_http(response.status, body, rich)


def make_probe(settings: ProbeSettings, host: str, rich: bool, timeout: float) -> Callable[[], ProbeResult]:
    if settings.protocol == TCP:
        port = settings.port
        assert port is not None
        return lambda: probe_tcp(host, port, timeout)
    if settings.protocol in (HTTP, HTTPS):
        return lambda: probe_http(settings, host, rich, timeout)
    return lambda: ProbeResult(HEALTHY, detail="no protocol: always healthy")


# --------------------------------------------------------------------------------------------------
# The handler's files


@dataclass(frozen=True)
class HandlerEnvironment:
    """The paths HandlerEnvironment.json gives, plus the handler dir it was found in."""

    handler_dir: str
    log_folder: str
    config_folder: str
    status_folder: str

    @property
    def state_dir(self) -> str:
        return os.path.join(self.handler_dir, "apphealth")

    @property
    def daemon_record(self) -> str:
        return os.path.join(self.state_dir, "daemon.json")

    @property
    def mrseq(self) -> str:
        return os.path.join(self.handler_dir, "mrseq")

    @property
    def log_file(self) -> str:
        return os.path.join(self.log_folder, "apphealth.log")

    def settings_file(self, seq: int) -> str:
        return os.path.join(self.config_folder, f"{seq}.settings")

    def status_file(self, seq: int) -> str:
        return os.path.join(self.status_folder, f"{seq}.status")


PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_handler_environment() -> HandlerEnvironment:
    """Read HandlerEnvironment.json from the working directory (the agent's cwd), else the package."""
    for directory in (os.getcwd(), PACKAGE_DIR):
        path = os.path.join(directory, "HandlerEnvironment.json")
        if os.path.isfile(path):
            break
    else:
        raise HandlerError("HandlerEnvironment.json is neither in the working directory nor the package")
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
        if not isinstance(document, list) or len(document) != 1:
            raise HandlerError(f"{path} must be a JSON array of exactly one object")
        folders = document[0]["handlerEnvironment"]
        return HandlerEnvironment(
            handler_dir=os.path.dirname(os.path.abspath(path)),
            log_folder=str(folders["logFolder"]),
            config_folder=str(folders["configFolder"]),
            status_folder=str(folders["statusFolder"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HandlerError(f"cannot read {path}: {exc}") from exc


def package_version(package_dir: str = PACKAGE_DIR) -> str:
    """The package's version, from the `Version` element of its manifest.xml (any XML namespace)."""
    path = os.path.join(package_dir, "manifest.xml")
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as exc:
        raise HandlerError(f"cannot read the package manifest {path}: {exc}") from exc
    for element in root:
        if element.tag.rsplit("}", 1)[-1] == "Version" and element.text and element.text.strip():
            return element.text.strip()
    raise HandlerError(f"the package manifest {path} has no Version")


def rich_states(version: str) -> bool:
    """typeHandlerVersion 1.x has binary states, 2.x and later rich ones."""
    try:
        return int(version.split(".")[0]) >= 2
    except ValueError as exc:
        raise HandlerError(f"the package version {version!r} is not a version number") from exc


def sequence_number(env: HandlerEnvironment) -> int:
    """ConfigSequenceNumber, else the newest *.settings by mtime (as the agent itself falls back), else 0."""
    value = os.environ.get(SEQUENCE_VARIABLE)
    if value is not None and value.strip():
        try:
            return int(value)
        except ValueError as exc:
            raise HandlerError(f"{SEQUENCE_VARIABLE}={value!r} is not a number") from exc
    newest: tuple[float, int] | None = None
    with contextlib.suppress(OSError):
        for name in os.listdir(env.config_folder):
            stem, _, suffix = name.partition(".")
            if suffix == "settings" and stem.isdigit():
                mtime = os.path.getmtime(os.path.join(env.config_folder, name))
                if newest is None or mtime > newest[0]:
                    newest = (mtime, int(stem))
    return 0 if newest is None else newest[1]


def decrypt_protected_settings(env: HandlerEnvironment, data: str, thumbprint: object) -> object:
    """Decrypt base64 PKCS#7 with the certificate two levels above config/, as every handler does."""
    if not isinstance(thumbprint, str) or not thumbprint:
        raise SettingsError("protectedSettings are present but protectedSettingsCertThumbprint is not")
    certificate = os.path.join(env.config_folder, "..", "..", f"{thumbprint}.crt")
    key = os.path.join(env.config_folder, "..", "..", f"{thumbprint}.prv")
    try:
        encrypted = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SettingsError(f"protectedSettings is not base64: {exc}") from exc
    command = ["openssl", "smime", "-inform", "DER", "-decrypt", "-recip", certificate, "-inkey", key]
    try:
        done = subprocess.run(command, input=encrypted, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SettingsError(f"cannot decrypt protectedSettings: {exc}") from exc
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        raise SettingsError(f"cannot decrypt protectedSettings: {' '.join(reason) or done.returncode}")
    try:
        return json.loads(done.stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SettingsError(f"the decrypted protectedSettings are not JSON: {exc}") from exc


def read_settings(env: HandlerEnvironment, seq: int) -> ProbeSettings:
    """Load and validate config/<seq>.settings; an empty file means no settings (the default probe)."""
    path = env.settings_file(seq)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not text.strip():
        return validate_settings(None)
    try:
        handler_settings = json.loads(text)["runtimeSettings"][0]["handlerSettings"]
        public = handler_settings.get("publicSettings")
        protected = handler_settings.get("protectedSettings")
        thumbprint = handler_settings.get("protectedSettingsCertThumbprint")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise SettingsError(f"{path} is not a settings file: {exc}") from exc
    decrypted = decrypt_protected_settings(env, protected, thumbprint) if protected else None
    return validate_settings(public, decrypted)


def write_json_atomically(path: str, document: object) -> None:
    """Through a temporary file and a rename, so the agent never reads half a status file."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(document, file)
    os.replace(temporary, path)


def time_scale() -> float:
    """SCALESET_APPHEALTH_TIME_SCALE; a value that is not a positive number is ignored (scale 1)."""
    try:
        scale = float(os.environ.get(TIME_SCALE_VARIABLE, "1"))
    except ValueError:
        return 1.0
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def log(env: HandlerEnvironment | None, message: str) -> None:
    line = f"{utc_timestamp()} [{os.getpid()}] {message}"
    print(line, file=sys.stderr, flush=True)
    if env is None:
        return
    with contextlib.suppress(OSError):
        os.makedirs(env.log_folder, exist_ok=True)
        with open(env.log_file, "a", encoding="utf-8") as file:
            file.write(line + "\n")


# --------------------------------------------------------------------------------------------------
# The daemon's process record


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if no live process has the pid.

    A zombie counts as gone: it probes nothing, and whoever adopted it reaps it when it gets round to it.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as file:
            stat = file.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


@dataclass(frozen=True)
class DaemonRecord:
    pid: int
    start_time: str
    seq: int

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


def read_daemon_record(env: HandlerEnvironment) -> DaemonRecord | None:
    try:
        with open(env.daemon_record, encoding="utf-8") as file:
            data = json.load(file)
        return DaemonRecord(int(data["pid"]), str(data["startTime"]), int(data["seq"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stop_daemon(env: HandlerEnvironment) -> None:
    """SIGTERM the recorded daemon (only if it is still that very process), SIGKILL after a while."""
    record = read_daemon_record(env)
    if record is not None and record.alive():
        log(env, f"stopping the probing daemon (pid {record.pid}, seq {record.seq})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while record.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if record.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
            while record.alive() and time.monotonic() < deadline + STOP_TIMEOUT_SECONDS:
                time.sleep(0.01)
    with contextlib.suppress(FileNotFoundError):
        os.remove(env.daemon_record)


@contextlib.contextmanager
def handler_lock(env: HandlerEnvironment) -> Iterator[None]:
    """Serialize the handler's own commands (the agent runs one at a time; this makes sure)."""
    os.makedirs(env.state_dir, exist_ok=True)
    with open(os.path.join(env.state_dir, "lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_mrseq(env: HandlerEnvironment) -> int | None:
    try:
        with open(env.mrseq, encoding="utf-8") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# Commands


def command_install(env: HandlerEnvironment) -> int:
    os.makedirs(env.state_dir, exist_ok=True)
    os.makedirs(env.log_folder, exist_ok=True)
    log(env, "installed")
    return 0


def command_enable(env: HandlerEnvironment) -> int:
    seq = sequence_number(env)
    with handler_lock(env):
        record = read_daemon_record(env)
        if record is not None and record.seq == seq and record.alive():
            log(env, f"enable: the daemon for seq {seq} already runs (pid {record.pid})")
            return 0
        stop_daemon(env)
        try:
            settings = read_settings(env, seq)
            rich = rich_states(package_version())
        except HandlerError as exc:
            message = f"Invalid settings: {exc}" if isinstance(exc, SettingsError) else str(exc)
            log(env, f"enable failed: {message}")
            write_json_atomically(env.status_file(seq), status_document("error", message, code=ERROR_CODE))
            print(message, file=sys.stderr)
            return EXIT_FAILED
        write_json_atomically(env.mrseq, seq)
        if not os.path.exists(env.status_file(seq)):
            write_json_atomically(
                env.status_file(seq), status_document("transitioning", "Enable in progress")
            )
        start_daemon(env, seq)
        log(env, f"enable: probing {describe(settings)} with {'rich' if rich else 'binary'} states")
    return 0


def start_daemon(env: HandlerEnvironment, seq: int) -> None:
    """Start the probing loop detached (`nohup … &` in spirit): its own session, so neither the end of
    enable nor the agent's process-group kill on timeout touches it; output to the log folder."""
    os.makedirs(env.log_folder, exist_ok=True)
    with open(env.log_file, "ab") as output:
        daemon = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "daemon", str(seq)],
            cwd=env.handler_dir,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            close_fds=True,
        )
    start_time = process_start_time(daemon.pid)
    if start_time is None:  # it died at once; its own output in the log says why
        raise HandlerError(f"the probing daemon exited at once (see {env.log_file})")
    write_json_atomically(env.daemon_record, {"pid": daemon.pid, "startTime": start_time, "seq": seq})


def command_stop(env: HandlerEnvironment) -> int:
    with handler_lock(env):
        stop_daemon(env)
    return 0


def command_uninstall(env: HandlerEnvironment) -> int:
    with handler_lock(env):
        stop_daemon(env)
    shutil.rmtree(env.state_dir, ignore_errors=True)
    log(env, "uninstalled")
    return 0


def describe(settings: ProbeSettings) -> str:
    if settings.protocol == DEFAULT:
        what = "nothing (no protocol: always healthy)"
    elif settings.protocol == TCP:
        what = f"tcp port {settings.port}"
    else:
        what = f"{settings.protocol} port {settings.port} path {settings.request_path}"
    return (
        f"{what} every {settings.interval_seconds} s, numberOfProbes {settings.number_of_probes}, "
        f"gracePeriod {settings.grace_period_seconds} s"
    )


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def still_current(env: HandlerEnvironment, seq: int) -> bool:
    """Keep probing only while mrseq names our seq (a newer enable took over otherwise) and the
    handler dir is still there (the agent deletes dropped handlers without running any command)."""
    return read_mrseq(env) == seq


def run_daemon(env: HandlerEnvironment, seq: int) -> int:
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        settings = read_settings(env, seq)
        rich = rich_states(package_version())
    except HandlerError as exc:
        log(env, f"daemon: {exc}")
        write_json_atomically(env.status_file(seq), status_document("error", str(exc), code=ERROR_CODE))
        return EXIT_FAILED
    scale = time_scale()
    host = os.environ.get(ADDRESS_VARIABLE) or "localhost"
    probe = make_probe(settings, host, rich, PROBE_TIMEOUT_SECONDS / scale)
    interval = settings.interval_seconds / scale
    tracker = HealthTracker(settings, rich, time.monotonic() * scale)
    log(env, f"daemon for seq {seq}: probing {host}, {describe(settings)}, time scale {scale:g}")
    last: tuple[str, str] | None = None
    next_probe = time.monotonic()
    try:
        while still_current(env, seq):
            result = probe()
            reported = tracker.observe(result.state, time.monotonic() * scale)
            metrics = result.custom_metrics if rich else None
            write_json_atomically(env.status_file(seq), health_status(reported, metrics))
            if (result.state, reported) != last:
                log(env, f"probe: {result.state} ({result.detail}); reporting {reported}")
                last = (result.state, reported)
            next_probe = max(next_probe + interval, time.monotonic())
            time.sleep(max(0.0, next_probe - time.monotonic()))
    except _Stop:
        log(env, f"daemon for seq {seq}: stopped")
        return 0
    except OSError as exc:  # the handler dir went away under us, most likely
        log(env, f"daemon for seq {seq}: {exc}; exiting")
        return 0
    log(env, f"daemon for seq {seq}: no longer the current seq; exiting")
    return 0


COMMANDS: dict[str, Callable[[HandlerEnvironment], int]] = {
    "install": command_install,
    "enable": command_enable,
    "disable": command_stop,
    "update": command_stop,
    "uninstall": command_uninstall,
}


def main(argv: list[str]) -> int:
    verb = argv[1] if len(argv) > 1 else ""
    failure = EXIT_INSTALL_FAILED if verb == "install" else EXIT_FAILED
    if verb not in COMMANDS and not (verb == "daemon" and len(argv) == 3 and argv[2].isdigit()):
        print(f"usage: {argv[0]} install|enable|disable|update|uninstall", file=sys.stderr)
        return failure
    env: HandlerEnvironment | None = None
    try:
        env = load_handler_environment()
        if verb == "daemon":
            return run_daemon(env, int(argv[2]))
        return COMMANDS[verb](env)
    except (HandlerError, OSError) as exc:
        log(env, f"{verb} failed: {exc}")
        return failure


if __name__ == "__main__":
    sys.exit(main(sys.argv))
