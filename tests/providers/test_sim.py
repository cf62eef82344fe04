"""The sim provider: held to the conformance suite, then its virtual time, faults and footprint."""

from __future__ import annotations

import dataclasses
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scaleset.api.guest_views import health_state
from scaleset.engine.guest_goal import GuestExpectation, judge_guest
from scaleset.guest.goalstate import ExtensionGoal, GoalState, GuestStatus
from scaleset.providers.base import HealthProbe, ImageArtifact, InstanceSpec, InstanceState, ProviderError
from scaleset.providers.sim import Fault, SimProvider
from tests.fakes import FakeClock
from tests.providers.conformance import DiskAccess, ProviderConformance, SpecFactory, with_guest

KEY = "sim-set/0"
PROBE = HealthProbe("Http", 8080, "/health")
CATALOG = Path("/catalog/eastus/scaleset/webapp/stable")
IMAGE_1 = ImageArtifact(CATALOG / "1.0.0", ("python3", "app.py"), (8080,))
IMAGE_2 = ImageArtifact(CATALOG / "2.0.0", ("python3", "app.py"), (8080,))


def make_spec(
    key: str = KEY, *, generation: int = 1, image: ImageArtifact = IMAGE_1, goal: GoalState | None = None
) -> InstanceSpec:
    return InstanceSpec(
        key=key,
        image=image,
        address="10.0.0.4",
        data_disk_luns=(0,),
        os_disk_generation=generation,
        goal_state=None if goal is None else goal.to_json(),
    )


def extension(name: str = "web", type_: str = "CustomScript", version: str = "2.1.0") -> ExtensionGoal:
    health = type_.startswith("ApplicationHealth")
    publisher = "Microsoft.ManagedServices" if health else "Microsoft.Azure.Extensions"
    return ExtensionGoal(
        name=name,
        publisher=publisher,
        type=type_,
        version=version,
        package_dir="/catalog/extensions/unused",
        seq_no=1,
        public_settings={},
    )


APP_HEALTH = extension("health", "ApplicationHealthLinux", "2.0.0")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> SimProvider:
    return SimProvider(clock, boot_seconds=30)


def healthy(provider: SimProvider, key: str = KEY) -> bool:
    return provider.probe_health(key, "10.0.0.4", PROBE)


def guest_status(provider: SimProvider, key: str = KEY) -> GuestStatus | None:
    text = provider.read_guest_report(key).guest_status
    return None if text is None else GuestStatus.from_json(text)


def reported_health(provider: SimProvider, key: str = KEY) -> str | None:
    status = guest_status(provider, key)
    return None if status is None else health_state(status)


# -- the contract -------------------------------------------------------------------------------------


@pytest.fixture
def conformance_sim() -> Iterator[SimProvider]:
    # The suite polls on wall time without moving the clock: instances are up as soon as they boot.
    provider = SimProvider(FakeClock(), boot_seconds=0)
    yield provider
    for key in provider.list_instance_keys():
        provider.delete_instance(key)
    assert provider.list_instance_keys() == []


class TestSimConformance(ProviderConformance):
    @pytest.fixture
    def provider(self, conformance_sim: SimProvider) -> SimProvider:
        return conformance_sim

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        addresses: dict[str, str] = {}

        def factory(key: str, *, generation: int = 1) -> InstanceSpec:
            address = addresses.setdefault(key, f"10.0.0.{len(addresses) + 4}")
            return dataclasses.replace(make_spec(key, generation=generation), address=address)

        return factory

    @pytest.fixture
    def disks(self, conformance_sim: SimProvider) -> DiskAccess:
        return conformance_sim

    @pytest.fixture
    def serving_probe(self) -> HealthProbe:
        return PROBE  # the sim answers from its model: a running, booted instance is healthy


# -- virtual time ---------------------------------------------------------------------------------------


def test_an_instance_is_running_at_once_but_healthy_only_after_its_boot(
    sim: SimProvider, clock: FakeClock
) -> None:
    sim.create_instance(make_spec())

    assert sim.describe_instance(KEY).state is InstanceState.RUNNING
    assert not healthy(sim)
    clock.advance(29.9)
    assert not healthy(sim)
    clock.advance(0.1)
    assert healthy(sim)


def test_a_five_minute_wait_is_a_clock_advance(sim: SimProvider, clock: FakeClock) -> None:
    slow = SimProvider(clock, boot_seconds=300)
    slow.create_instance(make_spec())

    clock.advance(minutes=4, seconds=59)
    assert not healthy(slow)
    clock.advance(minutes=5)
    assert healthy(slow)


@pytest.mark.parametrize(
    "act",
    [
        lambda p: p.restart_instance(make_spec()),
        lambda p: p.reimage_instance(make_spec(generation=2)),
        lambda p: (p.stop_instance(KEY), p.start_instance(make_spec())),
    ],
    ids=["restart", "reimage", "stop-start"],
)
def test_every_boot_takes_the_boot_time(
    sim: SimProvider, clock: FakeClock, act: Callable[[SimProvider], object]
) -> None:
    sim.create_instance(make_spec())
    clock.advance(30)
    assert healthy(sim)

    act(sim)

    assert sim.describe_instance(KEY).state is InstanceState.RUNNING
    assert not healthy(sim)
    clock.advance(30)
    assert healthy(sim)


def test_actions_that_boot_nothing_keep_the_instance_healthy(sim: SimProvider, clock: FakeClock) -> None:
    sim.create_instance(make_spec())
    clock.advance(30)

    sim.create_instance(make_spec())
    sim.start_instance(make_spec())
    sim.reimage_instance(make_spec())  # the generation it has
    sim.apply_goal_state(make_spec(goal=GoalState(2, (extension(),))))

    assert healthy(sim)


def test_the_guest_reports_once_the_instance_is_up(sim: SimProvider, clock: FakeClock) -> None:
    goal = GoalState(1, (extension(),))
    sim.create_instance(with_guest(make_spec(), goal=goal, custom_data=b"#!/bin/sh\necho hi\n"))

    report = sim.read_guest_report(KEY)
    assert report.custom_data is not None and report.custom_data.state == "running"
    assert report.guest_status is None
    clock.advance(30)
    report = sim.read_guest_report(KEY)
    assert report.custom_data is not None and report.custom_data.state == "succeeded"
    status = guest_status(sim)
    assert status is not None and status.incarnation_applied == 1
    expect = GuestExpectation(1, (("web", False),), custom_data=True)
    assert judge_guest(report, expect).done and judge_guest(report, expect).failure is None


def test_a_new_goal_state_waits_for_a_booting_instance(sim: SimProvider, clock: FakeClock) -> None:
    sim.create_instance(make_spec(goal=GoalState(1, (extension(),))))
    clock.advance(30)
    sim.restart_instance(make_spec(goal=GoalState(1, (extension(),))))
    sim.apply_goal_state(make_spec(goal=GoalState(2, (extension(),))))

    status = guest_status(sim)
    assert status is not None and status.incarnation_applied == 1  # still the one before the restart
    clock.advance(30)
    status = guest_status(sim)
    assert status is not None and status.incarnation_applied == 2


def test_probes_never_touch_the_network(sim: SimProvider, clock: FakeClock) -> None:
    sim.create_instance(make_spec())
    clock.advance(30)

    # An address nothing listens on, a port the image does not serve: the model answers.
    assert sim.probe_health(KEY, "192.0.2.1", HealthProbe("Tcp", 1, timeout_seconds=0.01))
    assert not sim.probe_health("sim-set/404", "192.0.2.1", PROBE)


# -- Application Health, as the guest reports it -----------------------------------------------------


def test_application_health_follows_the_instance(sim: SimProvider, clock: FakeClock) -> None:
    spec = make_spec(goal=GoalState(1, (extension(), APP_HEALTH)))
    sim.create_instance(spec)
    assert reported_health(sim) is None  # the guest has not reported yet
    clock.advance(30)
    assert (reported_health(sim), healthy(sim)) == ("healthy", True)

    sim.restart_instance(spec)
    assert (reported_health(sim), healthy(sim)) == ("initializing", False)
    clock.advance(30)
    assert reported_health(sim) == "healthy"

    sim.stop_instance(KEY)
    assert (reported_health(sim), healthy(sim)) == ("unknown", False)


def test_application_health_status_has_the_handlers_shape(sim: SimProvider, clock: FakeClock) -> None:
    sim.create_instance(make_spec(goal=GoalState(1, (APP_HEALTH,))))
    clock.advance(30)

    status = guest_status(sim)
    assert status is not None
    reported = status.extension("health")
    assert reported is not None and reported.settings_status is not None
    assert reported.handler_name == "Microsoft.ManagedServices.ApplicationHealthLinux"
    assert reported.settings_status.status == "success"
    substatuses = {s.name: (s.status, s.message) for s in reported.settings_status.substatuses}
    assert substatuses == {
        "AppHealthStatus": ("success", "Application found to be healthy"),
        "ApplicationHealthState": ("success", "Healthy"),
    }


def test_binary_application_health_has_no_initializing_state(sim: SimProvider, clock: FakeClock) -> None:
    binary = extension("health", "ApplicationHealthLinux", "1.0.0")
    spec = make_spec(goal=GoalState(1, (binary,)))
    sim.create_instance(spec)
    clock.advance(30)
    sim.add_fault(Fault("flapping", seconds=10))
    sim.restart_instance(spec)

    # Before the first probe the 1.0 handler's placeholder: transitioning, no state.
    assert reported_health(sim) == "initializing"
    clock.advance(30)
    assert reported_health(sim) == "healthy"
    clock.advance(10)
    assert reported_health(sim) == "unhealthy"


# -- faults ---------------------------------------------------------------------------------------------


def test_boot_failure_fails_the_create_and_leaves_the_instance_stopped(sim: SimProvider) -> None:
    sim.add_fault(Fault("boot_failure", message="no bootable device"))

    with pytest.raises(ProviderError, match="no bootable device"):
        sim.create_instance(make_spec())

    observation = sim.describe_instance(KEY)
    assert (observation.state, observation.os_disk_generation) == (InstanceState.STOPPED, 1)
    assert "no bootable device" in observation.message
    assert sim.list_instance_keys() == [KEY]
    sim.clear_faults()
    sim.create_instance(make_spec())  # the retry boots it
    running = dataclasses.replace(observation, state=InstanceState.RUNNING, message="")
    assert sim.describe_instance(KEY) == running


def test_boot_failure_fails_a_reimage_on_the_new_disk(sim: SimProvider, clock: FakeClock) -> None:
    sim.create_instance(make_spec())
    sim.add_fault(Fault("boot_failure", image="2.0.0"))

    with pytest.raises(ProviderError, match="failed to boot"):
        sim.reimage_instance(make_spec(generation=2, image=IMAGE_2))
    with pytest.raises(ProviderError, match="failed to boot"):  # the engine's retry boots again
        sim.reimage_instance(make_spec(generation=2, image=IMAGE_2))

    observation = sim.describe_instance(KEY)
    assert (observation.state, observation.os_disk_generation) == (InstanceState.STOPPED, 2)


def test_hang_runs_but_is_never_healthy_and_its_guest_never_reports(
    sim: SimProvider, clock: FakeClock
) -> None:
    sim.add_fault(Fault("hang"))
    sim.create_instance(with_guest(make_spec(), goal=GoalState(1, (APP_HEALTH,)), custom_data=b"echo"))

    clock.advance(hours=24)

    assert sim.describe_instance(KEY).state is InstanceState.RUNNING
    assert not healthy(sim)
    report = sim.read_guest_report(KEY)
    assert report.custom_data is not None and report.custom_data.state == "running"
    assert report.guest_status is None


def test_slow_boot_takes_its_own_time(sim: SimProvider, clock: FakeClock) -> None:
    sim.add_fault(Fault("slow_boot", seconds=120))
    sim.create_instance(make_spec())

    clock.advance(119)
    assert not healthy(sim)
    clock.advance(1)
    assert healthy(sim)


def test_flapping_alternates_after_boot(sim: SimProvider, clock: FakeClock) -> None:
    sim.add_fault(Fault("flapping", seconds=10))
    sim.create_instance(make_spec(goal=GoalState(1, (APP_HEALTH,))))
    clock.advance(30)

    seen = []
    for _ in range(6):
        seen.append((healthy(sim), reported_health(sim)))
        clock.advance(5)

    healthy_spell, unhealthy_spell = (True, "healthy"), (False, "unhealthy")
    assert seen == [healthy_spell] * 2 + [unhealthy_spell] * 2 + [healthy_spell] * 2
    assert sim.describe_instance(KEY).state is InstanceState.RUNNING


def test_crash_after_healthy_stops_the_instance_by_itself(sim: SimProvider, clock: FakeClock) -> None:
    sim.add_fault(Fault("crash_after_healthy", seconds=60, message="kernel panic"))
    sim.create_instance(make_spec())
    clock.advance(30)
    assert healthy(sim)

    clock.advance(59)
    assert healthy(sim)
    clock.advance(1)

    assert not healthy(sim)
    observation = sim.describe_instance(KEY)
    assert observation.state is InstanceState.STOPPED
    assert "kernel panic" in observation.message
    sim.clear_faults()
    sim.start_instance(make_spec())
    clock.advance(30)
    assert healthy(sim) and sim.describe_instance(KEY).message == ""


@pytest.mark.parametrize("which", ["web", None])
def test_extension_failure_fails_the_named_extension_or_all(
    sim: SimProvider, clock: FakeClock, which: str | None
) -> None:
    sim.add_fault(Fault("extension_failure", extension=which, message="disk full"))
    goal = GoalState(1, (extension("web"), extension("other", "Other")))
    sim.create_instance(make_spec(goal=goal))
    clock.advance(30)

    report = sim.read_guest_report(KEY)
    status = guest_status(sim)
    assert status is not None
    states = {e.name: e.settings_status.status for e in status.extensions if e.settings_status}
    assert states == {"web": "error", "other": "success" if which else "error"}
    verdict = judge_guest(report, GuestExpectation(1, (("web", False), ("other", False)), custom_data=False))
    assert verdict.done and verdict.failure is not None
    assert "Extension 'web' failed: Enable failed: disk full" in verdict.failure
    assert healthy(sim)  # a load balancer does not see extensions


def test_selectors_pick_keys_and_images(sim: SimProvider, clock: FakeClock) -> None:
    sim.add_fault(Fault("hang", keys={"sim-set/1"}))
    sim.add_fault(Fault("hang", image="2.0.0"))
    for index in range(3):
        sim.create_instance(make_spec(f"sim-set/{index}"))
    clock.advance(30)

    assert [healthy(sim, f"sim-set/{index}") for index in range(3)] == [True, False, True]

    sim.reimage_instance(make_spec("sim-set/2", generation=2, image=IMAGE_2))
    sim.reimage_instance(make_spec("sim-set/0", generation=2, image=dataclasses.replace(IMAGE_1)))
    clock.advance(30)
    assert (healthy(sim, "sim-set/0"), healthy(sim, "sim-set/2")) == (True, False)
    assert sim.faults_of("sim-set/2") == (Fault("hang", image="2.0.0"),)


def test_the_image_selector_takes_the_whole_path_too(sim: SimProvider, clock: FakeClock) -> None:
    sim.add_fault(Fault("hang", image=str(IMAGE_2.path)))
    sim.create_instance(make_spec("sim-set/a", image=IMAGE_1))
    sim.create_instance(make_spec("sim-set/b", image=IMAGE_2))
    clock.advance(30)

    assert (healthy(sim, "sim-set/a"), healthy(sim, "sim-set/b")) == (True, False)


def faulted_keys(seed: int, count: int, rate: float, *, reverse: bool = False) -> set[str]:
    provider = SimProvider(FakeClock(), seed=seed, faults=[Fault("hang", rate=rate)])
    keys = [f"sim-set/{index}" for index in range(count)]
    for key in reversed(keys) if reverse else keys:
        provider.create_instance(make_spec(key))
    return {key for key in keys if provider.faults_of(key)}


def test_rate_faults_are_reproducible_and_honour_the_rate() -> None:
    first = faulted_keys(seed=7, count=1000, rate=0.2)

    assert faulted_keys(seed=7, count=1000, rate=0.2) == first
    assert faulted_keys(seed=7, count=1000, rate=0.2, reverse=True) == first  # whatever the boot order
    assert faulted_keys(seed=8, count=1000, rate=0.2) != first
    assert 150 <= len(first) <= 250


def test_rate_is_drawn_again_at_every_boot(clock: FakeClock) -> None:
    sim = SimProvider(clock, seed=1, faults=[Fault("hang", rate=0.5)])
    sim.create_instance(make_spec())
    draws = []
    for _ in range(200):
        draws.append(bool(sim.faults_of(KEY)))
        sim.restart_instance(make_spec())

    assert 70 <= sum(draws) <= 130


def test_clear_faults_spares_later_boots_only(sim: SimProvider, clock: FakeClock) -> None:
    sim.add_fault(Fault("hang"))
    sim.create_instance(make_spec())
    assert sim.faults == (Fault("hang"),)

    sim.clear_faults()
    clock.advance(60)
    assert not healthy(sim)  # what struck sticks until the next boot
    assert not sim.faults
    sim.restart_instance(make_spec())
    clock.advance(30)
    assert healthy(sim) and sim.faults_of(KEY) == ()


def test_faults_given_up_front_count_like_added_ones(clock: FakeClock) -> None:
    sim = SimProvider(clock, boot_seconds=5, faults=[Fault("slow_boot", seconds=50, keys=[KEY])])
    sim.create_instance(make_spec())
    sim.create_instance(make_spec("sim-set/9"))
    clock.advance(5)

    assert (healthy(sim), healthy(sim, "sim-set/9")) == (False, True)


def test_restore_after_a_bad_reimage_gives_back_a_healthy_instance(
    sim: SimProvider, clock: FakeClock
) -> None:
    goal = GoalState(1, (APP_HEALTH,))
    sim.create_instance(with_guest(make_spec(), goal=goal, custom_data=b"echo"))
    clock.advance(30)
    sim.write_file(KEY, "os", "state", "version 1")
    sim.add_fault(Fault("hang", image="2.0.0"))
    sim.reimage_instance(with_guest(make_spec(generation=2, image=IMAGE_2), goal=goal, custom_data=b"echo"))
    clock.advance(minutes=10)
    assert not healthy(sim)

    sim.restore_os_disk(with_guest(make_spec(), goal=goal, custom_data=b"echo"))

    observation = sim.describe_instance(KEY)
    assert (observation.state, observation.os_disk_generation) == (InstanceState.RUNNING, 1)
    assert sim.read_file(KEY, "os", "state") == "version 1"
    custom_data = sim.read_guest_report(KEY).custom_data
    assert custom_data is not None and custom_data.state == "succeeded"  # not run again
    clock.advance(30)
    assert healthy(sim) and reported_health(sim) == "healthy"


def test_restore_swaps_the_two_disks(sim: SimProvider, clock: FakeClock) -> None:
    sim.create_instance(make_spec())
    sim.reimage_instance(make_spec(generation=2, image=IMAGE_2))
    sim.restore_os_disk(make_spec())

    sim.restore_os_disk(make_spec(generation=2, image=IMAGE_2))  # and back: the disk restore replaced

    assert sim.describe_instance(KEY).os_disk_generation == 2


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        Fault("meltdown")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate"):
        Fault("hang", rate=1.5)
    with pytest.raises(ValueError, match="flapping"):
        Fault("flapping")
    with pytest.raises(ValueError, match="seconds"):
        Fault("slow_boot", seconds=-1)
    with pytest.raises(ValueError, match="collection"):
        Fault("hang", keys=KEY)
    with pytest.raises(ValueError, match="boot_seconds"):
        SimProvider(FakeClock(), boot_seconds=-1)
    assert Fault("hang", keys=[KEY, KEY]).keys == frozenset({KEY})


def test_actions_on_a_missing_instance_are_provider_errors(sim: SimProvider) -> None:
    acts: list[Callable[[], None]] = [
        lambda: sim.start_instance(make_spec()),
        lambda: sim.stop_instance(KEY),
        lambda: sim.deallocate_instance(KEY),
        lambda: sim.restart_instance(make_spec()),
        lambda: sim.reimage_instance(make_spec(generation=2)),
        lambda: sim.restore_os_disk(make_spec()),
        lambda: sim.apply_goal_state(make_spec()),
        lambda: sim.write_file(KEY, "os", "a", "b"),
    ]
    for act in acts:
        with pytest.raises(ProviderError, match="no instance"):
            act()
    sim.delete_instance(KEY)
    assert sim.faults_of(KEY) == ()


def test_a_data_disk_the_model_lacks_is_a_provider_error(sim: SimProvider) -> None:
    sim.create_instance(make_spec())

    with pytest.raises(ProviderError, match="LUN 3"):
        sim.read_file(KEY, 3, "x")
    sim.reimage_instance(dataclasses.replace(make_spec(generation=2), data_disk_luns=(0, 3)))
    assert sim.read_file(KEY, 3, "x") is None


# -- footprint ------------------------------------------------------------------------------------------


def test_a_big_fleet_stays_small(clock: FakeClock) -> None:
    count = 20_000
    goal = GoalState(1, (APP_HEALTH,)).to_json()  # one document for the whole fleet, as the engine gives
    sim = SimProvider(clock, faults=[Fault("flapping", seconds=10, rate=0.01)])
    tracemalloc.start()
    try:
        for index in range(count):
            key = f"3f2504e0-4f89-11d3-9a0c-0305e82c3301/{index}"
            sim.create_instance(InstanceSpec(key, IMAGE_1, "10.0.0.4", (0,), goal_state=goal))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak / count < 2048, f"{peak / count:.0f} bytes per instance"
    clock.advance(30)
    assert sum(sim.probe_health(key, "", PROBE) for key in sim.list_instance_keys()) > count * 0.98


def test_the_example_in_the_docs_runs(capsys: pytest.CaptureFixture[str]) -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "sim-provider.md"
    example = docs.read_text().split("```python\n", 1)[1].split("```", 1)[0]

    exec(compile(example, str(docs), "exec"), {"__name__": "sim_example"})

    printed = capsys.readouterr().out.splitlines()
    assert printed[:4] == ["False", "True", "True", "False"]
    assert printed[5] == "False" and printed[6].endswith("True")


def test_many_probes_answer_as_one_probe_each(sim: SimProvider, clock: FakeClock) -> None:
    """`probe_health_many` (what the rolling loop calls for a batch) agrees with `probe_health`, in order,
    whatever the instances' states: up, booting, stopped, hanging, or not there at all."""
    sim.add_fault(Fault("hang", keys=("sim-set/3",)))
    for index in range(4):
        sim.create_instance(make_spec(f"sim-set/{index}"))
    clock.advance(30)
    sim.reimage_instance(make_spec("sim-set/1", generation=2))  # booting again
    sim.stop_instance("sim-set/2")
    keys = [f"sim-set/{index}" for index in (0, 1, 2, 3, 404, 0)]

    many = sim.probe_health_many([(key, "10.0.0.4") for key in keys], PROBE)

    assert many == [healthy(sim, key) for key in keys]
    assert many == [True, False, False, False, False, True]
