"""Helpers the tests share: a real `scaleset serve` process and SDK clients pointed at it."""

from __future__ import annotations

import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_IMAGES = REPO / "examples" / "images"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def random_pool() -> str:
    # Each server gets its own /16 of loopback so parallel servers never hand out the same address.
    return f"127.{random.randint(60, 250)}.0.0/16"


@dataclass
class ServerProcess:
    """A `scaleset serve` in its own process, with its own data directory and address pool."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    pool: str = field(default_factory=random_pool)
    extra_args: tuple[str, ...] = ()
    tls: bool = False
    environment: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def subscription(self) -> str:
        return SUBSCRIPTION

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SCALESET_ENDPOINT": self.endpoint,
            "SCALESET_TOKEN": self.admin_token,
            "SCALESET_DATA_DIR": str(self.data_dir),
        }

    @property
    def ca_cert(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.ca_cert)) if self.tls else True

    def start(self) -> ServerProcess:
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        command = [
            sys.executable,
            "-m",
            "scaleset.cli.main",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--address-pool",
            self.pool,
            "--log-level",
            "warning",
            *(["--tls"] if self.tls else []),
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, **self.environment},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"scaleset serve exited: {self.log_path.read_text()[-3000:]}")
            try:
                verify: Any = self.verify
                if httpx.get(f"{self.endpoint}/scaleset/health", timeout=1, verify=verify).status_code == 200:
                    return self
            except (httpx.TransportError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError("scaleset serve did not answer within 30 s")

    def kill(self) -> None:
        """SIGKILL, as a crash would: instances keep running, nothing is cleaned up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.endpoint,
            timeout=30,
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            verify=self.verify,
        )

    def publish(
        self,
        directory: Path,
        *,
        location: str = "eastus",
        publisher: str = "scaleset",
        offer: str = "webapp",
        sku: str = "stable",
        version: str,
    ) -> httpx.Response:
        from scaleset.catalog.artifacts import pack_directory

        with self.client() as client:
            return client.post(
                "/scaleset/admin/images",
                content=pack_directory(directory),
                params={
                    "location": location,
                    "publisher": publisher,
                    "offer": offer,
                    "sku": sku,
                    "version": version,
                },
                headers={"Content-Type": "application/gzip"},
            )


def remove_leftover_instances(data_dir: Path) -> list[str]:
    """Stop every instance still on disk (a failed test leaves some) and say which there were."""
    from scaleset.providers.local import LocalProvider

    root = data_dir / "instances"
    if not root.exists():
        return []
    provider = LocalProvider(root)
    keys = list(provider.list_instance_keys())
    for key in keys:
        provider.delete_instance(key)
    return keys


def new_data_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def dispose(server: ServerProcess) -> list[str]:
    server.stop()
    leftovers = remove_leftover_instances(server.data_dir)
    shutil.rmtree(server.data_dir, ignore_errors=True)
    return leftovers


def scale_set_body(
    capacity: int,
    *,
    version: str = "1.0.0",
    zones: list[str] | None = None,
    data_disk: bool = True,
    extensions: list[dict[str, Any]] | None = None,
    custom_data: str | None = None,
    computer_name_prefix: str | None = None,
    **properties: Any,
) -> dict[str, Any]:
    """A scale-set PUT body on the sample webapp image (`scaleset:webapp:stable`), in eastus, Manual mode.

    The one place tests and benchmarks build a scale set; keyword arguments add what a test needs.
    """
    import base64

    profile: dict[str, Any] = {
        "storageProfile": {
            "imageReference": {
                "publisher": "scaleset",
                "offer": "webapp",
                "sku": "stable",
                "version": version,
            },
            "dataDisks": [{"lun": 0, "diskSizeGB": 1, "createOption": "Empty"}] if data_disk else [],
        },
    }
    os_profile: dict[str, Any] = {}
    if computer_name_prefix:
        os_profile["computerNamePrefix"] = computer_name_prefix
    if custom_data is not None:
        os_profile["customData"] = base64.b64encode(custom_data.encode()).decode()
    if os_profile:
        profile["osProfile"] = os_profile
    if extensions is not None:
        profile["extensionProfile"] = {"extensions": extensions}
    body: dict[str, Any] = {
        "location": "eastus",
        "sku": {"name": "Standard_B1s", "capacity": capacity},
        "properties": {"upgradePolicy": {"mode": "Manual"}, "virtualMachineProfile": profile, **properties},
    }
    if zones:
        body["zones"] = zones
    return body


def eventually(check: Any, timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> Any:
    """Call `check()` until it returns something truthy, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not met within {timeout} s (last: {value!r})"
        time.sleep(interval)


def instance_addresses(server: ServerProcess, group: str, name: str) -> dict[str, str]:
    """instance id → address, from the scale set's network interfaces."""
    with server.client() as client:
        response = client.get(
            f"/subscriptions/{server.subscription}/resourceGroups/{group}/providers/Microsoft.Compute/"
            f"virtualMachineScaleSets/{name}/networkInterfaces",
            params={"api-version": "2026-04-01"},
        )
    assert response.status_code == 200, response.text
    result = {}
    for nic in response.json()["value"]:
        instance_id = nic["properties"]["virtualMachine"]["id"].rsplit("/", 1)[1]
        result[instance_id] = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
    return result


def app_request(
    address: str, path: str, method: str = "GET", content: bytes | None = None, timeout: float = 15.0
) -> httpx.Response:
    """One request to the sample webapp on an instance, retried while the app is not listening yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.request(method, f"http://{address}:8080{path}", content=content, timeout=5)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def server_log_errors(server: ServerProcess, since: int = 0) -> list[str]:
    """Lines of the server's log from byte `since` on that report an error or a traceback."""
    if server.log_path is None or not server.log_path.exists():
        return []
    with open(server.log_path, "rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    return [
        line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line or "Traceback" in line
    ]


# ---------------------------------------------------------------------- shared e2e set-up and requests
NETWORK_API = {"api-version": "2024-05-01"}


def guest_speed(apphealth_time_scale: int = 100, status_seconds: float = 0.25) -> dict[str, str]:
    """Server environment for a faster guest: Application Health probes `apphealth_time_scale` times
    faster than on Azure and the guest reports its status every `status_seconds` (guest/init.py)."""
    return {
        "SCALESET_APPHEALTH_TIME_SCALE": str(apphealth_time_scale),
        "SCALESET_GUEST_STATUS_SECONDS": str(status_seconds),
    }


def publish_image(
    server: ServerProcess,
    image: str,
    *,
    version: str,
    sku: str = "stable",
    already_published_ok: bool = False,
) -> None:
    """Publish examples/images/<image> as `scaleset:webapp:<sku>:<version>` and fail unless it was created
    (or, with `already_published_ok`, was there already)."""
    response = server.publish(EXAMPLE_IMAGES / image, sku=sku, version=version)
    accepted = (201, 409) if already_published_ok else (201,)
    assert response.status_code in accepted, response.text


def application_health(grace_period: int, number_of_probes: int = 1) -> dict[str, Any]:
    """The Application Health extension `health` (rich states) on the webapp's /health (azure-api.md §4.5)."""
    return {
        "name": "health",
        "properties": {
            "publisher": "Microsoft.ManagedServices",
            "type": "ApplicationHealthLinux",
            "typeHandlerVersion": "2.0",
            "settings": {
                "protocol": "http",
                "port": 8080,
                "requestPath": "/health",
                "intervalInSeconds": 5,
                "numberOfProbes": number_of_probes,
                "gracePeriod": grace_period,
            },
        },
    }


def custom_script_writing(mark: str) -> dict[str, Any]:
    """CustomScript extension properties whose protected command writes `mark` to files/cse.txt on the OS
    disk (the sample webapp serves it at /files/os/cse.txt)."""
    return {
        "publisher": "Microsoft.Azure.Extensions",
        "type": "CustomScript",
        "typeHandlerVersion": "2.1",
        "settings": {},
        "protectedSettings": {
            "commandToExecute": 'mkdir -p "$SCALESET_OS_DISK/files" && '
            f'echo {mark} > "$SCALESET_OS_DISK/files/cse.txt"'
        },
    }


def http_health_probe(name: str) -> dict[str, Any]:
    """A load-balancer HTTP probe `name` on the webapp's /health (port 8080, every 5 s, one answer)."""
    return {
        "name": name,
        "properties": {
            "protocol": "Http",
            "port": 8080,
            "requestPath": "/health",
            "intervalInSeconds": 5,
            "numberOfProbes": 1,
        },
    }


def set_path(server: ServerProcess, group: str, name: str, *parts: str) -> str:
    """The ARM path of scale set `name` in `group`, with `parts` appended as further segments."""
    tail = "".join(f"/{part}" for part in parts)
    return (
        f"/subscriptions/{server.subscription}/resourceGroups/{group}/providers/Microsoft.Compute/"
        f"virtualMachineScaleSets/{name}{tail}"
    )


def lb_path(server: ServerProcess, group: str, name: str) -> str:
    """The ARM path of load balancer `name` in `group`."""
    return (
        f"/subscriptions/{server.subscription}/resourceGroups/{group}/providers/Microsoft.Network/"
        f"loadBalancers/{name}"
    )


def put_health_probe(server: ServerProcess, group: str, lb: str) -> str:
    """Create load balancer `lb` with one HTTP probe `health` on the webapp's /health; return the probe id."""
    with server.client() as client:
        response = client.put(
            lb_path(server, group, lb),
            params=NETWORK_API,
            json={"location": "eastus", "properties": {"probes": [http_health_probe("health")]}},
        )
    assert response.status_code == 201, response.text
    probe_id: str = response.json()["properties"]["probes"][0]["id"]
    return probe_id


def run_cli(
    server: ServerProcess, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `scaleset` CLI against `server` as a subprocess (stdin never a terminal), `env` added."""
    return subprocess.run(
        [sys.executable, "-m", "scaleset.cli.main", *args],
        env={**server.env, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def processes_under(root: Path) -> list[int]:
    """Process ids of every process whose command line or working directory mentions `root`."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            text = " ".join(process.info["cmdline"] or []) + " " + (process.info["cwd"] or "")
        except (psutil.Error, TypeError):
            continue
        if str(root) in text:
            found.append(process.info["pid"])
    return found


def vm_body(
    name: str, availability_set: str | None = None, *, data_disk: bool = False, **properties: Any
) -> dict[str, Any]:
    """A standalone VM on scaleset:webapp:stable:latest in eastus; `availability_set` is the set's id."""
    storage: dict[str, Any] = {
        "imageReference": {"publisher": "scaleset", "offer": "webapp", "sku": "stable", "version": "latest"},
        "osDisk": {"createOption": "FromImage"},
    }
    if data_disk:
        storage["dataDisks"] = [{"lun": 0, "diskSizeGB": 1, "createOption": "Empty"}]
    body: dict[str, Any] = {
        "location": "eastus",
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_B1s"},
            "storageProfile": storage,
            "osProfile": {"computerName": name, "adminUsername": "azureuser"},
            **properties,
        },
    }
    if availability_set is not None:
        body["properties"]["availabilitySet"] = {"id": availability_set}
    return body
