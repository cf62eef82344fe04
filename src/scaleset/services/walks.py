"""Update-domain walks: a set's instances onto its latest model one update domain at a time (M-5, M-17).

Azure has no API for this; the seeds' `vmssupgrade` tool (M-5) and Service Fabric clusters (M-17) need
it. Two things are offered (docs/update-domain-walks.md):

- a *walk*: every update domain in order, each domain's instances upgraded together and healthy before
  the next domain starts, the walk stopping at the first instance that is not. A walk is a rolling
  upgrade run (kind `walk`) with a policy of its own (`walk_policy`), so the rolling-upgrade engine
  drives it: batches already stay inside one update domain and one zone, are gated on health and stop on
  failure; `rollingUpgrades/latest`, `rollingUpgrades/cancel` and resuming after a restart (M-26) work
  as for any run. It works whatever the set's upgrade mode; Manual sets are its main users.
- a *manual upgrade of one update domain*: `manualupgrade` for the instances of that domain, without a
  health gate, as Azure's manual upgrade has none (M-3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.domain.errors import ArmError, invalid
from scaleset.domain.placement import UPDATE_DOMAIN_COUNT
from scaleset.engine.clock import Clock
from scaleset.services.lookups import live_instances, require_set
from scaleset.services.runs import effective_policy
from scaleset.services.scalesets import ScaleSetService
from scaleset.services.upgrades import run_status
from scaleset.services.user_runs import begin_user_run, operation_of, refuse_unless_run_can_start
from scaleset.store.db import Database
from scaleset.store.tables import Instance, Operation, RollingUpgrade, UpgradeInstance

Json = dict[str, Any]
WALK = "walk"


def walk_policy(set_policy: Json) -> Json:
    """The rolling-upgrade policy a walk runs with, from the set's effective policy.

    - maxBatchInstancePercent 100: a batch is as large as the set, so the only thing that cuts batches
      is the boundary rule of domain/batches.py — one batch per (zone, update domain);
    - maxUnhealthyInstancePercent 100: otherwise `fit_batch` would shrink a domain's batch to the set's
      unhealthy budget (0 for a set of 4 at 20 %) and a domain would take several batches;
    - maxUnhealthyUpgradedInstancePercent 0: one upgraded instance not healthy in time stops the walk;
    - no prioritizeUnhealthyInstances (it would split a domain in two), no enableCrossZoneUpgrade (zones
      never go together, M-21), no maxSurge (Azure may put a surge replacement in another domain);
    - updateDomainFirst (scaleset's own key): in a zoned set, update domain 0 of every zone, one zone at a
      time, then update domain 1 …, so the walk goes domain by domain as its name says.

    The pause between batches and rollbackFailedInstancesOnPolicyBreach are the set's own.

    >>> policy = walk_policy({"maxBatchInstancePercent": 20, "pauseTimeBetweenBatches": "PT5S"})
    >>> policy["maxBatchInstancePercent"], policy["maxUnhealthyUpgradedInstancePercent"]
    (100, 0)
    >>> policy["pauseTimeBetweenBatches"]
    'PT5S'
    """
    return {
        **set_policy,
        "maxBatchInstancePercent": 100,
        "maxUnhealthyInstancePercent": 100,
        "maxUnhealthyUpgradedInstancePercent": 0,
        "prioritizeUnhealthyInstances": False,
        "enableCrossZoneUpgrade": False,
        "maxSurge": False,
        "updateDomainFirst": True,
    }


def parse_update_domain(raw: str) -> int:
    """An update domain from a path segment: a number from 0 to 4 (Azure's five update domains)."""
    if not raw.isdigit() or int(raw) >= UPDATE_DOMAIN_COUNT:
        raise invalid(
            "updateDomain",
            f"'{raw}' is not an update domain: update domains are numbered 0 to {UPDATE_DOMAIN_COUNT - 1}.",
        )
    return int(raw)


@dataclass(frozen=True)
class UpdateDomain:
    """One update domain of a set: its instances, and which of them run the latest model."""

    number: int
    instance_ids: tuple[int, ...]
    zones: tuple[str, ...]
    latest: tuple[int, ...]

    def view(self) -> Json:
        return {
            "updateDomain": self.number,
            "instanceIds": [str(i) for i in self.instance_ids],
            "zones": list(self.zones),
            "latestModelAppliedInstanceIds": [str(i) for i in self.latest],
        }


def update_domains(instances: Iterable[Instance], model_version: int) -> list[UpdateDomain]:
    """The update domains that hold instances, in order (the order a walk goes)."""
    by_domain: dict[int, list[Instance]] = {}
    for instance in instances:
        by_domain.setdefault(instance.update_domain, []).append(instance)
    domains = []
    for number in sorted(by_domain):
        members = sorted(by_domain[number], key=lambda i: i.instance_id)
        domains.append(
            UpdateDomain(
                number=number,
                instance_ids=tuple(i.instance_id for i in members),
                zones=tuple(sorted({i.zone for i in members if i.zone})),
                latest=tuple(i.instance_id for i in members if i.model_version == model_version),
            )
        )
    return domains


@dataclass(frozen=True)
class Batch:
    """One batch of a run as the batches view shows it."""

    number: int
    update_domain: int | None  # None when the instance is gone
    zone: str | None
    members: tuple[tuple[int, str, str], ...]  # (instance id, state, error)

    def view(self) -> Json:
        return {
            "batch": self.number,
            "updateDomain": self.update_domain,
            "zone": self.zone,
            "instances": [
                {"instanceId": str(i), "state": state, **({"error": error} if error else {})}
                for i, state, error in self.members
            ],
        }


class WalkService:
    """Walks and update-domain manual upgrades. Built per request from the container's parts."""

    def __init__(
        self, db: Database, clock: Clock, scalesets: ScaleSetService, wake_engine: Callable[[], None]
    ) -> None:
        self._db = db
        self._clock = clock
        self._scalesets = scalesets
        self._wake = wake_engine

    def start_walk(self, subscription: str, group: str, name: str) -> Operation:
        """POST upgradeDomainWalk: write the walk's run and its operation in one transaction."""
        now = self._clock.now()
        with self._db.write() as session:
            scale_set = require_set(session, subscription, group, name)
            refuse_unless_run_can_start(session, scale_set, name)
            policy = walk_policy(effective_policy(scale_set.document))
            operation = operation_of(session, begin_user_run(session, scale_set, WALK, now, policy))
        self._wake()
        return operation

    def list_update_domains(self, subscription: str, group: str, name: str) -> list[UpdateDomain]:
        with self._db.read() as session:
            scale_set = require_set(session, subscription, group, name)
            return update_domains(live_instances(session, scale_set), scale_set.model_version)

    def upgrade_update_domain(self, subscription: str, group: str, name: str, raw_domain: str) -> Operation:
        """POST updateDomains/{n}/manualupgrade: the domain's instances onto the latest model (M-3, M-5).

        Instances protected from scale-set actions are left alone, as by any set-wide action."""
        number = parse_update_domain(raw_domain)
        with self._db.read() as session:
            scale_set = require_set(session, subscription, group, name)
            live = live_instances(session, scale_set)
        domains = update_domains(live, scale_set.model_version)
        chosen = next((d for d in domains if d.number == number), None)
        if chosen is None:
            held = ", ".join(str(d.number) for d in domains) or "none"
            raise ArmError(
                404,
                "UpdateDomainNotFound",
                f"The scale set '{name}' has no instances in update domain {number}; "
                f"the update domains that hold instances are: {held}.",
                "updateDomain",
            )
        protected = {i.instance_id for i in live if i.protect_from_scale_set_actions}
        ids = [str(i) for i in chosen.instance_ids if i not in protected]
        return self._scalesets.manual_upgrade(subscription, group, name, {"instanceIds": ids})

    def run_batches(self, subscription: str, group: str, name: str, operation_id: str | None = None) -> Json:
        """A run with its batches: the newest run, or the one a start answered with (`operation_id`, the
        last segment of its Azure-AsyncOperation URL) even after a newer run began.

        One read gives status, counts and batches together, so a watcher never mixes two runs."""
        with self._db.read() as session:
            scale_set = require_set(session, subscription, group, name)
            query = select(RollingUpgrade).where(RollingUpgrade.set_id == scale_set.id)
            if operation_id is not None:
                query = query.where(RollingUpgrade.operation_id == operation_id)
            run = session.scalars(query.order_by(RollingUpgrade.start_time.desc(), RollingUpgrade.id)).first()
            if run is None:
                which = f"with operation '{operation_id}'" if operation_id else "at all"
                raise ArmError(404, "NotFound", f"The scale set '{name}' has had no rolling upgrade {which}.")
            status = run_status(session, run, scale_set)
            view: Json = {
                "kind": run.kind,
                "status": run.status,
                "operationId": run.operation_id,
                "batchNumber": run.batch_number,
                "progress": status.progress,
                "rollbackInfo": {
                    "successfullyRolledbackInstanceCount": status.rolled_back,
                    "failedRolledbackInstanceCount": status.rollback_failed,
                },
                "value": [batch.view() for batch in _batches(session, run)],
            }
            if run.error:
                view["error"] = run.error
            return view


def _batches(session: Session, run: RollingUpgrade) -> list[Batch]:
    rows = list(
        session.scalars(
            select(UpgradeInstance)
            .where(UpgradeInstance.upgrade_id == run.id)
            .order_by(UpgradeInstance.batch, UpgradeInstance.instance_id)
        )
    )
    places = {
        i.id: (i.update_domain, i.zone)
        for i in session.scalars(select(Instance).where(Instance.set_id == run.set_id))
    }
    grouped: dict[int, list[UpgradeInstance]] = {}
    for row in rows:
        grouped.setdefault(row.batch, []).append(row)
    batches = []
    for number, members in sorted(grouped.items()):
        update_domain, zone = places.get(members[0].instance_row_id, (None, None))
        batches.append(
            Batch(
                number=number,
                update_domain=update_domain,
                zone=zone,
                members=tuple((m.instance_id, m.state, m.error) for m in members),
            )
        )
    return batches
