"""The built-in CustomScript handler: its pure rules, then the real package run the agent's way.

The end-to-end tests lay out `<tmp>/var/lib/waagent/Microsoft.Azure.Extensions.CustomScript-2.1.0` as
the guest agent does (spec/extension-protocol.md §1), with certificates two levels above config/ for
protected settings, run `bin/custom-script-shim <verb>` from it and wait for a terminal status.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

import scaleset.guest.builtin as builtin
from tests.guest import handler_harness
from tests.guest.handler_harness import (
    WAIT_SECONDS,
    HandlerDir,
    LoopbackServer,
    QuietHandler,
    kill_leftovers,
    load_program,
    save_pem,
    self_signed_certificate,
    serve_in_thread,
)

HANDLER_NAME = "Microsoft.Azure.Extensions.CustomScript"
PACKAGE = builtin.BUILTIN_DIR / "CustomScript-2.1.0"

# bin/custom-script.py, imported by path, without leaving __pycache__ in the package.
cs = load_program(PACKAGE / "bin" / "custom-script.py", "custom_script")


# --------------------------------------------------------------------------------------------------
# The package


def test_handler_manifest_runs_the_shim_for_every_verb() -> None:
    manifest = json.loads((PACKAGE / "HandlerManifest.json").read_text())
    assert isinstance(manifest, list) and len(manifest) == 1
    commands = manifest[0]["handlerManifest"]
    for verb in ("install", "uninstall", "update", "enable", "disable"):
        assert commands[f"{verb}Command"] == f"bin/custom-script-shim {verb}"
    assert commands["updateMode"] == "UpdateWithInstall"
    assert os.access(PACKAGE / "bin" / "custom-script-shim", os.X_OK)


# --------------------------------------------------------------------------------------------------
# Settings


def test_command_from_public_or_protected_settings() -> None:
    assert cs.validate_settings({"commandToExecute": "echo hi"}).command == "echo hi"
    assert (
        cs.validate_settings({"timestamp": 3}, {"commandToExecute": "echo secret"}).command == "echo secret"
    )
    settings = cs.validate_settings(
        {"commandToExecute": "x", "fileUris": ["http://a/1.sh"], "skipDos2Unix": True, "timestamp": 0}
    )
    assert (settings.file_uris, settings.skip_dos2unix, settings.timestamp) == (("http://a/1.sh",), True, 0)
    defaults = cs.validate_settings({"commandToExecute": "x"})
    assert (defaults.file_uris, defaults.skip_dos2unix, defaults.timestamp) == ((), False, None)


def test_protected_file_uris_win() -> None:
    settings = cs.validate_settings(
        {"commandToExecute": "x", "fileUris": ["http://public/a.sh"]},
        {"fileUris": ["https://secret/b.sh?sig=1"]},
    )
    assert settings.file_uris == ("https://secret/b.sh?sig=1",)


@pytest.mark.parametrize(
    ("public", "protected", "message"),
    [
        (None, None, "commandToExecute is required"),
        ({"fileUris": []}, {}, "commandToExecute is required"),
        ({"commandToExecute": "a"}, {"commandToExecute": "b"}, "not both"),
        ({"commandToExecute": ""}, None, "commandToExecute in publicSettings must be a non-empty string"),
        ({"commandToExecute": ["ls"]}, None, "must be a non-empty string"),
        (
            {"commandToExecute": "x", "fileUris": "http://a/b"},
            None,
            "fileUris in publicSettings must be a list",
        ),
        ({"commandToExecute": "x", "fileUris": [1]}, None, "must be a list of strings"),
        ({"commandToExecute": "x", "fileUris": ["ftp://a/b"]}, None, "is not an http\\(s\\) URI"),
        ({"commandToExecute": "x", "fileUris": ["http:///b"]}, None, "is not an http\\(s\\) URI"),
        ({"commandToExecute": "x", "fileUris": ["http://a/"]}, None, "its path has no file name"),
        ({"commandToExecute": "x", "skipDos2Unix": "yes"}, None, "skipDos2Unix must be true or false"),
        ({"commandToExecute": "x", "timestamp": "1"}, None, "timestamp must be a non-negative integer"),
        ({"commandToExecute": "x", "timestamp": -1}, None, "timestamp must be a non-negative integer"),
        ({"commandToExecute": "x", "timestamp": True}, None, "timestamp must be a non-negative integer"),
        ({"commandToExecute": "x", "commandToExcute": "y"}, None, "unknown setting 'commandToExcute'"),
        ({"commandToExecute": "x"}, {"timestamp": 1}, "unknown setting 'timestamp' in protectedSettings"),
        ({"script": "ZWNobw=="}, None, "script is not supported"),
        ({"commandToExecute": "x"}, {"storageAccountKey": "k"}, "storageAccountKey is not supported"),
        ([], None, "publicSettings must be a JSON object"),
        ({"commandToExecute": "x"}, "secret", "protectedSettings must be a JSON object"),
    ],
)
def test_invalid_settings_are_refused_with_the_reason(
    public: object, protected: object, message: str
) -> None:
    with pytest.raises(cs.SettingsError, match=message):
        cs.validate_settings(public, protected)


# --------------------------------------------------------------------------------------------------
# Pure helpers


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://store.example/c/run.sh", "https://store.example/c/run.sh"),
        ("https://store.example/c/run.sh?sv=1&sig=abc", "https://store.example/c/run.sh?[REDACTED]"),
        ("https://user:pw@store.example/run.sh", "https://[REDACTED]@store.example/run.sh"),
    ],
)
def test_redact_uri_hides_tokens_and_passwords(uri: str, shown: str) -> None:
    assert cs.redact_uri(uri) == shown


def test_download_name_is_the_last_path_segment() -> None:
    assert cs.download_name("https://a/b/run%20me.sh?sig=x") == "run me.sh"
    for bad in ("https://a/", "https://a/b/..", "https://a/%2e%2e", "https://a/x%2Fy"):
        with pytest.raises(cs.SettingsError):
            cs.download_name(bad)


def test_dos2unix_applies_to_scripts_only() -> None:
    assert cs.dos2unix(b"\xef\xbb\xbf#!/bin/sh\r\necho hi\r\n") == b"#!/bin/sh\necho hi\n"
    assert cs.looks_like_script("run.sh", b"echo hi\r\n")
    assert cs.looks_like_script("run", b"\xef\xbb\xbf#!/bin/sh\r\n")
    assert not cs.looks_like_script("data.csv", b"a,b\r\n")
    assert not cs.looks_like_script("tool.sh", b"#!\x00binary")


def test_output_tail_keeps_the_last_4_kib() -> None:
    assert cs.output_tail(b"x" * 5000 + b"end") == "x" * 4093 + "end"
    assert cs.output_tail(b"\xff ok") == "\ufffd ok"


def test_command_outcome() -> None:
    assert cs.command_outcome(0) == ("success", "Enable succeeded", 0)
    assert cs.command_outcome(3) == ("error", "Enable failed: the command exited with code 3", 3)
    assert cs.command_outcome(-signal.SIGKILL) == (
        "error",
        "Enable failed: the command was killed by signal SIGKILL",
        137,
    )


def test_status_document_shape() -> None:
    [document] = cs.status_document(
        "success", "Enable succeeded", cs.output_substatuses(b"o", b"e"), moment=0
    )
    status = document["status"]
    assert (status["status"], status["operation"], status["code"]) == ("success", "Enable", 0)
    assert [(s["name"], s["status"], s["formattedMessage"]["message"]) for s in status["substatus"]] == [
        ("StdOut", "success", "o"),
        ("StdErr", "success", "e"),
    ]
    assert document["timestampUTC"] == "1970-01-01T00:00:00Z"


# --------------------------------------------------------------------------------------------------
# End to end


class Files(LoopbackServer):
    """A file server: /hello.sh (a CRLF script), /secret.sh (403, an expired SAS token)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FilesHandler)
        self.requests: list[str] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class FilesHandler(QuietHandler):
    server: Files

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.path.startswith("/secret.sh"):
            status, body = 403, b"<Error><Code>AuthenticationFailed</Code></Error>"
        elif self.path == "/hello.sh":
            status, body = 200, b"#!/bin/sh\r\necho downloaded\r\n"
        else:
            status, body = 404, b"not found"
        self.answer(status, body)


@pytest.fixture
def files() -> Iterator[Files]:
    with serve_in_thread(Files()) as server:
        yield server


class Certificate:
    """A self-signed certificate and key, saved as the agent saves them: <lib>/<THUMBPRINT>.crt/.prv."""

    def __init__(self, lib_dir: Path) -> None:
        self.certificate, key = self_signed_certificate("scaleset-test")
        self.thumbprint = self.certificate.fingerprint(hashes.SHA1()).hex().upper()
        lib_dir.mkdir(parents=True, exist_ok=True)
        save_pem(
            self.certificate, key, lib_dir / f"{self.thumbprint}.crt", lib_dir / f"{self.thumbprint}.prv"
        )

    def encrypt(self, settings: dict[str, Any]) -> str:
        builder = (
            pkcs7.PKCS7EnvelopeBuilder()
            .set_data(json.dumps(settings).encode())
            .add_recipient(self.certificate)
        )
        return base64.b64encode(builder.encrypt(serialization.Encoding.DER, [])).decode()


def processes_under(directory: Path) -> list[psutil.Process]:
    """Live processes whose command line or working directory is inside the handler directory."""
    return handler_harness.processes_under(directory, by_cwd=True)


class Handler(HandlerDir):
    """One installed handler directory, `<root>/var/lib/waagent/<HandlerName>-2.1.0`."""

    handler_name = HANDLER_NAME
    shim = "custom-script-shim"

    def __init__(self, root: Path) -> None:
        super().__init__(root, "2.1.0")

    def install_package(self, directory: Path) -> None:
        shutil.copytree(PACKAGE, directory)

    def wait_for_result(self, seq: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            status = self.status(seq)
            if status is not None and status["status"] in ("success", "error"):
                return status
            time.sleep(0.01)
        raise AssertionError(f"no terminal status for seq {seq}: {self.status(seq)}")

    def download_dir(self, seq: int = 0) -> Path:
        return self.dir / "download" / str(seq)


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[Handler]:
    made = Handler(tmp_path)
    made.install()
    yield made
    # Runs even when the test failed: no script may outlive its test.
    made.run("uninstall")
    kill_leftovers(processes_under(made.dir))


def outputs(status: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["formattedMessage"]["message"] for s in status["substatus"]}


def test_command_from_public_settings_succeeds_with_its_output(handler: Handler) -> None:
    handler.write_settings(0, {"commandToExecute": "echo hello; pwd; echo oops >&2"})
    handler.enable()
    status = handler.wait_for_result()
    assert (status["status"], status["code"], status["operation"]) == ("success", 0, "Enable")
    assert status["formattedMessage"]["message"] == "Enable succeeded"
    directory = handler.download_dir()
    assert outputs(status) == {"StdOut": f"hello\n{directory}\n", "StdErr": "oops\n"}
    assert [s["status"] for s in status["substatus"]] == ["success", "success"]
    assert (directory / "stdout").read_text() == f"hello\n{directory}\n"
    assert (directory / "stderr").read_text() == "oops\n"


def test_command_from_protected_settings_is_decrypted_with_the_certificate(handler: Handler) -> None:
    certificate = Certificate(handler.lib_dir)  # config/../../<thumbprint>.crt and .prv
    protected = certificate.encrypt({"commandToExecute": "echo top secret"})
    handler.write_settings(0, {"timestamp": 1}, protected, certificate.thumbprint)
    handler.enable()
    status = handler.wait_for_result()
    assert status["status"] == "success", status
    assert outputs(status)["StdOut"] == "top secret\n"
    assert "top secret" not in (handler.dir / "config" / "0.settings").read_text()


def test_protected_settings_that_cannot_be_decrypted_fail_enable(handler: Handler) -> None:
    certificate = Certificate(handler.lib_dir)
    protected = certificate.encrypt({"commandToExecute": "echo x"})
    handler.write_settings(0, None, protected, "0" * 40)  # no such certificate
    done = handler.run("enable", 0)
    assert done.returncode == 3
    status = handler.status()
    assert status is not None and status["status"] == "error"
    assert status["formattedMessage"]["message"].startswith(
        "Invalid settings: cannot decrypt protectedSettings"
    )


def test_file_uris_are_downloaded_into_the_seq_directory_before_the_command(
    handler: Handler, files: Files
) -> None:
    handler.write_settings(0, {"commandToExecute": "sh hello.sh", "fileUris": [files.url("/hello.sh")]})
    handler.enable()
    status = handler.wait_for_result()
    assert status["status"] == "success", status
    assert outputs(status)["StdOut"] == "downloaded\n"  # CRLF turned into LF
    assert (handler.download_dir() / "hello.sh").read_bytes() == b"#!/bin/sh\necho downloaded\n"

    handler.write_settings(
        1, {"commandToExecute": "true", "fileUris": [files.url("/hello.sh")], "skipDos2Unix": True}
    )
    handler.enable(1)
    assert handler.wait_for_result(1)["status"] == "success"
    assert (handler.download_dir(1) / "hello.sh").read_bytes() == b"#!/bin/sh\r\necho downloaded\r\n"


def test_a_403_download_fails_the_extension_naming_the_uri(
    handler: Handler, files: Files, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    uri = files.url("/secret.sh?sv=2024&sig=expired")
    handler.write_settings(0, {"commandToExecute": f"touch {marker}", "fileUris": [uri]})
    handler.enable()
    status = handler.wait_for_result()
    assert status["status"] == "error"
    assert status["formattedMessage"]["message"] == (
        f"Failed to download {files.url('/secret.sh')}?[REDACTED]: 403 Forbidden"
    )
    assert "expired" not in json.dumps(status)  # the SAS token stays secret
    assert not marker.exists()
    assert files.requests == ["/secret.sh?sv=2024&sig=expired"]  # a 403 is not retried


def test_non_zero_exit_is_an_error_with_the_code(handler: Handler) -> None:
    handler.write_settings(0, {"commandToExecute": "echo partial; echo broken >&2; exit 3"})
    handler.enable()
    status = handler.wait_for_result()
    assert (status["status"], status["code"]) == ("error", 3)
    assert status["formattedMessage"]["message"] == "Enable failed: the command exited with code 3"
    assert outputs(status) == {"StdOut": "partial\n", "StdErr": "broken\n"}


def test_invalid_settings_fail_enable_at_once(handler: Handler) -> None:
    handler.write_settings(0, {"fileUris": []})
    done = handler.run("enable", 0)
    assert done.returncode == 3
    status = handler.status()
    assert status is not None and status["status"] == "error"
    assert "commandToExecute is required" in status["formattedMessage"]["message"]


def test_re_enable_with_the_same_seq_does_not_run_again(handler: Handler, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    handler.write_settings(0, {"commandToExecute": f"echo run >> {runs}", "timestamp": 1})
    handler.enable(0)
    assert handler.wait_for_result(0)["status"] == "success"
    handler.enable(0)  # the agent re-runs enable after every restart
    time.sleep(0.3)
    assert runs.read_text() == "run\n"
    assert handler.status(0)["status"] == "success"  # type: ignore[index]

    # A new timestamp is new settings, so the platform sends a new seq: that runs again.
    handler.write_settings(1, {"commandToExecute": f"echo run >> {runs}", "timestamp": 2})
    handler.enable(1)
    assert handler.wait_for_result(1)["status"] == "success"
    assert runs.read_text() == "run\nrun\n"
    assert (handler.dir / "mrseq").read_text().strip() == "1"


def test_enable_returns_while_a_long_command_runs_and_uninstall_stops_it(handler: Handler) -> None:
    handler.write_settings(0, {"commandToExecute": "sleep 60"})
    started = time.monotonic()
    handler.enable()
    assert time.monotonic() - started < 5
    status = handler.status()
    assert status is not None and status["status"] == "transitioning"
    assert processes_under(handler.dir)
    assert handler.run("uninstall").returncode == 0
    assert not processes_under(handler.dir)


def test_a_run_interrupted_by_a_restart_is_reported_on_the_next_enable(handler: Handler) -> None:
    handler.write_settings(0, {"commandToExecute": "sleep 60"})
    handler.enable()
    record = json.loads((handler.dir / "download" / "worker.json").read_text())
    os.killpg(record["pid"], signal.SIGKILL)  # the instance stopped mid-run
    deadline = time.monotonic() + WAIT_SECONDS
    while processes_under(handler.dir) and time.monotonic() < deadline:
        time.sleep(0.01)
    handler.enable()
    status = handler.wait_for_result()
    assert status["status"] == "error"
    assert "interrupted" in status["formattedMessage"]["message"]
