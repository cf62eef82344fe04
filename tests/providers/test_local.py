"""The local provider: the conformance suite, then what only real processes can show."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

import scaleset.providers.local as local_module
from scaleset.guest.init import start_ticks_of
from scaleset.providers.base import CustomDataResult, HealthProbe, InstanceSpec, InstanceState, ProviderError
from scaleset.providers.local import LocalProvider
from tests.providers.conformance import (
    CustomDataRuns,
    Disk,
    DiskAccess,
    ProviderConformance,
    SpecFactory,
    count_custom_data_runs,
    wait_for_custom_data,
    with_guest,
)
from tests.providers.conftest import IMAGES, load_image

KEY = "local-set/0"
APP_START_TIMEOUT = 10.0
HEALTH_PROBE = HealthProbe("Http", 8080, "/health")


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

    @pytest.fixture
    def serving_probe(self) -> HealthProbe:
        return HEALTH_PROBE  # the webapp image answers 200 on /health


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


def test_start_ticks_agree_with_the_create_time_whatever_the_command_name_and_end_with_the_process() -> None:
    # The child renames itself so that its command name in /proc/<pid>/stat holds ") " and spaces.
    renamed = (
        "import sys; open('/proc/self/comm', 'w').write('a) 1 (b'); print('ok', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", renamed], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ok\n"
        assert psutil.Process(child.pid).name() == "a) 1 (b"
        ticks = start_ticks_of(child.pid)
        assert ticks is not None
        seconds_after_boot = psutil.Process(child.pid).create_time() - psutil.boot_time()
        assert abs(ticks / os.sysconf("SC_CLK_TCK") - seconds_after_boot) < 1.0
    finally:
        child.communicate("")
    assert start_ticks_of(child.pid) is None


def started_init_record(provider: LocalProvider, spec_for: SpecFactory) -> tuple[Path, dict[str, Any]]:
    """Create the instance; its init.json and what its init wrote there."""
    provider.create_instance(spec_for(KEY))
    init_json = provider.instance_layout(KEY).init_json
    return init_json, json.loads(init_json.read_text())


@contextmanager
def init_record_reading(init_json: Path, record: Any) -> Iterator[None]:
    """init.json says `record` inside; after, what the init wrote (so that the fixture's delete ends the
    real init)."""
    written = init_json.read_text()
    init_json.write_text(json.dumps(record))
    try:
        yield
    finally:
        init_json.write_text(written)


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

    def test_a_step_of_the_wall_clock_leaves_running_instances_running(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        # Stop 11's CI failure: after the wall clock was stepped (a VM resumed from a snapshot), instances
        # started before the step showed as stopped, because psutil's create time moves with the clock.
        init_json, record = started_init_record(local_provider, spec_for)

        # What the init recorded, as its create time reads once the clock has been stepped an hour back.
        with init_record_reading(init_json, {**record, "create_time": record["create_time"] + 3600}):
            assert local_provider.describe_instance(KEY).state is InstanceState.RUNNING

    def test_a_process_that_reuses_the_inits_pid_is_not_taken_for_it(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        init_json, record = started_init_record(local_provider, spec_for)

        # The same pid, started one tick later: another process.
        with init_record_reading(init_json, {**record, "start_ticks": record["start_ticks"] + 1}):
            assert local_provider.describe_instance(KEY).state is InstanceState.STOPPED

    def test_an_init_record_from_before_start_ticks_is_matched_by_its_create_time(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        init_json, record = started_init_record(local_provider, spec_for)
        older = {"pid": record["pid"], "create_time": record["create_time"]}

        with init_record_reading(init_json, older):
            assert local_provider.describe_instance(KEY).state is InstanceState.RUNNING
        with init_record_reading(init_json, {**older, "create_time": older["create_time"] - 60}):
            assert local_provider.describe_instance(KEY).state is InstanceState.STOPPED

    def test_an_init_record_that_names_no_process_is_a_stopped_instance(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        # The record sits in the instance's directory, which the guest can write to: whatever it says,
        # describing the instance must not fail.
        init_json, record = started_init_record(local_provider, spec_for)
        for written in ([record["pid"]], {**record, "pid": -1}, {**record, "pid": 0}, {**record, "pid": "x"}):
            with init_record_reading(init_json, written):
                assert local_provider.describe_instance(KEY).state is InstanceState.STOPPED

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


# -- the kept OS disk (rollback) ----------------------------------------------------------------------


def kept_disk_files(provider: LocalProvider, key: str) -> list[str]:
    root = provider.instance_layout(key).root
    return sorted(entry.name for entry in root.iterdir() if entry.name.startswith(("os-previous", ".os-")))


class TestKeptOsDisk:
    def test_reimage_keeps_the_replaced_disk_and_restore_uses_it_up(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        spec = spec_for(KEY)
        local_provider.create_instance(spec)
        assert kept_disk_files(local_provider, KEY) == []
        assert request("PUT", spec, "/files/os/note.txt", b"generation 1").status_code == 201

        local_provider.reimage_instance(spec_for(KEY, generation=2))
        local_provider.create_instance(spec_for(KEY, generation=2))  # an existing instance: untouched
        root = local_provider.instance_layout(KEY).root
        assert kept_disk_files(local_provider, KEY) == ["os-previous", "os-previous.generation"]
        assert (root / "os-previous.generation").read_text() == "1"
        assert request("GET", spec, "/files/os/note.txt").status_code == 404

        local_provider.restore_os_disk(spec)

        assert request("GET", spec, "/files/os/note.txt").content == b"generation 1"
        assert kept_disk_files(local_provider, KEY) == []  # the generation-2 disk is discarded
        with pytest.raises(ProviderError, match="keeps none"):
            local_provider.restore_os_disk(spec_for(KEY, generation=2))

    def test_only_the_disk_before_the_last_reimage_is_kept(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        local_provider.create_instance(spec_for(KEY))
        local_provider.reimage_instance(spec_for(KEY, generation=2))
        local_provider.reimage_instance(spec_for(KEY, generation=3))

        with pytest.raises(ProviderError, match="keeps generation 2"):
            local_provider.restore_os_disk(spec_for(KEY))
        local_provider.restore_os_disk(spec_for(KEY, generation=2))
        assert local_provider.describe_instance(KEY).os_disk_generation == 2

    def test_delete_removes_the_kept_disk(self, local_provider: LocalProvider, spec_for: SpecFactory) -> None:
        local_provider.create_instance(spec_for(KEY))
        local_provider.reimage_instance(spec_for(KEY, generation=2))
        root = local_provider.instance_layout(KEY).root

        local_provider.delete_instance(KEY)

        assert not root.exists()
        assert list(root.parent.iterdir()) == []

    def test_restore_brings_back_the_disks_own_custom_data_report(
        self, local_provider: LocalProvider, spec_for: SpecFactory
    ) -> None:
        # Generation 1's custom data failed, generation 2's succeeded: after the rollback the report is
        # generation 1's again (true of the disk that runs), and nothing runs a second time.
        failing = with_guest(spec_for(KEY), custom_data=b"echo broken\nexit 3\n")
        local_provider.create_instance(failing)
        assert wait_for_custom_data(local_provider, KEY).exit_code == 3
        local_provider.reimage_instance(with_guest(spec_for(KEY, generation=2), custom_data=b"exit 0\n"))
        assert wait_for_custom_data(local_provider, KEY).state == "succeeded"

        local_provider.restore_os_disk(failing)

        result = local_provider.read_guest_report(KEY).custom_data
        assert result == CustomDataResult("failed", 3, "custom data script exited with 3: broken")
        output = local_provider.instance_layout(KEY).cloud_init_output_log.read_text()
        assert output.count("running custom data") == 1

    def test_a_reimage_cut_short_after_keeping_the_old_disk_is_finished_by_a_restore(
        self,
        local_provider: LocalProvider,
        spec_for: SpecFactory,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        spec = spec_for(KEY)
        local_provider.create_instance(with_guest(spec, custom_data=b"exit 0\n"))
        wait_for_custom_data(local_provider, KEY)
        LocalDisks(local_provider).write_file(KEY, "os", "note.txt", "generation 1")
        crash_when_writing(monkeypatch, local_provider.instance_layout(KEY).generation)

        with pytest.raises(SimulatedCrash):  # the old disk is kept, the new one not yet in place
            local_provider.reimage_instance(spec_for(KEY, generation=2))
        monkeypatch.undo()
        restarted = LocalProvider(tmp_path / "instances", stop_timeout=2.0)
        assert restarted.describe_instance(KEY).state is InstanceState.STOPPED

        restarted.restore_os_disk(with_guest(spec, custom_data=b"exit 0\n"))

        assert restarted.describe_instance(KEY).state is InstanceState.RUNNING
        assert LocalDisks(restarted).read_file(KEY, "os", "note.txt") == "generation 1"
        assert restarted.read_guest_report(KEY).custom_data == CustomDataResult(
            "succeeded", 0, "custom data script exited with 0"
        )
        restarted.close()

    def test_a_restore_cut_short_is_finished_by_the_next_restore(
        self,
        local_provider: LocalProvider,
        spec_for: SpecFactory,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        spec = spec_for(KEY)
        local_provider.create_instance(spec)
        LocalDisks(local_provider).write_file(KEY, "os", "note.txt", "generation 1")
        local_provider.reimage_instance(spec_for(KEY, generation=2))
        crash_when_writing(monkeypatch, local_provider.instance_layout(KEY).generation)

        with pytest.raises(SimulatedCrash):  # the generation-2 disk is discarded, nothing in place yet
            local_provider.restore_os_disk(spec)
        monkeypatch.undo()
        restarted = LocalProvider(tmp_path / "instances", stop_timeout=2.0)

        restarted.restore_os_disk(spec)

        observation = restarted.describe_instance(KEY)
        assert (observation.state, observation.os_disk_generation) == (InstanceState.RUNNING, 1)
        assert LocalDisks(restarted).read_file(KEY, "os", "note.txt") == "generation 1"
        assert kept_disk_files(restarted, KEY) == []
        restarted.close()

    def test_probe_follows_the_app(self, local_provider: LocalProvider, spec_for: SpecFactory) -> None:
        spec = dataclasses.replace(spec_for(KEY), image=load_image("webapp-broken-2.0.0"))
        local_provider.create_instance(spec)
        request("GET", spec, "/")  # the app is up

        assert local_provider.probe_health(KEY, spec.address, HEALTH_PROBE) is False  # /health says 500
        assert local_provider.probe_health(KEY, spec.address, HealthProbe("Tcp", 8080)) is True


class SimulatedCrash(Exception):
    """The control plane "dies" at this point of an action."""


def crash_when_writing(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """The provider's next atomic write of `target` crashes it before anything is written."""
    real = local_module.write_file_atomically

    def crashing(path: Path, data: str | bytes, **kwargs: int) -> None:
        if Path(path) == target:
            raise SimulatedCrash(str(path))
        real(path, data, **kwargs)

    monkeypatch.setattr(local_module, "write_file_atomically", crashing)
