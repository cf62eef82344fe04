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
from scaleset.store.db import Database
from scaleset.store.tables import AvailabilitySet, ResourceGroup, VirtualMachine


def availability_set_id_of(subscription: str, group: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Compute/"
        f"availabilitySets/{name}"
    )


def require_group(session: Session, subscription: str, name: str) -> ResourceGroup:
    group = session.scalars(
        select(ResourceGroup).where(
            ResourceGroup.subscription == subscription, ResourceGroup.name_key == name.lower()
        )
    ).first()
    if group is None:
        raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")
    return group


def find_availability_set(session: Session, group: ResourceGroup, name: str) -> AvailabilitySet | None:
    return session.scalars(
        select(AvailabilitySet).where(
            AvailabilitySet.group_id == group.id, AvailabilitySet.name_key == name.lower()
        )
    ).first()


def availability_set_not_found(group: str, name: str) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource 'Microsoft.Compute/availabilitySets/{name}' under resource group '{group}' "
        "was not found.",
    )


class AvailabilitySetService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def put(self, subscription: str, group_name: str, name: str, body: Any) -> tuple[AvailabilitySet, bool]:
        """Create or update; True when it was created."""
        with self._db.read() as session:
            group = require_group(session, subscription, group_name)
            existing = find_availability_set(session, group, name)
            current = existing.document if existing else None
        document = validate_availability_set(body, name, current)
        now = self._clock.now()
        with self._db.write() as session:
            group = require_group(session, subscription, group_name)
            if group.provisioning_state == "Deleting":
                raise operation_not_allowed(f"The resource group '{group.name}' is being deleted.")
            row = find_availability_set(session, group, name)
            if (row.document if row else None) != current:
                raise ArmError(
                    409,
                    "Conflict",
                    f"The availability set '{name}' changed while it was being written; send the request "
                    "again.",
                )
            if row is None:
                row = AvailabilitySet(
                    subscription=subscription,
                    group_id=group.id,
                    name=name,
                    name_key=name.lower(),
                    location=document["location"],
                    document=document,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                return row, True
            row.document = document
            row.updated_at = now
            return row, False

    def get(self, subscription: str, group_name: str, name: str) -> AvailabilitySet:
        with self._db.read() as session:
            group = require_group(session, subscription, group_name)
            row = find_availability_set(session, group, name)
            if row is None:
                raise availability_set_not_found(group.name, name)
            return row

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
