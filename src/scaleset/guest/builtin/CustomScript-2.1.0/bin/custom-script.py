#!/usr/bin/env python3
"""CustomScript handler (Microsoft.Azure.Extensions.CustomScript, in the style of 2.x) for scaleset.

It runs inside an instance with the system python3 and the standard library only (it cannot import
scaleset), started by the guest agent through `bin/custom-script-shim <verb>` with the handler
directory as its working directory (spec/extension-protocol.md §1):

    install     create the download directory
    enable      validate config/<seq>.settings (public, and protected ones decrypted with openssl).
                Invalid settings write an `error` status and exit 3. A seq already run (`mrseq`) is
                not run again: the agent re-runs enable at every start. Otherwise record `mrseq`,
                write a `transitioning` status, start the worker detached and exit 0, because a
                script may well outlast the agent's enable timeout.
    disable     nothing (as CustomScript: a started script is not interrupted)
    update      nothing
    uninstall   stop a worker still running (with its script's process group)
    run SEQ     (internal) the worker: download every fileUri into download/<seq>/, run
                commandToExecute there with `/bin/sh -c`, write status/<seq>.status

Settings (public, or protected where marked):

    commandToExecute  string, required, in exactly one of public and protected settings
    fileUris          list of http(s) URIs, public or protected (protected wins); each is saved under
                      the last segment of its path; a non-2xx answer fails the extension with
                      "Failed to download <uri>: <status> <reason>" (query string and user info
                      redacted: they hold SAS tokens and passwords)
    skipDos2Unix      boolean, default false: otherwise downloaded scripts lose CRLF line ends and a
                      UTF-8 byte-order mark
    timestamp         integer: change it to run the same command again (new settings, new seq)

The command's stdout and stderr go to files `stdout` and `stderr` in the download directory and are
reported (the last 4 KiB of each) as the substatuses StdOut and StdErr. Exit code 0 is `success`;
anything else is `error` with the exit code as the status code (128 + signal number when killed).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

HANDLER_NAME = "Microsoft.Azure.Extensions.CustomScript"
SEQUENCE_VARIABLE = "ConfigSequenceNumber"

EXIT_FAILED = 3
EXIT_INSTALL_FAILED = 52
ERROR_CODE = 1  # the `code` of an error status about anything but the command's own exit

OUTPUT_TAIL_BYTES = 4096
DOWNLOAD_TIMEOUT_SECONDS = 60.0
DOWNLOAD_ATTEMPTS = 3
STOP_TIMEOUT_SECONDS = 5.0
SCRIPT_SUFFIXES = (".sh", ".bash", ".py", ".pl", ".rb")

PUBLIC_KEYS = ("commandToExecute", "fileUris", "skipDos2Unix", "timestamp")
PROTECTED_KEYS = ("commandToExecute", "fileUris")
# CustomScript 2.x settings this handler does not implement: refused by name rather than ignored.
UNSUPPORTED_KEYS = ("script", "storageAccountName", "storageAccountKey", "managedIdentity")


class HandlerError(Exception):
    """A failure to report in the status file."""


class SettingsError(HandlerError):
    """Settings the extension refuses; the message says which key and why."""


# --------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class ScriptSettings:
    command: str
    file_uris: tuple[str, ...] = ()
    skip_dos2unix: bool = False
    timestamp: int | None = None


def _check_keys(settings: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in settings:
        if key in UNSUPPORTED_KEYS:
            raise SettingsError(f"{key} is not supported by this handler; use commandToExecute and fileUris")
        if key not in allowed:
            raise SettingsError(f"unknown setting {key!r} in {where}; allowed: {', '.join(allowed)}")


def _object(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SettingsError(f"{where} must be a JSON object")
    return value


def download_name(uri: str) -> str:
    """The file a URI is saved as: the last segment of its path, percent-decoded."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(uri).path.rsplit("/", 1)[-1])
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise SettingsError(f"cannot name a file after {redact_uri(uri)}: its path has no file name")
    return name


def _file_uris(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(uri, str) for uri in value):
        raise SettingsError(f"fileUris in {where} must be a list of strings")
    for uri in value:
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"fileUris in {where}: {redact_uri(uri)!r} is not an http(s) URI")
        download_name(uri)
    return tuple(value)


def validate_settings(public: object, protected: object = None) -> ScriptSettings:
    """Merge public and (decrypted) protected settings; raise SettingsError naming the fault."""
    public_settings = _object(public, "publicSettings")
    protected_settings = _object(protected, "protectedSettings")
    _check_keys(public_settings, PUBLIC_KEYS, "publicSettings")
    _check_keys(protected_settings, PROTECTED_KEYS, "protectedSettings")

    commands = [
        (where, settings["commandToExecute"])
        for where, settings in (
            ("publicSettings", public_settings),
            ("protectedSettings", protected_settings),
        )
        if settings.get("commandToExecute") is not None
    ]
    if not commands:
        raise SettingsError("commandToExecute is required (in publicSettings or protectedSettings)")
    if len(commands) > 1:
        raise SettingsError("commandToExecute must be in publicSettings or protectedSettings, not both")
    where, command = commands[0]
    if not isinstance(command, str) or not command.strip():
        raise SettingsError(f"commandToExecute in {where} must be a non-empty string")

    if protected_settings.get("fileUris") is not None:
        file_uris = _file_uris(protected_settings["fileUris"], "protectedSettings")
    else:
        file_uris = _file_uris(public_settings.get("fileUris"), "publicSettings")

    skip = public_settings.get("skipDos2Unix", False)
    if skip is None:
        skip = False
    if not isinstance(skip, bool):
        raise SettingsError(f"skipDos2Unix must be true or false, not {json.dumps(skip)}")
    timestamp = public_settings.get("timestamp")
    if timestamp is not None and (
        isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0
    ):
        raise SettingsError(f"timestamp must be a non-negative integer, not {json.dumps(timestamp)}")
    return ScriptSettings(command, file_uris, skip, timestamp)


# --------------------------------------------------------------------------------------------------
# Pure helpers


def redact_uri(uri: str) -> str:
    """The URI without what may be a secret: a query (SAS token) or user info (password)."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "[REDACTED]@" + netloc.rsplit("@", 1)[1]
    query = "[REDACTED]" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def looks_like_script(name: str, content: bytes) -> bool:
    """A text file meant to be run: a known script suffix or a shebang, and no NUL byte."""
    if b"\0" in content:
        return False
    return name.endswith(SCRIPT_SUFFIXES) or content.lstrip(b"\xef\xbb\xbf").startswith(b"#!")


def dos2unix(content: bytes) -> bytes:
    """Drop a UTF-8 byte-order mark and turn CRLF line ends into LF (a script saved on Windows)."""
    if content.startswith(b"\xef\xbb\xbf"):
        content = content[3:]
    return content.replace(b"\r\n", b"\n")


def output_tail(data: bytes, limit: int = OUTPUT_TAIL_BYTES) -> str:
    return data[-limit:].decode("utf-8", "replace")


def exit_code_of(returncode: int) -> int:
    """A shell's view of an exit: the code, or 128 + the signal number for a killed command."""
    return 128 - returncode if returncode < 0 else returncode


def _substatus(name: str, message: str) -> dict[str, Any]:
    formatted = {"lang": "en-US", "message": message}
    return {"name": name, "status": "success", "code": 0, "formattedMessage": formatted}


def output_substatuses(stdout: bytes, stderr: bytes) -> list[dict[str, Any]]:
    return [_substatus("StdOut", output_tail(stdout)), _substatus("StdErr", output_tail(stderr))]


def status_document(
    status: str,
    message: str,
    substatuses: list[dict[str, Any]] | None = None,
    code: int = 0,
    moment: float | None = None,
) -> list[dict[str, Any]]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
    return [
        {
            "version": 1.0,
            "timestampUTC": stamp,
            "status": {
                "name": HANDLER_NAME,
                "operation": "Enable",
                "configurationAppliedTime": stamp,
                "status": status,
                "code": code,
                "formattedMessage": {"lang": "en-US", "message": message},
                "substatus": substatuses or [],
            },
        }
    ]


def command_outcome(returncode: int) -> tuple[str, str, int]:
    """(status, message, code) for the command's exit."""
    if returncode == 0:
        return "success", "Enable succeeded", 0
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else -returncode
        return "error", f"Enable failed: the command was killed by signal {name}", exit_code_of(returncode)
    return "error", f"Enable failed: the command exited with code {returncode}", returncode


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
    def mrseq(self) -> str:
        return os.path.join(self.handler_dir, "mrseq")

    @property
    def worker_record(self) -> str:
        return os.path.join(self.handler_dir, "download", "worker.json")

    @property
    def log_file(self) -> str:
        return os.path.join(self.log_folder, "custom-script.log")

    def download_dir(self, seq: int) -> str:
        return os.path.join(self.handler_dir, "download", str(seq))

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


def read_settings(env: HandlerEnvironment, seq: int) -> ScriptSettings:
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


def read_status(path: str) -> str | None:
    """The top-level status value of a status file, None when absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as file:
            return str(json.load(file)[0]["status"]["status"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def log(env: HandlerEnvironment | None, message: str) -> None:
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} [{os.getpid()}] {message}"
    print(line, file=sys.stderr, flush=True)
    if env is None:
        return
    with contextlib.suppress(OSError):
        os.makedirs(env.log_folder, exist_ok=True)
        with open(env.log_file, "a", encoding="utf-8") as file:
            file.write(line + "\n")


def read_mrseq(env: HandlerEnvironment) -> int | None:
    try:
        with open(env.mrseq, encoding="utf-8") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def handler_lock(env: HandlerEnvironment) -> Iterator[None]:
    """Serialize the handler's own commands (the agent runs one at a time; this makes sure)."""
    directory = os.path.dirname(env.worker_record)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------------------------------
# The worker's process record


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if no live process has the pid."""
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
class WorkerRecord:
    pid: int
    start_time: str
    seq: int

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


def read_worker_record(env: HandlerEnvironment) -> WorkerRecord | None:
    try:
        with open(env.worker_record, encoding="utf-8") as file:
            data = json.load(file)
        return WorkerRecord(int(data["pid"]), str(data["startTime"]), int(data["seq"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stop_worker(env: HandlerEnvironment) -> None:
    """End a running worker and its command: the worker leads its own process group."""
    record = read_worker_record(env)
    if record is not None and record.alive():
        log(env, f"stopping the worker of seq {record.seq} (pid {record.pid}) and its command")
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pid, signum)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            while record.alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not record.alive():
                break
    with contextlib.suppress(FileNotFoundError):
        os.remove(env.worker_record)


# --------------------------------------------------------------------------------------------------
# The worker


def download(uri: str, target: str, opener: Callable[..., Any] = urllib.request.urlopen) -> None:
    """Save one URI; a non-2xx answer or a transport failure raises HandlerError with the reason.

    Transport errors, 5xx and 429 are retried (DOWNLOAD_ATTEMPTS in all); other answers, such as the
    403 of an expired SAS token, fail at once.
    """
    shown = redact_uri(uri)
    request = urllib.request.Request(uri, headers={"User-Agent": "scaleset-custom-script/2.1"})
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        retry = attempt < DOWNLOAD_ATTEMPTS
        try:
            with opener(request, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response, open(target, "wb") as file:
                while chunk := response.read(1 << 16):
                    file.write(chunk)
            return
        except urllib.error.HTTPError as exc:
            exc.close()
            reason = exc.reason or http.client.responses.get(exc.code, "")
            failure = f"Failed to download {shown}: {exc.code} {reason}".rstrip()
            retry = retry and (exc.code >= 500 or exc.code == 429)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            cause = getattr(exc, "reason", None) or exc
            failure = f"Failed to download {shown}: {cause}"
        if not retry:
            raise HandlerError(failure)
        time.sleep(attempt)
    raise AssertionError("unreachable")


def prepare_downloads(settings: ScriptSettings, directory: str) -> None:
    for uri in settings.file_uris:
        target = os.path.join(directory, download_name(uri))
        download(uri, target)
        if settings.skip_dos2unix:
            continue
        with open(target, "rb") as file:
            content = file.read()
        if looks_like_script(os.path.basename(target), content):
            with open(target, "wb") as file:
                file.write(dos2unix(content))


def run_worker(env: HandlerEnvironment, seq: int) -> int:
    """Download, run, report. Runs detached; its exit code is for the log only."""
    try:
        status, message, code, substatuses = download_and_run(env, seq)
    except (HandlerError, OSError) as exc:
        status, message, code, substatuses = "error", str(exc), ERROR_CODE, []
    log(env, f"seq {seq}: {message}")
    write_json_atomically(env.status_file(seq), status_document(status, message, substatuses, code=code))
    return 0 if status == "success" else EXIT_FAILED


def download_and_run(env: HandlerEnvironment, seq: int) -> tuple[str, str, int, list[dict[str, Any]]]:
    settings = read_settings(env, seq)
    directory = env.download_dir(seq)
    os.makedirs(directory, exist_ok=True)
    prepare_downloads(settings, directory)
    log(env, f"seq {seq}: running the command in {directory}")
    stdout_path, stderr_path = os.path.join(directory, "stdout"), os.path.join(directory, "stderr")
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        returncode = subprocess.call(
            ["/bin/sh", "-c", settings.command],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    with open(stdout_path, "rb") as stdout, open(stderr_path, "rb") as stderr:
        substatuses = output_substatuses(stdout.read(), stderr.read())
    return (*command_outcome(returncode), substatuses)


# --------------------------------------------------------------------------------------------------
# Commands


def command_install(env: HandlerEnvironment) -> int:
    os.makedirs(os.path.join(env.handler_dir, "download"), exist_ok=True)
    os.makedirs(env.log_folder, exist_ok=True)
    log(env, "installed")
    return 0


def command_enable(env: HandlerEnvironment) -> int:
    seq = sequence_number(env)
    with handler_lock(env):
        if read_mrseq(env) == seq:
            report_if_interrupted(env, seq)
            log(env, f"enable: seq {seq} already ran; not running it again")
            return 0
        try:
            read_settings(env, seq)
        except HandlerError as exc:
            message = f"Invalid settings: {exc}"
            log(env, f"enable failed: {message}")
            write_json_atomically(env.status_file(seq), status_document("error", message, code=ERROR_CODE))
            print(message, file=sys.stderr)
            return EXIT_FAILED
        # Recorded before the run: an instance restarted in the middle does not run the command twice.
        write_json_atomically(env.mrseq, seq)
        write_json_atomically(env.status_file(seq), status_document("transitioning", "Enable in progress"))
        start_worker(env, seq)
    return 0


def report_if_interrupted(env: HandlerEnvironment, seq: int) -> None:
    """A seq whose worker died mid-run (instance restart) would stay `transitioning` forever: say so."""
    record = read_worker_record(env)
    if read_status(env.status_file(seq)) != "transitioning" or (record is not None and record.alive()):
        return
    message = "Enable failed: the command was interrupted (the instance stopped while it ran); not run again"
    write_json_atomically(env.status_file(seq), status_document("error", message, code=ERROR_CODE))


def start_worker(env: HandlerEnvironment, seq: int) -> None:
    """Start the worker detached in its own session (`nohup … &` in spirit), output to the log folder."""
    os.makedirs(env.log_folder, exist_ok=True)
    with open(env.log_file, "ab") as output:
        worker = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "run", str(seq)],
            cwd=env.handler_dir,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            close_fds=True,
        )
    start_time = process_start_time(worker.pid)
    if start_time is not None:
        write_json_atomically(env.worker_record, {"pid": worker.pid, "startTime": start_time, "seq": seq})
    log(env, f"enable: seq {seq} started (worker pid {worker.pid})")


def command_nothing(env: HandlerEnvironment) -> int:
    return 0


def command_uninstall(env: HandlerEnvironment) -> int:
    with handler_lock(env):
        stop_worker(env)
    log(env, "uninstalled")
    return 0


COMMANDS: dict[str, Callable[[HandlerEnvironment], int]] = {
    "install": command_install,
    "enable": command_enable,
    "disable": command_nothing,
    "update": command_nothing,
    "uninstall": command_uninstall,
}


def main(argv: list[str]) -> int:
    verb = argv[1] if len(argv) > 1 else ""
    failure = EXIT_INSTALL_FAILED if verb == "install" else EXIT_FAILED
    if verb not in COMMANDS and not (verb == "run" and len(argv) == 3 and argv[2].isdigit()):
        print(f"usage: {argv[0]} install|enable|disable|update|uninstall", file=sys.stderr)
        return failure
    env: HandlerEnvironment | None = None
    try:
        env = load_handler_environment()
        if verb == "run":
            return run_worker(env, int(argv[2]))
        return COMMANDS[verb](env)
    except (HandlerError, OSError) as exc:
        log(env, f"{verb} failed: {exc}")
        return failure


if __name__ == "__main__":
    sys.exit(main(sys.argv))
