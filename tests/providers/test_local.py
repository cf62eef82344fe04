"""The local provider: the conformance suite, then what only real processes can show."""

from __future__ import annotations

import dataclasses
import http.client
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from scaleset.providers.base import InstanceSpec, InstanceState, ProviderError
from scaleset.providers.local import LocalProvider
from tests.providers.conformance import (
    CustomDataRuns,
    Disk,
    DiskAccess,
    ProviderConformance,
    SpecFactory,
    count_custom_data_runs,
)
from tests.providers.conftest import IMAGES, load_image

KEY = "local-set/0"
APP_START_TIMEOUT = 10.0


class LocalDisks:
    """Files on a local instance's disks, reached straight through its directory."""

    def __init__(self, provider: LocalProvider) -> None:
        self._provider = provider

    def _path(self, key: str, disk: Disk, name: str) -> Path:
        layout = self._provider.instance_layout(key)
        return (layout.os_disk if disk == "os" else layout.data_disk(disk)) / name

    def write_file(self, key: str, disk: Disk, name: str, text: str) -> None:
        self._path(key, disk, name).write_text(text)

    def read_file(self, key: str, disk: Disk, name: str) -> str | None:
        path = self._path(key, disk, name)
        return path.read_text() if path.exists() else None


class TestLocalConformance(ProviderConformance):
    @pytest.fixture
    def provider(self, local_provider: LocalProvider) -> LocalProvider:
        return local_provider

    @pytest.fixture
    def make_spec(self, spec_for: SpecFactory) -> SpecFactory:
        return spec_for

    @pytest.fixture
    def disks(self, local_provider: LocalProvider) -> DiskAccess:
        return LocalDisks(local_provider)

    @pytest.fixture
    def custom_data_runs(self, local_provider: LocalProvider) -> CustomDataRuns:
        disks = LocalDisks(local_provider)
        return lambda key: count_custom_data_runs(disks, key)


# -- helpers for the process-level tests --------------------------------------------------------------


def poll(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def request(method: str, spec: InstanceSpec, path: str, content: bytes = b"") -> httpx.Response:
    """One request to the instance's app, retried while the app is still starting."""
    url = f"http://{spec.address}:{spec.image.ports[0]}{path}"
    deadline = time.monotonic() + APP_START_TIMEOUT
    # trust_env=False: a proxy configured for the host must not see loopback traffic.
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while True:
            try:
                return client.request(method, url, content=content)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def raw_status(spec: InstanceSpec, method: str, path: str) -> int:
    """Send `path` exactly as written: httpx would resolve the ".." segments away before sending."""
    connection = http.client.HTTPConnection(spec.address, spec.image.ports[0], timeout=5)
    try:
        connection.request(method, path, body=b"x")
        return connection.getresponse().status
    finally:
        connection.close()


def init_process(provider: LocalProvider, key: str) -> psutil.Process:
    record = json.loads(provider.instance_layout(key).init_json.read_text())
    return psutil.Process(record["pid"])


def alive(process: psutil.Process) -> bool:
    """Running, that is: a zombie only waits for its parent (here often pid 1) to reap it."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def processes_using(directory: Path) -> list[psutil.Process]:
    """Live processes whose command line or working directory mentions `directory`."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd", "status"]):
        info = process.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        mentions = " ".join(info["cmdline"] or []) + " " + (info["cwd"] or "")
        if str(directory) in mentions:
            found.append(process)
    return found


def inits_of(directory: Path) -> list[psutil.Process]:
    return [p for p in processes_using(directory) if "scaleset.guest.init" in p.cmdline()]


# -- what only real processes show --------------------------------------------------------------------


class TestLocalProvider:
    def test_app_answers_on_the_instance_address(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        spec = spec_for(KEY)
        local_provider.create_instance(spec)

        about = request("GET", spec, "/")
        health = request("GET", spec, "/health")

        assert about.json() == {
            "image": "webapp",
            "version": "1.0.0",
            "instance": KEY,
            "address": spec.address,
        }
        assert (health.status_code, health.json()) == (200, {"ApplicationHealthState": "Healthy"})
        assert raw_status(spec, "PUT", "/files/os/..") == 400
        assert raw_status(spec, "PUT", "/files/data/0/..") == 400
        assert raw_status(spec, "GET", "/files/os/.hidden") == 400
        assert request("GET", spec, "/files/data/9/name").status_code == 404

    def test_data_disk_survives_reimage_and_os_disk_does_not(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        spec = spec_for(KEY)
        local_provider.create_instance(spec)
        assert request("PUT", spec, "/files/data/0/kept.txt", b"on the data disk").status_code == 201
        assert request("PUT", spec, "/files/os/lost.txt", b"on the OS disk").status_code == 201

        local_provider.reimage_instance(spec_for(KEY, generation=2))

        assert request("GET", spec, "/files/data/0/kept.txt").content == b"on the data disk"
        assert request("GET", spec, "/files/os/lost.txt").status_code == 404

    def test_reimage_to_a_new_image_version(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        local_provider.create_instance(spec_for(KEY))
        upgraded = dataclasses.replace(spec_for(KEY, generation=2), image=load_image("webapp-1.1.0"))

        local_provider.reimage_instance(upgraded)

        assert request("GET", upgraded, "/").json()["version"] == "1.1.0"

    def test_broken_image_serves_but_is_never_healthy(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        spec = dataclasses.replace(spec_for(KEY), image=load_image("webapp-broken-2.0.0"))
        local_provider.create_instance(spec)

        health = request("GET", spec, "/health")

        assert request("GET", spec, "/").json()["version"] == "2.0.0"
        assert (health.status_code, health.json()) == (500, {"ApplicationHealthState": "Unhealthy"})

    def test_killing_the_app_leaves_the_instance_running(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        spec = spec_for(KEY)
        local_provider.create_instance(spec)
        request("GET", spec, "/")
        (app,) = init_process(local_provider, KEY).children()

        app.kill()
        app.wait(timeout=5)

        assert local_provider.describe_instance(KEY).state is InstanceState.RUNNING
        console = local_provider.instance_layout(KEY).console_log
        poll(lambda: "app killed by SIGKILL" in console.read_text())

    def test_killing_the_init_process_stops_the_instance(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        spec = spec_for(KEY)
        local_provider.create_instance(spec)
        request("GET", spec, "/")
        init = init_process(local_provider, KEY)
        (orphan_app,) = init.children()

        init.send_signal(signal.SIGKILL)
        poll(lambda: local_provider.describe_instance(KEY).state is InstanceState.STOPPED)

        assert "exited unexpectedly" in local_provider.describe_instance(KEY).message
        # Starting again clears away the app the dead init left behind, so the new app gets its port.
        local_provider.start_instance(spec)
        assert not alive(orphan_app)
        assert request("GET", spec, "/").status_code == 200

    def test_a_restarted_server_adopts_running_instances(
        self, local_provider: LocalProvider, spec_for: SpecFactory, tmp_path: Path
    ) -> None:
        spec = spec_for(KEY)
        local_provider.create_instance(spec)
        instance_dir = local_provider.instance_layout(KEY).root
        (init,) = inits_of(instance_dir)

        restarted = LocalProvider(tmp_path / "instances", stop_timeout=2.0)
        assert restarted.describe_instance(KEY).state is InstanceState.RUNNING
        restarted.create_instance(spec)
        restarted.start_instance(spec)
        assert inits_of(instance_dir) == [init]

        restarted.stop_instance(KEY)
        assert local_provider.describe_instance(KEY).state is InstanceState.STOPPED
        assert processes_using(instance_dir) == []

    def test_delete_leaves_no_process_and_no_directory(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        spec = spec_for(KEY)
        local_provider.create_instance(spec)
        request("GET", spec, "/")
        instance_dir = local_provider.instance_layout(KEY).root
        init = init_process(local_provider, KEY)
        tree = [init, *init.children(recursive=True)]

        local_provider.delete_instance(KEY)

        assert not instance_dir.exists()
        assert not any(alive(process) for process in tree)
        assert processes_using(instance_dir) == []
        assert list(instance_dir.parent.iterdir()) == []

    def test_missing_image_is_a_provider_error(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        missing = dataclasses.replace(spec_for(KEY).image, path=IMAGES / "no-such-image")

        with pytest.raises(ProviderError, match="does not exist"):
            local_provider.create_instance(dataclasses.replace(spec_for(KEY), image=missing))

    def test_actions_on_an_unknown_instance_are_provider_errors(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        with pytest.raises(ProviderError, match="no instance"):
            local_provider.start_instance(spec_for(KEY))
        with pytest.raises(ProviderError, match="no instance"):
            local_provider.stop_instance(KEY)

    @pytest.mark.parametrize("key", ["", "a//b", "../x", ".hidden/0", "a__b/0", "set/_0", "a b"])
    def test_keys_that_cannot_name_a_directory_are_refused(
        self, local_provider: LocalProvider, key: str
    ) -> None:
        with pytest.raises(ProviderError, match="invalid instance key"):
            local_provider.describe_instance(key)
