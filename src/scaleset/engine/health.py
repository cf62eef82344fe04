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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
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


@dataclass
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
        if facts.power_state != "running" or facts.provisioning_state not in ("succeeded",):
            return UNHEALTHY
        probe_id = ((model.get("networkProfile") or {}).get("healthProbe") or {}).get("id")
        if probe_id:
            source = self._find_probe(str(probe_id))
            if source is None:  # the probe is gone: nothing can say the instance is healthy
                return "unknown"
            return HEALTHY if self._probe(facts, source) else UNHEALTHY
        if has_application_health_extension(model):
            status = guest_status_of(self._provider.read_guest_report(facts.key))
            reported = health_state(status) if status is not None else None
            return reported or INITIALIZING
        return HEALTHY

    def is_healthy(self, model: Mapping[str, Any], facts: InstanceFacts) -> bool:
        return self.state(model, facts) == HEALTHY

    def forget(self, key: str) -> None:
        with self._lock:
            for stale in [k for k in self._streaks if k[0] == key]:
                del self._streaks[stale]

    def _probe(self, facts: InstanceFacts, source: ProbeSettings) -> bool:
        now = self._clock.now()
        streak_key = (facts.key, facts.os_disk_generation)
        with self._lock:
            streak = self._streaks.get(streak_key)
            if streak is not None and now < streak.checked_at + timedelta(seconds=source.interval_seconds):
                return streak.state
        answer = self._provider.probe_health(facts.key, facts.address, source.probe)
        with self._lock:
            streak = self._streaks.get(streak_key)
            if streak is None:
                # A new OS disk starts with no history: its first answer is its state.
                self._streaks[streak_key] = _Streak(answer, answer, 1, now)
                return answer
            streak.run = streak.run + 1 if answer == streak.last else 1
            streak.last = answer
            streak.checked_at = now
            if streak.run >= max(1, source.number_of_probes):
                streak.state = answer
            return streak.state
