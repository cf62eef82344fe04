"""The health reader's batched probe (`HealthReader._probe_many`, what the rolling loop asks for a whole
batch) must give exactly the verdicts one `_probe` per instance gives: the same interval caching and the
same `numberOfProbes` streak rule (a load balancer's), instance by instance (M-11). So must the batched
check above it (`HealthPass.many_checker`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaleset.engine.health import HealthReader
from scaleset.providers.base import HealthProbe, ImageArtifact, InstanceSpec
from scaleset.providers.sim import Fault, SimProvider
from scaleset.services.loadbalancers import ProbeSettings
from tests.fakes import FakeClock

PROBE = HealthProbe("Http", 8080, "/health")


def spec(key: str) -> InstanceSpec:
    return InstanceSpec(key=key, image=ImageArtifact(Path("/images/1.0.0"), ("app",)), address="10.0.0.4")


@pytest.mark.parametrize("number_of_probes", [1, 2, 3])
def test_many_probes_give_the_verdicts_of_one_probe_each(number_of_probes: int) -> None:
    clock = FakeClock()
    sim = SimProvider(clock, boot_seconds=10, seed=3)
    sim.add_fault(Fault("flapping", seconds=7, keys=("s/1", "s/3")))
    sim.add_fault(Fault("hang", keys=("s/2",)))
    keys = [f"s/{index}" for index in range(5)]
    for key in keys:
        sim.create_instance(spec(key))
    settings = ProbeSettings(PROBE, interval_seconds=5, number_of_probes=number_of_probes)
    one = HealthReader(sim, clock, lambda _: settings)
    many = HealthReader(sim, clock, lambda _: settings)
    seen = []
    for step in range(40):
        targets = [(key, "10.0.0.4", 1 + step // 20) for key in keys]  # a new OS disk halfway
        singly = [one._probe(key, address, generation, settings) for key, address, generation in targets]
        assert many._probe_many(targets, settings) == singly
        seen.append(tuple(singly))
        clock.advance(2)  # less than the interval: some answers come from the kept streak
    assert len(set(seen)) >= 3  # the verdicts did move: booting, flapping, a new disk


def test_a_target_named_twice_in_one_call_is_probed_once() -> None:
    """As two `_probe` calls in a row: the second finds the first's answer within the interval, so a
    `numberOfProbes` streak counts one probe, not two."""
    clock = FakeClock()
    sim = SimProvider(clock, boot_seconds=10)
    sim.create_instance(spec("s/0"))
    settings = ProbeSettings(PROBE, interval_seconds=5, number_of_probes=2)
    one = HealthReader(sim, clock, lambda _: settings)
    many = HealthReader(sim, clock, lambda _: settings)
    for _ in range(6):
        target = ("s/0", "10.0.0.4", 1)
        singly = [one._probe(*target, settings), one._probe(*target, settings)]
        assert many._probe_many([target, target], settings) == singly
        clock.advance(5)


MODEL = {"networkProfile": {"healthProbe": {"id": "lb/probes/http"}}}


def test_a_batched_check_gives_each_instance_the_verdict_of_its_own_check() -> None:
    """`HealthPass.many_checker`: instances not running (or not provisioned) are unhealthy without a probe;
    the others as one probe each would say."""
    clock = FakeClock()
    sim = SimProvider(clock, boot_seconds=0)
    sim.add_fault(Fault("hang", keys=("s/1",)))
    for index in range(4):
        sim.create_instance(spec(f"s/{index}"))
    settings = ProbeSettings(PROBE, interval_seconds=5, number_of_probes=1)
    running = [(f"s/{index}", "10.0.0.4", 1, "running", "succeeded") for index in range(4)]
    mixed = [
        *running[:2],
        ("s/2", "10.0.0.4", 1, "stopped", "succeeded"),
        ("s/3", "10.0.0.4", 1, "running", "failed"),
    ]
    for looked in (running, mixed):
        clock.advance(5)
        one = HealthReader(sim, clock, lambda _: settings).one_pass().checker(MODEL)
        many = HealthReader(sim, clock, lambda _: settings).one_pass().many_checker(MODEL)
        assert many(looked) == [one(*instance) for instance in looked]
    assert many(running) == [True, False, True, True]
    assert many(mixed) == [True, False, False, False]
