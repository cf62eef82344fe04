"""What the API asks of standalone VMs (`Microsoft.Compute/virtualMachines`) and their extensions.

Why a VM is backed by a hidden one-instance scale set: the executor, the providers, the guest agent, the
extension handler protocol and the health machinery all act on `Instance` rows of a `ScaleSet`. A VM that
owns such a set (capacity 1, Automatic upgrade mode, one fault domain) gets all of it unchanged: a real
local process, an OS disk made from the image, data disks that survive reimage, custom data, extensions
with protected settings, power actions and crash recovery (tasks are persisted before the provider acts).
The VM's own row keeps what only a VM has (its wire document, its availability set and domains) and
points at the set; the set is named `_vm.<uid>`, a name no client can create (names start with a letter
or digit), and the row goes with the set (ON DELETE CASCADE) when the engine removes it.

Writes validate everything first (the VM rules, then the scale-set rules on the translated model, the
image and extension catalogs), then write the VM row, the set, its model, the instance and its task in
one transaction: bad input changes nothing, and a crash leaves either all of it or none.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.catalog.extensions import ExtensionCatalog
from scaleset.catalog.service import ImageCatalog, image_not_found
from scaleset.domain.availability_set_spec import next_domains
from scaleset.domain.errors import ArmError, invalid, operation_not_allowed
from scaleset.domain.scaleset_spec import image_request, validate_scale_set
from scaleset.domain.vm_spec import (
    availability_set_of,
    replace_extension,
    scale_set_body,
    validate_vm,
    validate_vm_extension,
    vm_error,
)
from scaleset.engine.clock import Clock
from scaleset.services.availability_sets import availability_set_not_found, find_availability_set
from scaleset.services.extension_settings import prepare_extensions
from scaleset.services.lookups import (
    BACKING_SET_PREFIX,
    add_to_group,
    find_in_group,
    live_instances,
    require_group,
    require_writable_group,
    resource_not_found,
)
from scaleset.services.operations import complete_if_done, start_operation
from scaleset.services.scalesets import POWER_ACTIONS, ScaleSetService
from scaleset.services.secrets import SecretBox
from scaleset.services.set_rows import add_model_version, add_scale_set, model_changed, move_to_model
from scaleset.store.db import Database
from scaleset.store.tables import (
    AvailabilitySet,
    Instance,
    Operation,
    ResourceGroup,
    ScaleSet,
    ScaleSetModel,
    VirtualMachine,
)

Json = dict[str, Any]

# POST actions on a VM, by their lower-cased path segment, and the instance task each one runs.
VM_ACTIONS = {k: v for k, v in POWER_ACTIONS.items() if k != "reimageall"}


def is_backing_set_name(name: str) -> bool:
    return name.lower().startswith(BACKING_SET_PREFIX)


def vm_id_of(subscription: str, group: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Compute/"
        f"virtualMachines/{name}"
    )


@dataclass(frozen=True)
class VmChange:
    """What a write did: the VM, the operation that finishes it, and whether it was created."""

    vm: VirtualMachine
    operation: Operation
    created: bool = False


@dataclass(frozen=True)
class VmState:
    """A VM with what its views need: its backing set, its instance (None once deleted) and the model
    that instance runs."""

    vm: VirtualMachine
    group_name: str
    scale_set: ScaleSet
    instance: Instance | None
    model: Json


class VmService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        catalog: ImageCatalog,
        extensions: ExtensionCatalog,
        secrets: SecretBox,
        scalesets: ScaleSetService,
        wake_engine: Callable[[], None],
    ) -> None:
        self._db = db
        self._clock = clock
        self._catalog = catalog
        self._extensions = extensions
        self._secrets = secrets
        self._scalesets = scalesets
        self._wake = wake_engine

    # ------------------------------------------------------------------------------------------ VMs
    def put(self, subscription: str, group_name: str, name: str, body: Any) -> VmChange:
        with self._db.read() as session:
            group = require_group(session, subscription, group_name)
            existing = _find_vm(session, group, name)
            current = existing.document if existing else None
            extensions = list(existing.extensions) if existing else []
        document = validate_vm(body, name, current)
        return self._write(subscription, group_name, name, document, extensions, existing)

    def put_extension(
        self, subscription: str, group_name: str, name: str, extension_name: str, body: Any, merge: bool
    ) -> VmChange:
        """PUT (or, with `merge`, PATCH) one extension: a change to the VM's model like any other."""
        existing = self._require(subscription, group_name, name)
        old = next((e for e in existing.extensions if e["name"].lower() == extension_name.lower()), None)
        if merge:
            if old is None:
                raise _extension_not_found(name, extension_name)
            patch = body.get("properties") if isinstance(body, dict) else None
            if not isinstance(patch, dict):
                raise invalid("properties", 'The body must be an extension: {"properties": {...}}.')
            body = {"properties": {**old["properties"], **patch}}
        extension = validate_vm_extension(body, old["name"] if old else extension_name)
        extensions, created = replace_extension(list(existing.extensions), extension)
        change = self._write(subscription, group_name, name, existing.document, extensions, existing)
        return VmChange(change.vm, change.operation, created)

    def delete_extension(
        self, subscription: str, group_name: str, name: str, extension_name: str
    ) -> Operation:
        existing = self._require(subscription, group_name, name)
        kept = [e for e in existing.extensions if e["name"].lower() != extension_name.lower()]
        if len(kept) == len(existing.extensions):
            raise _extension_not_found(name, extension_name)
        return self._write(subscription, group_name, name, existing.document, kept, existing).operation

    def _write(
        self,
        subscription: str,
        group_name: str,
        name: str,
        document: Json,
        extensions: list[Json],
        existing: VirtualMachine | None,
    ) -> VmChange:
        current_set = self._backing_set(existing).document if existing else None
        try:
            set_document = validate_scale_set(scale_set_body(document, extensions), name, current_set)
        except ArmError as error:
            raise vm_error(error) from None
        self._prepare_extensions(set_document, current_set)
        image_version = self._image_version(set_document, existing)
        now = self._clock.now()
        with self._db.write() as session:
            group = require_writable_group(session, subscription, group_name)
            row = _find_vm(session, group, name)
            if (row is None) != (existing is None) or (
                row and existing and row.updated_at != existing.updated_at
            ):
                raise ArmError(
                    409,
                    "Conflict",
                    f"The VM '{name}' changed while it was being written; send the request again.",
                )
            operation = start_operation(
                session,
                subscription=subscription,
                location=document["location"],
                kind="set_update",
                resource_id=vm_id_of(subscription, group.name, name),
                now=now,
            )
            if row is None:
                row = self._create(session, group, name, document, set_document, image_version, operation)
                created = True
            else:
                self._update(session, row, set_document, image_version, operation)
                created = False
            row.document = document
            row.extensions = (
                set_document["properties"]["virtualMachineProfile"]
                .get("extensionProfile", {})
                .get("extensions", [])
            )
            row.updated_at = now
            operation.payload = {"set_id": row.set_id}
            complete_if_done(session, operation.id, now)
        self._wake()
        return VmChange(row, operation, created)

    def _create(
        self,
        session: Session,
        group: ResourceGroup,
        name: str,
        document: Json,
        set_document: Json,
        image_version: str,
        operation: Operation,
    ) -> VirtualMachine:
        now = self._clock.now()
        availability_set = self._availability_set(session, group, document)
        domains = (0, 0)
        if availability_set is not None:
            used = session.execute(
                select(VirtualMachine.update_domain, VirtualMachine.fault_domain).where(
                    VirtualMachine.availability_set_id == availability_set.id
                )
            ).all()
            counts = availability_set.document["properties"]
            domains = next_domains(
                [(ud, fd) for ud, fd in used],
                int(counts["platformUpdateDomainCount"]),
                int(counts["platformFaultDomainCount"]),
            )
        uid = str(uuid.uuid4())
        scale_set = add_scale_set(
            session,
            group,
            uid=uid,
            name=BACKING_SET_PREFIX + uid,
            document=set_document,
            image_version=image_version,
            now=now,
        )
        (instance,) = self._scalesets.create_instances(session, operation, scale_set, 1)
        instance.update_domain, instance.fault_domain = domains
        return add_to_group(
            session,
            VirtualMachine,
            group,
            name,
            document,
            now,
            extensions=[],
            set_id=scale_set.id,
            availability_set_id=availability_set.id if availability_set else None,
            update_domain=domains[0],
            fault_domain=domains[1],
        )

    def _availability_set(
        self, session: Session, group: ResourceGroup, document: Json
    ) -> AvailabilitySet | None:
        reference = availability_set_of(document)
        if reference is None:
            return None
        subscription, group_name, name = reference
        target = "properties.availabilitySet.id"
        if subscription != group.subscription or group_name.lower() != group.name.lower():
            # Azure: the availability set must be in the VM's own resource group.
            raise invalid(target, "The availability set must be in the same resource group as the VM.")
        availability_set = find_availability_set(session, group, name)
        if availability_set is None:
            error = availability_set_not_found(group.name, name)
            raise ArmError(error.status, error.code, error.message, target)
        if availability_set.location != document["location"]:
            raise invalid(
                target,
                f"The availability set is in '{availability_set.location}', "
                f"the VM in '{document['location']}'.",
            )
        return availability_set

    def _update(
        self,
        session: Session,
        row: VirtualMachine,
        set_document: Json,
        image_version: str,
        operation: Operation,
    ) -> None:
        """A new model version when the model changed, applied to the one instance by the least
        disruptive action (`domain/model_change.py`): extensions only, or a reimage."""
        now = self._clock.now()
        scale_set = session.get(ScaleSet, row.set_id)
        assert scale_set is not None
        if scale_set.provisioning_state == "Deleting":
            raise operation_not_allowed(f"The VM '{row.name}' is being deleted.")
        changed = model_changed(scale_set, set_document, image_version)
        scale_set.document = set_document
        scale_set.provisioning_state = "Updating"
        scale_set.updated_at = now
        if not changed:
            return
        add_model_version(session, scale_set, set_document, image_version, now)
        session.flush()
        target = session.get(ScaleSetModel, (scale_set.id, scale_set.model_version))
        assert target is not None
        for instance in live_instances(session, scale_set):
            before = session.get(ScaleSetModel, (scale_set.id, instance.model_version))
            assert before is not None, "every model version an instance runs is kept"
            move_to_model(session, operation, instance, before, target, now)

    def _image_version(self, set_document: Json, existing: VirtualMachine | None) -> str:
        """The exact image version to run. A VM keeps the version it was made from while its image
        reference stays the same ('latest' is resolved once, at creation, as on Azure); a changed
        reference is resolved again."""
        wanted = image_request(set_document)
        if existing is not None:
            backing = self._backing_set(existing)
            if image_request(backing.document) == wanted:
                return backing.exact_image_version
        image = self._catalog.find(set_document["location"], wanted)
        if image is None:
            error = image_not_found(set_document["location"], wanted)
            raise vm_error(error)
        return image.version

    def _prepare_extensions(self, set_document: Json, current_set: Json | None) -> None:
        """Check each extension resolves in the catalog and seal its protected settings (in place), as
        for a scale set; an error names the VM's extension properties."""
        prepare_extensions(
            set_document, current_set, self._extensions, self._secrets, target=lambda _index: "properties"
        )

    # ------------------------------------------------------------------------------------- actions
    def action(self, subscription: str, group_name: str, name: str, verb: str, body: Any) -> Operation:
        """A POST action (start, powerOff, restart, deallocate, reimage) on the VM's instance."""
        state = self.get(subscription, group_name, name)
        if state.instance is None or state.scale_set.provisioning_state == "Deleting":
            raise operation_not_allowed(f"The VM '{name}' is being deleted.")
        return self._scalesets.vm_action(
            subscription,
            group_name,
            state.scale_set.name,
            str(state.instance.instance_id),
            VM_ACTIONS[verb],
            body,
            backing_set=True,
        )

    def delete(self, subscription: str, group_name: str, name: str) -> Operation | None:
        """Delete the VM's instance; its set and row go when that is done. None: there was no VM."""
        now = self._clock.now()
        with self._db.write() as session:
            group = require_group(session, subscription, group_name)
            row = _find_vm(session, group, name)
            if row is None:
                return None
            scale_set = session.get(ScaleSet, row.set_id)
            assert scale_set is not None
            operation = self._scalesets.begin_set_delete(
                session, scale_set, vm_id_of(subscription, group.name, row.name), now
            )
        self._wake()
        return operation

    # --------------------------------------------------------------------------------------- reads
    def get(self, subscription: str, group_name: str, name: str) -> VmState:
        with self._db.read() as session:
            group = require_group(session, subscription, group_name)
            row = _find_vm(session, group, name)
            if row is None:
                raise _vm_not_found(group.name, name)
            return _state(session, row, group.name)

    def list_vms(self, subscription: str, group_name: str | None = None) -> list[VmState]:
        with self._db.read() as session:
            query = select(VirtualMachine).where(VirtualMachine.subscription == subscription)
            if group_name is not None:
                query = query.where(
                    VirtualMachine.group_id == require_group(session, subscription, group_name).id
                )
            states = []
            for row in session.scalars(query.order_by(VirtualMachine.id)):
                group = session.get(ResourceGroup, row.group_id)
                assert group is not None
                states.append(_state(session, row, group.name))
            return states

    def _require(self, subscription: str, group_name: str, name: str) -> VirtualMachine:
        return self.get(subscription, group_name, name).vm

    def _backing_set(self, vm: VirtualMachine) -> ScaleSet:
        with self._db.read() as session:
            scale_set = session.get(ScaleSet, vm.set_id)
            assert scale_set is not None, "a VM row goes with its set"
            return scale_set


# ------------------------------------------------------------------------------------------ helpers
def _find_vm(session: Session, group: ResourceGroup, name: str) -> VirtualMachine | None:
    return find_in_group(session, VirtualMachine, group, name)


def _state(session: Session, row: VirtualMachine, group_name: str) -> VmState:
    scale_set = session.get(ScaleSet, row.set_id)
    assert scale_set is not None, "a VM row goes with its set"
    instance = session.scalars(
        select(Instance).where(Instance.set_id == scale_set.id).order_by(Instance.id)
    ).first()
    version = instance.model_version if instance is not None else scale_set.model_version
    model = session.get(ScaleSetModel, (scale_set.id, version))
    return VmState(row, group_name, scale_set, instance, copy.deepcopy(model.model) if model else {})


def _vm_not_found(group: str, name: str) -> ArmError:
    return resource_not_found("Microsoft.Compute/virtualMachines", group, name)


def _extension_not_found(name: str, extension_name: str) -> ArmError:
    return ArmError(
        404, "ResourceNotFound", f"The extension '{extension_name}' of VM '{name}' was not found."
    )
