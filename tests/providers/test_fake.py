"""The fake provider: held to the same conformance suite as real providers, then its steering knobs.

A fake that is not held to the contract rots (libcloud's dummy driver, DESIGN.md); the engine tests trust
it only because it passes the suite below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scaleset.providers.base import HealthProbe, ImageArtifact, InstanceSpec, InstanceState, ProviderError
from tests.fakes import FakeClock, FakeProvider
from tests.providers.conformance import DiskAccess, ProviderConformance, SpecFactory, with_guest

KEY = "fake-set/0"
PROBE = HealthProbe("Http", 8080, "/health")


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    yield provider
    for key in provider.list_instance_keys():
        provider.delete_instance(key)
    assert provider.list_instance_keys() == []


@pytest.fixture
def spec_for(tmp_path: Path) -> SpecFactory:
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    image = ImageArtifact(path=image_dir, entrypoint=("python3", "app.py"), ports=(8080,))
    addresses: dict[str, str] = {}

    def make_spec(key: str, *, generation: int = 1) -> InstanceSpec:
        address = addresses.setdefault(key, f"127.99.0.{len(addresses) + 1}")
        return InstanceSpec(
            key=key, image=image, address=address, data_disk_luns=(0,), os_disk_generation=generation
        )

    return make_spec


class TestFakeConformance(ProviderConformance):
    @pytest.fixture
    def provider(self, fake: FakeProvider) -> FakeProvider:
        return fake

    @pytest.fixture
    def make_spec(self, spec_for: SpecFactory) -> SpecFactory:
        return spec_for

    @pytest.fixture
    def disks(self, fake: FakeProvider) -> DiskAccess:
        return fake

    @pytest.fixture
    def serving_probe(self) -> HealthProbe:
        return PROBE  # the fake answers from its model: any probe of a running instance is healthy


# -- what only the fake offers ------------------------------------------------------------------------


def test_calls_are_recorded_in_order_and_work_is_counted(fake: FakeProvider, spec_for: SpecFactory) -> None:
    fake.create_instance(spec_for(KEY))
    fake.create_instance(spec_for(KEY))
    fake.reimage_instance(spec_for(KEY, generation=2))
    fake.reimage_instance(spec_for(KEY, generation=2))
    fake.stop_instance(KEY)
    fake.delete_instance(KEY)
    fake.delete_instance(KEY)

    assert fake.calls == [
        ("create", KEY),
        ("create", KEY),
        ("reimage", KEY),
        ("reimage", KEY),
        ("stop", KEY),
        ("delete", KEY),
        ("delete", KEY),
    ]
    assert (fake.created[KEY], fake.reimaged[KEY], fake.deleted[KEY]) == (1, 1, 1)


def test_restore_is_recorded_counted_and_uses_the_kept_disk_up(
    fake: FakeProvider, spec_for: SpecFactory
) -> None:
    fake.create_instance(spec_for(KEY))
    fake.reimage_instance(spec_for(KEY, generation=2))

    fake.restore_os_disk(spec_for(KEY))
    fake.restore_os_disk(spec_for(KEY))  # the same disk: no-op

    assert fake.calls_on(KEY) == ["create", "reimage", "restore", "restore"]
    assert (fake.reimaged[KEY], fake.restored[KEY]) == (1, 1)
    with pytest.raises(ProviderError, match="keeps none"):
        fake.restore_os_disk(spec_for(KEY, generation=2))  # the generation-2 disk was discarded


def test_only_the_disk_before_the_last_reimage_is_kept(fake: FakeProvider, spec_for: SpecFactory) -> None:
    fake.create_instance(spec_for(KEY))
    fake.reimage_instance(spec_for(KEY, generation=2))
    fake.reimage_instance(spec_for(KEY, generation=3))

    with pytest.raises(ProviderError, match="keeps generation 2"):
        fake.restore_os_disk(spec_for(KEY))
    fake.restore_os_disk(spec_for(KEY, generation=2))
    assert fake.describe_instance(KEY).os_disk_generation == 2


def test_restore_obeys_injected_failures_and_the_gate(fake: FakeProvider, spec_for: SpecFactory) -> None:
    fake.create_instance(spec_for(KEY))
    fake.reimage_instance(spec_for(KEY, generation=2))
    fake.fail_next("restore", KEY, "disk snapshot unavailable")

    with pytest.raises(ProviderError, match="disk snapshot unavailable"):
        fake.restore_os_disk(spec_for(KEY))
    assert fake.describe_instance(KEY).os_disk_generation == 2

    gate = threading.Event()
    fake.gate = gate
    worker = threading.Thread(target=fake.restore_os_disk, args=(spec_for(KEY),))
    worker.start()
    try:
        fake.wait_blocked(1)
        assert fake.describe_instance(KEY).os_disk_generation == 2
    finally:
        gate.set()
        worker.join(timeout=5)
    assert fake.describe_instance(KEY).os_disk_generation == 1
    assert fake.restored[KEY] == 1


def test_restored_disk_reports_as_after_a_later_boot(fake: FakeProvider, spec_for: SpecFactory) -> None:
    fake.create_instance(with_guest(spec_for(KEY), custom_data=b"echo hi"))
    fake.reimage_instance(spec_for(KEY, generation=2))  # no custom data on the new disk
    assert fake.read_guest_report(KEY).custom_data is None

    fake.restore_os_disk(with_guest(spec_for(KEY), custom_data=b"echo hi"))

    report = fake.read_guest_report(KEY).custom_data
    assert report is not None and (report.state, report.exit_code) == ("succeeded", 0)
    assert fake.custom_data_runs[KEY] == 1


def test_snapshot_keeps_the_kept_disk(fake: FakeProvider, spec_for: SpecFactory) -> None:
    fake.create_instance(spec_for(KEY))
    fake.write_file(KEY, "os", "note", "generation 1")
    fake.reimage_instance(spec_for(KEY, generation=2))

    restarted = FakeProvider(initial=fake.snapshot())
    restarted.restore_os_disk(spec_for(KEY))

    assert restarted.read_file(KEY, "os", "note") == "generation 1"
    assert fake.describe_instance(KEY).os_disk_generation == 2


def test_probe_health_follows_the_power_state_unless_steered(
    fake: FakeProvider, spec_for: SpecFactory
) -> None:
    address = spec_for(KEY).address
    assert fake.probe_health(KEY, address, PROBE) is False
    fake.create_instance(spec_for(KEY))
    assert fake.probe_health(KEY, address, PROBE) is True

    fake.set_probe_health(KEY, False)
    assert fake.probe_health(KEY, address, PROBE) is False
    fake.stop_instance(KEY)
    fake.set_probe_health(KEY, True)
    assert fake.probe_health(KEY, address, PROBE) is True  # steered: whatever the instance does

    fake.set_probe_health(KEY, None)
    assert fake.probe_health(KEY, address, PROBE) is False
    assert fake.verbs() == ["create", "stop"]  # probes are not actions


def test_fail_next_fails_once_and_changes_nothing(fake: FakeProvider, spec_for: SpecFactory) -> None:
    fake.fail_next("create", KEY, "no capacity left")

    with pytest.raises(ProviderError, match="no capacity left"):
        fake.create_instance(spec_for(KEY))
    assert fake.describe_instance(KEY).state is InstanceState.MISSING

    fake.create_instance(spec_for(KEY))
    assert fake.describe_instance(KEY).state is InstanceState.RUNNING


def test_fail_always_keeps_failing_until_cleared(fake: FakeProvider, spec_for: SpecFactory) -> None:
    fake.create_instance(spec_for(KEY))
    fake.fail_always("stop", KEY, "stuck")

    for _ in range(2):
        with pytest.raises(ProviderError, match="stuck"):
            fake.stop_instance(KEY)
    fake.clear_failures()
    fake.stop_instance(KEY)

    assert fake.describe_instance(KEY).state is InstanceState.STOPPED


def test_actions_on_a_missing_instance_are_provider_errors(fake: FakeProvider, spec_for: SpecFactory) -> None:
    acts: list[Callable[[], None]] = [
        lambda: fake.start_instance(spec_for(KEY)),
        lambda: fake.stop_instance(KEY),
        lambda: fake.deallocate_instance(KEY),
        lambda: fake.restart_instance(spec_for(KEY)),
        lambda: fake.reimage_instance(spec_for(KEY, generation=2)),
        lambda: fake.restore_os_disk(spec_for(KEY)),
    ]
    for act in acts:
        with pytest.raises(ProviderError, match="no instance"):
            act()


def test_create_from_a_missing_image_is_a_provider_error(fake: FakeProvider, spec_for: SpecFactory) -> None:
    spec = spec_for(KEY)
    missing = InstanceSpec(
        key=KEY, image=ImageArtifact(spec.image.path / "gone", ("app",)), address=spec.address
    )

    with pytest.raises(ProviderError, match="does not exist"):
        fake.create_instance(missing)


@pytest.mark.parametrize("point", ["before", "after"])
def test_gate_holds_actions_until_released(spec_for: SpecFactory, point: str) -> None:
    gate = threading.Event()
    fake = FakeProvider(gate=gate, gate_point="before" if point == "before" else "after")
    worker = threading.Thread(target=fake.create_instance, args=(spec_for(KEY),))
    worker.start()
    try:
        fake.wait_blocked(1)
        expected = InstanceState.MISSING if point == "before" else InstanceState.RUNNING
        assert fake.describe_instance(KEY).state is expected
        assert fake.calls == [("create", KEY)]
    finally:
        gate.set()
        worker.join(timeout=5)
    assert fake.blocked == 0
    assert fake.describe_instance(KEY).state is InstanceState.RUNNING


def test_gate_gives_up_after_its_timeout(spec_for: SpecFactory) -> None:
    fake = FakeProvider(gate=threading.Event(), gate_timeout=0.01)

    with pytest.raises(ProviderError, match="gate"):
        fake.create_instance(spec_for(KEY))


def test_two_actions_at_once_on_one_key_are_reported(spec_for: SpecFactory) -> None:
    gate = threading.Event()
    fake = FakeProvider(gate=gate)
    workers = [threading.Thread(target=fake.create_instance, args=(spec_for(KEY),)) for _ in range(2)]
    for worker in workers:
        worker.start()
    fake.wait_blocked(2)
    gate.set()
    for worker in workers:
        worker.join(timeout=5)

    assert fake.overlaps == [KEY]
    assert fake.created[KEY] == 1


def test_crash_shows_as_stopped_with_a_message(fake: FakeProvider, spec_for: SpecFactory) -> None:
    fake.create_instance(spec_for(KEY))

    fake.crash(KEY, "kernel panic")

    observation = fake.describe_instance(KEY)
    assert (observation.state, observation.message) == (InstanceState.STOPPED, "kernel panic")
    fake.start_instance(spec_for(KEY))
    assert fake.describe_instance(KEY).message == ""


def test_snapshot_seeds_a_new_fake_independently(fake: FakeProvider, spec_for: SpecFactory) -> None:
    fake.create_instance(spec_for(KEY))
    fake.write_file(KEY, 0, "kept", "data")

    restarted = FakeProvider(initial=fake.snapshot())
    restarted.create_instance(spec_for(KEY))
    restarted.write_file(KEY, 0, "kept", "changed")

    assert restarted.created[KEY] == 0
    assert restarted.describe_instance(KEY).state is InstanceState.RUNNING
    assert fake.read_file(KEY, 0, "kept") == "data"


def test_fake_clock_is_utc_and_moves_only_forward() -> None:
    clock = FakeClock(datetime(2024, 5, 1, tzinfo=UTC))

    assert clock.advance(minutes=5) == datetime(2024, 5, 1, 0, 5, tzinfo=UTC)
    assert clock.advance(30) == datetime(2024, 5, 1, 0, 5, 30, tzinfo=UTC)
    clock.set(datetime(2025, 1, 1, 1, 0, tzinfo=UTC) + timedelta(hours=1))
    assert clock.now() == datetime(2025, 1, 1, 2, 0, tzinfo=UTC)
    assert clock.now().tzinfo is UTC
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.set(datetime(2025, 1, 1))  # naive
