"""Metrics read from the database at scrape time (docs/observability.md).

Nothing here is counted in memory as things happen: each scrape asks the store (a few GROUP BY queries,
cheap even with 100 000 instances), so the numbers are right after a restart and need no engine hooks.
A scrape never calls the provider: it neither probes instances nor reads their guest reports.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scaleset.domain.rolling import (
    ACTIVE_STATUSES,
    CANCELLED,
    COMPLETED,
    FAULTED,
    ROLLING_BACK,
    ROLLING_FORWARD,
)
from scaleset.domain.scaleset_spec import has_health_source
from scaleset.observability.batch_durations import BatchDurations
from scaleset.services.lookups import BACKING_SET_PREFIX
from scaleset.store.db import Database
from scaleset.store.tables import Instance, ResourceGroup, RollingUpgrade, ScaleSet, ScaleSetModel

SET_LABELS = ["subscription", "group", "set"]
UPGRADE_KINDS = ("os", "extension", "model")
UPGRADE_STATUSES = (ROLLING_FORWARD, ROLLING_BACK, COMPLETED, CANCELLED, FAULTED)
HEALTH_STATES = ("healthy", "unhealthy", "unknown")


@dataclass(frozen=True)
class SetLabels:
    subscription: str
    group: str
    name: str

    def values(self) -> list[str]:
        return [self.subscription, self.group, self.name]


def instance_health(provisioning_state: str, power_state: str, has_source: bool) -> str:
    """What `scaleset_instances_health` counts an instance as, without probing it.

    The engine's first rule (engine/health.py) needs no probe: an instance that is not running, or whose
    provisioning did not succeed, is unhealthy. A running, provisioned instance of a model without a health
    source is healthy (the platform's fallback, M-11). One whose model names a probe or the Application
    Health extension is `unknown` here: only that source could say, and a scrape does not ask it.

    >>> instance_health("succeeded", "running", has_source=False)
    'healthy'
    >>> instance_health("failed", "running", has_source=False)
    'unhealthy'
    >>> instance_health("succeeded", "running", has_source=True)
    'unknown'
    """
    if power_state != "running" or provisioning_state != "succeeded":
        return "unhealthy"
    return "unknown" if has_source else "healthy"


class StoreCollector(Collector):
    """Rolling upgrades by kind and status, instances by state and health, batch durations."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._batches = BatchDurations()

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering the collector does not query the database.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        upgrades, current_batch, instances, health, durations = self._families()
        with self._db.read() as session:
            sets = _set_labels(session)
            _count_upgrades(session, upgrades, current_batch, sets)
            _count_instances(session, instances, health, sets)
            self._batches.refresh(session)
        for (kind, outcome), histogram in sorted(self._batches.histograms().items()):
            durations.add_metric([kind, outcome], histogram.buckets(), histogram.sum)
        yield from (upgrades, current_batch, instances, health, durations)

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    ]:
        return (
            GaugeMetricFamily(
                "scaleset_rolling_upgrades",
                "Rolling upgrades the database holds, by kind (os, extension, model) and status.",
                labels=["kind", "status"],
            ),
            GaugeMetricFamily(
                "scaleset_rolling_upgrade_current_batch",
                "The batch number an active rolling upgrade is at (0 before its first batch), per set.",
                labels=[*SET_LABELS, "kind"],
            ),
            GaugeMetricFamily(
                "scaleset_instances",
                "Instances per set, by provisioning state and power state.",
                labels=[*SET_LABELS, "provisioning_state", "power_state"],
            ),
            GaugeMetricFamily(
                "scaleset_instances_health",
                "Instances per set (not being deleted) by health as far as the database tells: unhealthy "
                "(not running or not provisioned), healthy (running, provisioned, model has no health "
                "source), unknown (running, provisioned, health source not consulted by a scrape).",
                labels=[*SET_LABELS, "health"],
            ),
            HistogramMetricFamily(
                "scaleset_rolling_upgrade_batch_duration_seconds",
                "Rolling-upgrade batches from their tasks being committed to the engine judging them.",
                labels=["kind", "outcome"],
            ),
        )


def _set_labels(session: Session) -> dict[int, SetLabels]:
    # The hidden sets behind standalone VMs are not scale sets to clients (services/lookups.py).
    rows = session.execute(
        select(ScaleSet.id, ScaleSet.subscription, ResourceGroup.name, ScaleSet.name)
        .join(ResourceGroup, ResourceGroup.id == ScaleSet.group_id)
        .where(~ScaleSet.name_key.startswith(BACKING_SET_PREFIX, autoescape=True))
    )
    return {set_id: SetLabels(subscription, group, name) for set_id, subscription, group, name in rows}


def _count_upgrades(
    session: Session,
    upgrades: GaugeMetricFamily,
    current_batch: GaugeMetricFamily,
    sets: Mapping[int, SetLabels],
) -> None:
    # Every known (kind, status) appears, at 0 when there is none, so an alert on "> 0" needs no absent().
    counts: dict[tuple[str, str], int] = {(k, s): 0 for k in UPGRADE_KINDS for s in UPGRADE_STATUSES}
    for kind, status, count in session.execute(
        select(RollingUpgrade.kind, RollingUpgrade.status, func.count()).group_by(
            RollingUpgrade.kind, RollingUpgrade.status
        )
    ):
        counts[(kind, status)] = int(count)
    for (kind, status), count in sorted(counts.items()):
        upgrades.add_metric([kind, status], count)
    for set_id, kind, batch in session.execute(
        select(RollingUpgrade.set_id, RollingUpgrade.kind, RollingUpgrade.batch_number).where(
            RollingUpgrade.status.in_(ACTIVE_STATUSES)
        )
    ):
        if set_id in sets:
            current_batch.add_metric([*sets[set_id].values(), kind], batch)


def _count_instances(
    session: Session,
    instances: GaugeMetricFamily,
    health: GaugeMetricFamily,
    sets: Mapping[int, SetLabels],
) -> None:
    by_state: dict[tuple[int, str, str], int] = {}
    by_health: dict[tuple[int, str], int] = {(s, h): 0 for s in sets for h in HEALTH_STATES}
    groups = session.execute(
        select(
            Instance.set_id,
            Instance.model_version,
            Instance.provisioning_state,
            Instance.power_state,
            func.count(),
        ).group_by(Instance.set_id, Instance.model_version, Instance.provisioning_state, Instance.power_state)
    ).all()
    has_source = _health_sources(session, {(row[0], row[1]) for row in groups})
    for set_id, model_version, provisioning, power, count in groups:
        if set_id not in sets:
            continue
        key = (set_id, provisioning, power)
        by_state[key] = by_state.get(key, 0) + int(count)
        if provisioning == "deleting":
            continue  # leaving the set: the engine no longer counts it either
        state = instance_health(provisioning, power, has_source.get((set_id, model_version), False))
        by_health[(set_id, state)] += int(count)
    for (set_id, provisioning, power), count in sorted(by_state.items()):
        instances.add_metric([*sets[set_id].values(), provisioning, power], count)
    for (set_id, state), count in sorted(by_health.items()):
        health.add_metric([*sets[set_id].values(), state], count)


def _health_sources(session: Session, in_use: set[tuple[int, int]]) -> dict[tuple[int, int], bool]:
    """(set id, model version) → whether that model names a health source, for the versions in use."""
    found: dict[tuple[int, int], bool] = {}
    for set_id, version in in_use:  # a handful: the model versions instances run right now
        model = session.get(ScaleSetModel, (set_id, version))
        found[(set_id, version)] = model is not None and has_health_source(_profile(model.model))
    return found


def _profile(model: Any) -> Mapping[str, Any]:
    return model if isinstance(model, Mapping) else {}
