"""What the API and the engine ask of load balancers (`Microsoft.Network/loadBalancers`).

A load balancer here is a holder of health probes: the engine probes a scale set's instances with the
probe its model names (`networkProfile.healthProbe.id`) and reads the probe's settings through
`probe_settings`. As in the scale-set service, every write validates first and then writes in one
transaction, and a probe a scale set still uses can be neither deleted nor dropped from its load balancer
(Azure's `InUseProbeCannotBeDeleted`).

Writes are synchronous: there is nothing to provision, so PUT and DELETE finish inside the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.domain.errors import ArmError
from scaleset.domain.loadbalancer_spec import (
    effective_number_of_probes,
    find_probe,
    parse_probe_id,
    probes_of,
    removed_probes,
    validate_load_balancer,
)
from scaleset.engine.clock import Clock
from scaleset.providers.base import HealthProbe
from scaleset.services.lookups import (
    add_to_group,
    find_group,
    find_in_group,
    require_group,
    require_in_group,
    require_writable_group,
    stored_document,
)
from scaleset.store.db import Database
from scaleset.store.tables import LoadBalancer, ResourceGroup, ScaleSet

Json = dict[str, Any]

# Azure fails an unanswered probe after the probe interval or 30 s, whichever is shorter.
MAX_PROBE_TIMEOUT_SECONDS = 30.0


def load_balancer_id_of(subscription: str, group: str, name: str) -> str:
    group_id = f"/subscriptions/{subscription}/resourceGroups/{group}"
    return f"{group_id}/providers/Microsoft.Network/loadBalancers/{name}"


def probe_id_of(subscription: str, group: str, load_balancer: str, probe: str) -> str:
    return f"{load_balancer_id_of(subscription, group, load_balancer)}/probes/{probe}"


@dataclass(frozen=True)
class ProbeSettings:
    """A probe as the engine runs it: what to ask each instance, how often, and how many consecutive
    answers change the verdict."""

    probe: HealthProbe
    interval_seconds: int
    number_of_probes: int


def probe_settings_of(properties: Json) -> ProbeSettings:
    """A stored probe's properties (already validated) → the settings the engine uses."""
    interval = int(properties["intervalInSeconds"])
    return ProbeSettings(
        probe=HealthProbe(
            protocol=properties["protocol"],
            port=int(properties["port"]),
            request_path=properties.get("requestPath"),
            timeout_seconds=min(float(interval), MAX_PROBE_TIMEOUT_SECONDS),
        ),
        interval_seconds=interval,
        number_of_probes=effective_number_of_probes(properties),
    )


class LoadBalancerService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    # ------------------------------------------------------------------------------------ resources
    def put(self, subscription: str, group_name: str, name: str, body: Any) -> tuple[LoadBalancer, bool]:
        """Create or replace a load balancer; True when it was created."""
        with self._db.read() as session:
            current = stored_document(session, LoadBalancer, subscription, group_name, name)
        document = validate_load_balancer(body, name, current)
        now = self._clock.now()
        with self._db.write() as session:
            group = require_writable_group(session, subscription, group_name)
            row = _find(session, group, name)
            if row is None:
                return add_to_group(session, LoadBalancer, group, name, document, now), True
            # Judged against the row as it is inside the write: it (or a set using one of its probes) may
            # have changed since the read.
            document = validate_load_balancer(body, name, row.document)
            _refuse_if_used(session, subscription, group, row, removed_probes(row.document, document))
            row.document = document
            row.updated_at = now
            return row, False

    def get(self, subscription: str, group_name: str, name: str) -> LoadBalancer:
        with self._db.read() as session:
            return _require(session, subscription, group_name, name)

    def list(self, subscription: str, group_name: str) -> list[LoadBalancer]:
        with self._db.read() as session:
            group = require_group(session, subscription, group_name)
            return list(
                session.scalars(
                    select(LoadBalancer).where(LoadBalancer.group_id == group.id).order_by(LoadBalancer.id)
                )
            )

    def delete(self, subscription: str, group_name: str, name: str) -> bool:
        """Delete a load balancer; False when there was none (ARM answers 204 then)."""
        with self._db.write() as session:
            group = require_group(session, subscription, group_name)
            row = _find(session, group, name)
            if row is None:
                return False
            _refuse_if_used(session, subscription, group, row, [p["name"] for p in probes_of(row.document)])
            session.delete(row)
            return True

    def group_name_of(self, load_balancer: LoadBalancer) -> str:
        with self._db.read() as session:
            group = session.get(ResourceGroup, load_balancer.group_id)
            assert group is not None
            return group.name

    # ------------------------------------------------------------------------------- health sources
    def probe_settings(self, probe_id: str) -> ProbeSettings | None:
        """The settings of the probe a full probe id names (matched without case); None when its load
        balancer or the probe does not exist."""
        ref = parse_probe_id(probe_id)
        if ref is None:
            return None
        with self._db.read() as session:
            group = find_group(session, ref.subscription, ref.group)
            row = _find(session, group, ref.load_balancer) if group is not None else None
        probe = find_probe(row.document, ref.probe) if row is not None else None
        return probe_settings_of(probe["properties"]) if probe is not None else None

    def probe_exists(self, probe_id: str) -> bool:
        return self.probe_settings(probe_id) is not None


# ------------------------------------------------------------------------------------------ helpers
def _find(session: Session, group: ResourceGroup, name: str) -> LoadBalancer | None:
    return find_in_group(session, LoadBalancer, group, name)


def _require(session: Session, subscription: str, group_name: str, name: str) -> LoadBalancer:
    return require_in_group(
        session, LoadBalancer, "Microsoft.Network/loadBalancers", subscription, group_name, name
    )


def _refuse_if_used(
    session: Session, subscription: str, group: ResourceGroup, row: LoadBalancer, probes: list[str]
) -> None:
    """400 InUseProbeCannotBeDeleted when a scale set's model names one of `probes` of `row`."""
    if not probes:
        return
    wanted = {probe_id_of(subscription, group.name, row.name, probe).lower(): probe for probe in probes}
    users: dict[str, list[str]] = {}
    for scale_set in session.scalars(select(ScaleSet).order_by(ScaleSet.id)):
        probe = wanted.get(_health_probe_id(scale_set.document).lower())
        if probe is not None:
            users.setdefault(probe, []).append(_set_label(session, scale_set, group))
    if users:
        probe, sets = next(iter(users.items()))
        raise ArmError(
            400,
            "InUseProbeCannotBeDeleted",
            f"Probe '{probe}' of load balancer '{row.name}' is the health probe of scale set "
            f"{', '.join(sets)} (networkProfile.healthProbe); remove it from the scale set's model "
            "before deleting the probe.",
        )


def _health_probe_id(document: Json) -> str:
    profile = (document.get("properties") or {}).get("virtualMachineProfile") or {}
    probe = (profile.get("networkProfile") or {}).get("healthProbe") or {}
    probe_id = probe.get("id")
    return probe_id.strip().rstrip("/") if isinstance(probe_id, str) else ""


def _set_label(session: Session, scale_set: ScaleSet, group: ResourceGroup) -> str:
    if scale_set.group_id == group.id:
        return f"'{scale_set.name}'"
    other = session.get(ResourceGroup, scale_set.group_id)
    return f"'{scale_set.name}' (resource group '{other.name if other else '?'}')"
