"""Finding rows by their ARM names (resource groups, the resources in a group, a set's instances), and
adding a plain resource row to a group.

One module that every service imports, so none of them needs another service's private helpers (the
load-balancer service in particular must not import the scale-set service, which asks it about probes).
Names match without case (`name_key`), as ARM names do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.domain.errors import ArmError, operation_not_allowed
from scaleset.store.tables import (
    AvailabilitySet,
    Gallery,
    Instance,
    LoadBalancer,
    ResourceGroup,
    ScaleSet,
    VirtualMachine,
)

# The tables of resources that live in a resource group under a unique case-insensitive name.
GroupResource = TypeVar("GroupResource", ScaleSet, LoadBalancer, AvailabilitySet, VirtualMachine, Gallery)


def find_group(session: Session, subscription: str, name: str) -> ResourceGroup | None:
    return session.scalars(
        select(ResourceGroup).where(
            ResourceGroup.subscription == subscription, ResourceGroup.name_key == name.lower()
        )
    ).first()


def require_group(session: Session, subscription: str, name: str) -> ResourceGroup:
    group = find_group(session, subscription, name)
    if group is None:
        raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")
    return group


def require_writable_group(session: Session, subscription: str, name: str) -> ResourceGroup:
    """The group a write puts a resource in: it must exist and not be on its way out."""
    group = require_group(session, subscription, name)
    if group.provisioning_state == "Deleting":
        raise operation_not_allowed(f"The resource group '{group.name}' is being deleted.")
    return group


def find_in_group(
    session: Session, table: type[GroupResource], group: ResourceGroup, name: str
) -> GroupResource | None:
    return session.scalars(
        select(table).where(table.group_id == group.id, table.name_key == name.lower())
    ).first()


def stored_document(
    session: Session, table: type[GroupResource], subscription: str, group_name: str, name: str
) -> dict[str, Any] | None:
    """The document of the named resource as stored, None when there is none yet (what a PUT validates
    against); ARM's 404 when the group is missing."""
    row = find_in_group(session, table, require_group(session, subscription, group_name), name)
    return row.document if row else None


def add_to_group(
    session: Session,
    table: type[GroupResource],
    group: ResourceGroup,
    name: str,
    document: dict[str, Any],
    now: datetime,
    **columns: Any,
) -> GroupResource:
    """A new row of `table` named `name` in the group, holding `document` (its location too), with the
    `columns` only that kind of resource has."""
    row = table(
        subscription=group.subscription,
        group_id=group.id,
        name=name,
        name_key=name.lower(),
        location=document["location"],
        document=document,
        created_at=now,
        updated_at=now,
        **columns,
    )
    session.add(row)
    return row


def resource_not_found(resource_type: str, group_name: str, name: str) -> ArmError:
    """ARM's 404 for a resource (`Microsoft.Compute/availabilitySets`) missing from a group."""
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{resource_type}/{name}' under resource group '{group_name}' was not found.",
    )


def require_in_group(
    session: Session,
    table: type[GroupResource],
    resource_type: str,
    subscription: str,
    group_name: str,
    name: str,
) -> GroupResource:
    """The named resource of `table` in the group, or ARM's 404 (for the group, then the resource)."""
    group = require_group(session, subscription, group_name)
    row = find_in_group(session, table, group, name)
    if row is None:
        raise resource_not_found(resource_type, group.name, name)
    return row


def find_set(session: Session, group: ResourceGroup, name: str) -> ScaleSet | None:
    return find_in_group(session, ScaleSet, group, name)


# Hidden scale sets backing standalone VMs (services/vms.py) are named so; a client's scale-set name must
# start with a letter or digit, so no client set can be mistaken for one.
BACKING_SET_PREFIX = "_vm."


def require_set(
    session: Session, subscription: str, group_name: str, name: str, *, backing_set: bool = False
) -> ScaleSet:
    """A client's scale set by name; the hidden sets behind VMs are not scale sets to clients (404), so they
    cannot be read, changed, upgraded or deleted through the scale-set API. `backing_set`: the VM service
    asks for one of those on purpose."""
    if not backing_set and name.lower().startswith(BACKING_SET_PREFIX):
        group = require_group(session, subscription, group_name)
        raise resource_not_found("Microsoft.Compute/virtualMachineScaleSets", group.name, name)
    return require_in_group(
        session, ScaleSet, "Microsoft.Compute/virtualMachineScaleSets", subscription, group_name, name
    )


def all_instances(session: Session, scale_set: ScaleSet) -> list[Instance]:
    """Every instance row, those already being deleted included: deleting a set must not leave behind an
    instance whose earlier delete task has not run yet (delete is idempotent, tasks run in order)."""
    return list(
        session.scalars(
            select(Instance).where(Instance.set_id == scale_set.id).order_by(Instance.instance_id)
        )
    )


def live_instances(session: Session, scale_set: ScaleSet) -> list[Instance]:
    """Instances that count towards capacity: all but those on their way out."""
    return list(
        session.scalars(
            select(Instance)
            .where(Instance.set_id == scale_set.id, Instance.provisioning_state != "deleting")
            .order_by(Instance.instance_id)
        )
    )
