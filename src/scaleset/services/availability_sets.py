"""What the API asks of availability sets (`Microsoft.Compute/availabilitySets`).

An availability set is a record only: it runs nothing itself. VMs name it at creation and take an update
and a fault domain in it (services/vms.py); a set that still holds VMs cannot be deleted, as on Azure.
Writes validate first and then change one row in one transaction, so bad input changes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.domain.availability_set_spec import validate_availability_set
from scaleset.domain.errors import ArmError, operation_not_allowed
from scaleset.engine.clock import Clock
from scaleset.services.lookups import (
    add_to_group,
    find_in_group,
    require_group,
    require_in_group,
    require_writable_group,
    resource_not_found,
    stored_document,
)
from scaleset.store.db import Database
from scaleset.store.tables import AvailabilitySet, ResourceGroup, VirtualMachine

AVAILABILITY_SET_TYPE = "Microsoft.Compute/availabilitySets"


def availability_set_id_of(subscription: str, group: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Compute/"
        f"availabilitySets/{name}"
    )


def find_availability_set(session: Session, group: ResourceGroup, name: str) -> AvailabilitySet | None:
    return find_in_group(session, AvailabilitySet, group, name)


def availability_set_not_found(group: str, name: str) -> ArmError:
    return resource_not_found(AVAILABILITY_SET_TYPE, group, name)


class AvailabilitySetService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def put(self, subscription: str, group_name: str, name: str, body: Any) -> tuple[AvailabilitySet, bool]:
        """Create or update; True when it was created."""
        with self._db.read() as session:
            current = stored_document(session, AvailabilitySet, subscription, group_name, name)
        document = validate_availability_set(body, name, current)
        now = self._clock.now()
        with self._db.write() as session:
            group = require_writable_group(session, subscription, group_name)
            row = find_availability_set(session, group, name)
            if (row.document if row else None) != current:
                raise ArmError(
                    409,
                    "Conflict",
                    f"The availability set '{name}' changed while it was being written; send the request "
                    "again.",
                )
            if row is None:
                return add_to_group(session, AvailabilitySet, group, name, document, now), True
            row.document = document
            row.updated_at = now
            return row, False

    def get(self, subscription: str, group_name: str, name: str) -> AvailabilitySet:
        with self._db.read() as session:
            return require_in_group(
                session, AvailabilitySet, AVAILABILITY_SET_TYPE, subscription, group_name, name
            )

    def list_sets(self, subscription: str, group_name: str | None = None) -> list[AvailabilitySet]:
        with self._db.read() as session:
            query = (
                select(AvailabilitySet)
                .where(AvailabilitySet.subscription == subscription)
                .order_by(AvailabilitySet.id)
            )
            if group_name is not None:
                group = require_group(session, subscription, group_name)
                query = query.where(AvailabilitySet.group_id == group.id)
            return list(session.scalars(query))

    def members(self, availability_set: AvailabilitySet) -> list[VirtualMachine]:
        """The VMs in the set, oldest first."""
        with self._db.read() as session:
            return list(
                session.scalars(
                    select(VirtualMachine)
                    .where(VirtualMachine.availability_set_id == availability_set.id)
                    .order_by(VirtualMachine.id)
                )
            )

    def group_name_of(self, availability_set: AvailabilitySet) -> str:
        with self._db.read() as session:
            group = session.get(ResourceGroup, availability_set.group_id)
            assert group is not None
            return group.name

    def delete(self, subscription: str, group_name: str, name: str) -> bool:
        """Delete the set; False when there was none (ARM answers 204 then). A set with VMs stays."""
        with self._db.write() as session:
            group = require_group(session, subscription, group_name)
            row = find_availability_set(session, group, name)
            if row is None:
                return False
            members = session.scalars(
                select(VirtualMachine.name).where(VirtualMachine.availability_set_id == row.id)
            ).all()
            if members:
                raise operation_not_allowed(
                    f"The availability set '{row.name}' still holds VMs ({', '.join(members)}); delete them "
                    "first."
                )
            session.delete(row)
            return True
