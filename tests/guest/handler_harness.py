"""Scaffolding shared by the built-in handler tests: a handler directory laid out and run as the guest
agent does (spec/extension-protocol.md §1), loopback HTTP servers served from a thread, self-signed
certificates and a search for processes a handler left behind.

Each test module subclasses `HandlerDir` with its package, shim and any extra command variables; what
a handler's status means stays in its own test module.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

WAIT_SECONDS = 15.0

Server = TypeVar("Server", bound=ThreadingHTTPServer)


def instance_bin(root: Path) -> Path:
    """`<root>/usr/bin` with `python3` = the base interpreter: the instance's system python3, which
    cannot import scaleset (no venv), started directly rather than through pyenv's slower shim."""
    directory = root / "usr" / "bin"
    directory.mkdir(parents=True, exist_ok=True)
    base = Path(sys.base_prefix) / "bin" / "python3"
    (directory / "python3").symlink_to(base if base.exists() else Path(shutil.which("python3") or "python3"))
    return directory


def load_program(path: Path, module_name: str) -> ModuleType:
    """Import a package's program by path, without leaving __pycache__ in the package."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    writes_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


# --------------------------------------------------------------------------------------------------
# HTTP servers on a loopback address


class LoopbackServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that binds without a name lookup and does not wait for its handlers."""

    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the address up in DNS (getfqdn); nothing here needs a name.
        socketserver.TCPServer.server_bind(self)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and answers with a complete body."""

    def answer(self, status: int, body: bytes, content_type: str | None = None) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_in_thread(server: Server) -> Iterator[Server]:
    """Serve `server` from a daemon thread until the block ends, then shut it down and close it."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------------
# Certificates


def self_signed_certificate(common_name: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A fresh 2048-bit RSA key and a certificate for it, valid from a minute ago for a day."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def save_pem(certificate: x509.Certificate, key: rsa.RSAPrivateKey, cert_path: Path, key_path: Path) -> None:
    """Write the certificate and its unencrypted private key (traditional OpenSSL format) as PEM."""
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


# --------------------------------------------------------------------------------------------------
# Processes


def processes_under(directory: Path, *, by_cwd: bool = False) -> list[psutil.Process]:
    """Live processes whose command line mentions the directory (the AppHealth daemon:
    …/bin/apphealth.py) or, with `by_cwd`, whose working directory is inside it (a CustomScript
    command runs in download/<seq> and need not name the directory)."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd", "status"] if by_cwd else ["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            text = " ".join(process.info["cmdline"] or [])
            if by_cwd:
                text += " " + (process.info["cwd"] or "")
            if str(directory) in text:
                found.append(process)
    return found


def kill_leftovers(leftovers: list[psutil.Process]) -> None:
    """Kill what a test left running, then fail on it: nothing a handler starts may outlive its test."""
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.kill()
    assert not leftovers, f"processes left behind: {leftovers}"


# --------------------------------------------------------------------------------------------------
# Handler directories


class HandlerDir:
    """One installed handler directory, `<root>/var/lib/waagent/<HandlerName>-<version>`.

    Subclasses name the handler and its shim and lay the package out in `install_package`.
    """

    handler_name: ClassVar[str]
    shim: ClassVar[str]

    def __init__(self, root: Path, version: str) -> None:
        self.root = root
        self.version = version
        self.lib_dir = root / "var" / "lib" / "waagent"
        self.dir = self.lib_dir / f"{self.handler_name}-{version}"
        self.log_folder = root / "var" / "log" / "azure" / self.handler_name
        self.bin = instance_bin(root)
        self.install_package(self.dir)
        for name in ("config", "status"):
            (self.dir / name).mkdir(mode=0o700)
        (self.log_folder / "events").mkdir(parents=True)
        environment = {
            "logFolder": str(self.log_folder),
            "configFolder": str(self.dir / "config"),
            "statusFolder": str(self.dir / "status"),
            "heartbeatFile": str(self.dir / "heartbeat.log"),
            "eventsFolder": str(self.log_folder / "events"),
            "eventsFolder_preview": str(self.log_folder / "events"),
        }
        document = [{"name": self.handler_name, "version": 1.0, "handlerEnvironment": environment}]
        (self.dir / "HandlerEnvironment.json").write_text(json.dumps(document))

    def install_package(self, directory: Path) -> None:
        """Put the handler package's files into `directory`, which does not exist yet."""
        raise NotImplementedError

    def write_settings(
        self,
        seq: int,
        public: dict[str, Any] | None,
        protected: str | None = None,
        thumbprint: str | None = None,
    ) -> None:
        handler_settings = {
            "publicSettings": public,
            "protectedSettings": protected,
            "protectedSettingsCertThumbprint": thumbprint,
        }
        document = {"runtimeSettings": [{"handlerSettings": handler_settings}]}
        (self.dir / "config" / f"{seq}.settings").write_text(json.dumps(document))

    def command_environment(self, seq: int) -> dict[str, str]:
        """The agent's variables for a command; subclasses add their own."""
        return {
            "AZURE_GUEST_AGENT_EXTENSION_PATH": str(self.dir),
            "AZURE_GUEST_AGENT_EXTENSION_VERSION": self.version,
            "ConfigSequenceNumber": str(seq),
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def run(self, verb: str, seq: int = 0) -> subprocess.CompletedProcess[str]:
        """Run a command as the agent does: shell, cwd = handler dir, its own session, agent variables."""
        env = dict(os.environ)
        env.update(self.command_environment(seq))
        command = str(self.dir / f"bin/{self.shim} {verb}")
        return subprocess.run(
            command,
            shell=True,
            cwd=self.dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
        )

    def install(self) -> None:
        done = self.run("install")
        assert done.returncode == 0, done.stderr

    def enable(self, seq: int = 0) -> None:
        done = self.run("enable", seq)
        assert done.returncode == 0, done.stderr

    def status(self, seq: int = 0) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.dir / "status" / f"{seq}.status").read_text())[0]["status"])
        except (OSError, ValueError):
            return None
