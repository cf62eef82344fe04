"""Instance health, from the one health source a set's model names (M-11, azure-api.md §4.2, §4.5).

- A load-balancer probe (`networkProfile.healthProbe`): the control plane probes the instance's address
  (through the provider, which may simulate it) at most once per `intervalInSeconds`; after the first
  answer, the state changes only when `numberOfProbes` answers in a row agree, as a load balancer does.
- The Application Health extension: the health state the guest reports (healthy, unhealthy, unknown,
  initializing).
- Neither: the platform's fallback — healthy while the instance runs and its provisioning (custom data
  and every extension) succeeded.

An instance that is not running, or whose provisioning is not done, is unhealthy whatever the source.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from scaleset.api.guest_views import guest_status_of, health_state
from scaleset.domain.scaleset_spec import has_application_health_extension
from scaleset.engine.clock import Clock
from scaleset.providers.base import Provider
from scaleset.services.loadbalancers import ProbeSettings

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
INITIALIZING = "initializing"


@dataclass(frozen=True)
class InstanceFacts:
    """What the health reader needs to know of one instance row."""

    key: str
    address: str
    os_disk_generation: int
    power_state: str
    provisioning_state: str


@dataclass(slots=True)
class _Streak:
    state: bool
    last: bool
    run: int
    checked_at: datetime


class HealthReader:
    def __init__(
        self, provider: Provider, clock: Clock, find_probe: Callable[[str], ProbeSettings | None]
    ) -> None:
        self._provider = provider
        self._clock = clock
        self._find_probe = find_probe
        self._streaks: dict[tuple[str, int], _Streak] = {}
        self._lock = threading.Lock()

    def state(self, model: Mapping[str, Any], facts: InstanceFacts) -> str:
        """healthy | unhealthy | unknown | initializing."""
        return self._state(model, facts, self._find_probe)

    def is_healthy(self, model: Mapping[str, Any], facts: InstanceFacts) -> bool:
        return self.state(model, facts) == HEALTHY

    def one_pass(self) -> HealthPass:
        """A reader for the many instances one pass looks at (see `HealthPass`)."""
        return HealthPass(self)

    def _state(
        self,
        model: Mapping[str, Any],
        facts: InstanceFacts,
        find_probe: Callable[[str], ProbeSettings | None],
    ) -> str:
        if facts.power_state != "running" or facts.provisioning_state != "succeeded":
            return UNHEALTHY
        probe_id = probe_id_of(model)
        if probe_id:
            source = find_probe(probe_id)
            if source is None:  # the probe is gone: nothing can say the instance is healthy
                return "unknown"
            probed = self._probe(facts.key, facts.address, facts.os_disk_generation, source)
            return HEALTHY if probed else UNHEALTHY
        if has_application_health_extension(model):
            status = guest_status_of(self._provider.read_guest_report(facts.key))
            reported = health_state(status) if status is not None else None
            return reported or INITIALIZING
        return HEALTHY

    def forget(self, key: str) -> None:
        with self._lock:
            for stale in [k for k in self._streaks if k[0] == key]:
                del self._streaks[stale]

    def _probe(self, key: str, address: str, generation: int, source: ProbeSettings) -> bool:
        now = self._clock.now()
        streak_key = (key, generation)
        # Within the interval the answer is the kept one: read without the lock (a dict read and two
        # attribute reads are atomic under the GIL; a streak updated meanwhile only moves `checked_at`
        # forward, so at worst this probes once more, as a caller a moment earlier would have).
        streak = self._streaks.get(streak_key)
        if streak is not None and now < streak.checked_at + _interval(source.interval_seconds):
            return streak.state
        answer = self._provider.probe_health(key, address, source.probe)
        with self._lock:
            return self._record_answer(streak_key, answer, now, source.number_of_probes)

    def _record_answer(self, streak_key: tuple[str, int], answer: bool, now: datetime, needed: int) -> bool:
        """Add a probe's answer to the instance's streak (the caller holds the lock); its verdict now: the
        state changes only once `needed` answers in a row agree, as a load balancer's does."""
        streak = self._streaks.get(streak_key)
        if streak is None:
            # A new OS disk starts with no history: its first answer is its state.
            self._streaks[streak_key] = _Streak(answer, answer, 1, now)
            return answer
        streak.run = streak.run + 1 if answer == streak.last else 1
        streak.last = answer
        streak.checked_at = now
        if streak.run >= max(1, needed):
            streak.state = answer
        return streak.state

    def _probe_many(self, targets: Sequence[tuple[str, str, int]], source: ProbeSettings) -> list[bool]:
        """`_probe` for many (key, address, OS disk generation) at once, with the same answers: the clock
        read once, the provider asked once for all that are due (`Provider.probe_health_many`), the lock
        taken once. A rolling upgrade of 100 000 instances makes over a million probes."""
        now = self._clock.now()
        # `now < checked_at + interval`, as `_probe` asks, without a datetime made per instance.
        stale = now - _interval(source.interval_seconds)
        streaks = self._streaks
        verdicts: list[bool] = []
        # (key, generation) → the indexes that ask for it: a target named twice is probed once, as the
        # second of two `_probe` calls would find the first's answer within the interval.
        due: dict[tuple[str, int], list[int]] = {}
        for index, (key, _, generation) in enumerate(targets):
            streak = streaks.get((key, generation))
            if streak is not None and stale < streak.checked_at:
                verdicts.append(streak.state)
            else:
                verdicts.append(False)
                due.setdefault((key, generation), []).append(index)
        if not due:
            return verdicts
        answers = self._provider.probe_health_many(
            [(key, targets[indexes[0]][1]) for (key, _), indexes in due.items()], source.probe
        )
        with self._lock:
            for (streak_key, indexes), answer in zip(due.items(), answers, strict=True):
                verdict = self._record_answer(streak_key, answer, now, source.number_of_probes)
                for index in indexes:
                    verdicts[index] = verdict
        return verdicts


def probe_id_of(model: Mapping[str, Any]) -> str | None:
    """The load-balancer probe a model names as its health source, if any."""
    probe_id = ((model.get("networkProfile") or {}).get("healthProbe") or {}).get("id")
    return str(probe_id) if probe_id else None


# What a health check is given of one instance: key, address, OS disk generation, power state, provisioning.
_Looked = tuple[str, str, int, str, str]


@lru_cache(maxsize=64)
def _interval(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)


class HealthPass:
    """The health of the many instances one engine pass looks at.

    A probe's settings come from the database (its load balancer's document); read once per pass here
    instead of once per instance, they were most of the cost of a rolling upgrade (a pass looks at every
    member of the current batch, or at every instance of the set before a batch). A pass is short, and a
    probe changed during it takes effect at the next one, as it would had the change come a moment later.
    """

    def __init__(self, reader: HealthReader) -> None:
        self._reader = reader
        self._probes: dict[str, ProbeSettings | None] = {}
        self._sources: dict[int, tuple[Mapping[str, Any], str | None, ProbeSettings | None]] = {}

    def state(self, model: Mapping[str, Any], facts: InstanceFacts) -> str:
        return self._reader._state(model, facts, self._find_probe)

    def is_healthy(self, model: Mapping[str, Any], facts: InstanceFacts) -> bool:
        return self.state(model, facts) == HEALTHY

    def is_healthy_now(
        self,
        model: Mapping[str, Any],
        key: str,
        address: str,
        generation: int,
        power_state: str,
        provisioning_state: str,
    ) -> bool:
        """`is_healthy` from the instance's columns: the engine asks this a few million times in an
        upgrade of 100 000 instances, so the common case (a probe, or not running) builds nothing."""
        if power_state != "running" or provisioning_state != "succeeded":
            return False
        sources = self._sources.get(id(model))
        if sources is None:
            probe_id = probe_id_of(model)
            # The model itself is kept beside its id, so that the id cannot be reused during the pass.
            sources = (model, probe_id, self._find_probe(probe_id) if probe_id else None)
            self._sources[id(model)] = sources
        _, probe_id, source = sources
        if probe_id is None:
            facts = InstanceFacts(key, address, generation, power_state, provisioning_state)
            return self.state(model, facts) == HEALTHY
        if source is None:
            return False  # the probe is gone: "unknown"
        return self._reader._probe(key, address, generation, source)

    def checker(self, model: Mapping[str, Any]) -> Callable[[str, str, int, str, str], bool]:
        """`is_healthy_now` for the instances of one model, its health source looked up once: what the
        engine calls for each of the hundreds of instances of a set it looks at in a pass."""
        probe_id = probe_id_of(model)
        source = self._find_probe(probe_id) if probe_id else None
        if probe_id is None or source is None:

            def other(
                key: str, address: str, generation: int, power_state: str, provisioning_state: str
            ) -> bool:
                return self.is_healthy_now(model, key, address, generation, power_state, provisioning_state)

            return other
        probe = self._reader._probe

        def probed(
            key: str, address: str, generation: int, power_state: str, provisioning_state: str
        ) -> bool:
            if power_state != "running" or provisioning_state != "succeeded":
                return False
            return probe(key, address, generation, source)

        return probed

    def many_checker(self, model: Mapping[str, Any]) -> Callable[[Sequence[_Looked]], list[bool]]:
        """`checker` for many instances of one model at once: (key, address, OS disk generation, power
        state, provisioning state) each → healthy now, in order. With a load-balancer probe the due probes
        go to the provider in one call (`HealthReader._probe_many`); any other source asks one by one."""
        probe_id = probe_id_of(model)
        source = self._find_probe(probe_id) if probe_id else None
        if probe_id is None or source is None:
            one = self.checker(model)
            return lambda looked: [one(*instance) for instance in looked]
        probe_many = self._reader._probe_many

        def probed(looked: Sequence[_Looked]) -> list[bool]:
            verdicts = [False] * len(looked)
            running = [
                index
                for index, (_, _, _, power_state, provisioning_state) in enumerate(looked)
                if power_state == "running" and provisioning_state == "succeeded"
            ]
            answers = probe_many([looked[index][:3] for index in running], source)
            for index, answer in zip(running, answers, strict=True):
                verdicts[index] = answer
            return verdicts

        return probed

    def _find_probe(self, probe_id: str) -> ProbeSettings | None:
        if probe_id not in self._probes:
            self._probes[probe_id] = self._reader._find_probe(probe_id)
        return self._probes[probe_id]
