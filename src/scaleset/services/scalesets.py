"""What the API asks of resource groups, scale sets and their instances.

Every method validates first and then writes the whole intent in one transaction (desired state,
operation, tasks); nothing touches an instance here. Bad input therefore changes nothing (the
transaction never opens), and the engine picks the tasks up afterwards.
"""

from __future__ import annotations

import copy
import ipaddress
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.catalog.extensions import ExtensionCatalog
from scaleset.catalog.service import ImageCatalog, image_not_found, supports_automatic_os_upgrade
from scaleset.domain.auto_upgrade import AutoOsSettings
from scaleset.domain.errors import ArmError, invalid, operation_not_allowed
from scaleset.domain.extensions_spec import extension_named
from scaleset.domain.placement import Placement, place_instances
from scaleset.domain.regions import find_region
from scaleset.domain.scaleset_spec import (
    image_request,
    merge_patch,
    validate_resource_name,
    validate_scale_set,
)
from scaleset.engine.clock import Clock
from scaleset.services.addresses import allocate_addresses
from scaleset.services.extension_settings import prepare_extensions

# The lookups keep their old private names here, where this module's code calls them so.
from scaleset.services.lookups import BACKING_SET_PREFIX, require_writable_group, stored_document
from scaleset.services.lookups import all_instances as _all_instances
from scaleset.services.lookups import find_group as _find_group
from scaleset.services.lookups import find_set as _find_set
from scaleset.services.lookups import live_instances as _live_instances
from scaleset.services.lookups import require_group as _require_group
from scaleset.services.lookups import require_set as _require_set
from scaleset.services.operations import add_task, complete_if_done, finish_operation, start_operation
from scaleset.services.runs import (
    active_run,
    blocked_image_versions,
    stop_runs_of_deleted_set,
)
from scaleset.services.secrets import SecretBox
from scaleset.services.set_rows import add_model_version, add_scale_set, model_changed, move_to_model
from scaleset.services.user_runs import begin_user_run
from scaleset.store.db import Database
from scaleset.store.tables import Image, Instance, Operation, ResourceGroup, ScaleSet, ScaleSetModel

Json = dict[str, Any]

# POST actions on a set or an instance, by their lower-cased path segment, and the task each one runs.
POWER_ACTIONS = {
    "start": "start",
    "poweroff": "stop",
    "restart": "restart",
    "deallocate": "deallocate",
    "reimage": "reimage",
    "reimageall": "reimageall",
}


def group_id_of(subscription: str, group: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{group}"


def set_id_of(subscription: str, group: str, name: str) -> str:
    return f"{group_id_of(subscription, group)}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"


@dataclass(frozen=True)
class Change:
    """What a write did: the resource, the operation that finishes it, and whether it was created."""

    scale_set: ScaleSet
    operation: Operation
    created: bool = False


class ScaleSetService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        catalog: ImageCatalog,
        address_pool: ipaddress.IPv4Network,
        wake_engine: Callable[[], None],
        extensions: ExtensionCatalog,
        secrets: SecretBox,
        probe_exists: Callable[[str], bool] = lambda _probe_id: True,
    ) -> None:
        self._probe_exists = probe_exists
        self._db = db
        self._clock = clock
        self._catalog = catalog
        self._extensions = extensions
        self._secrets = secrets
        self._pool = address_pool
        self._wake = wake_engine

    # ------------------------------------------------------------------------------- resource groups
    def put_group(self, subscription: str, name: str, body: Any) -> tuple[ResourceGroup, bool]:
        validate_resource_name(name)
        if not isinstance(body, dict):
            raise invalid("body", "The request body must be a JSON object.")
        region = find_region(str(body.get("location") or ""))
        if region is None:
            raise invalid("location", f"'{body.get('location')}' is not a known location.")
        tags = body.get("tags") or {}
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise invalid("tags", "Tags must be an object of strings.")
        now = self._clock.now()
        with self._db.write() as session:
            group = _find_group(session, subscription, name)
            if group is None:
                group = ResourceGroup(
                    subscription=subscription,
                    name=name,
                    name_key=name.lower(),
                    location=region.name,
                    tags=tags,
                    created_at=now,
                )
                session.add(group)
                return group, True
            if group.provisioning_state == "Deleting":
                raise operation_not_allowed(f"The resource group '{name}' is being deleted.")
            if group.location != region.name:
                raise ArmError(
                    409,
                    "InvalidResourceGroupLocation",
                    f"Resource group '{name}' already exists in location '{group.location}'.",
                    "location",
                )
            group.tags = tags
            return group, False

    def get_group(self, subscription: str, name: str) -> ResourceGroup:
        with self._db.read() as session:
            return _require_group(session, subscription, name)

    def list_groups(self, subscription: str) -> list[ResourceGroup]:
        with self._db.read() as session:
            return list(
                session.scalars(
                    select(ResourceGroup)
                    .where(ResourceGroup.subscription == subscription)
                    .order_by(ResourceGroup.id)
                )
            )

    def delete_group(self, subscription: str, name: str) -> Operation:
        now = self._clock.now()
        with self._db.write() as session:
            group = _require_group(session, subscription, name)
            group.provisioning_state = "Deleting"
            operation = start_operation(
                session,
                subscription=subscription,
                location=group.location,
                kind="group_delete",
                resource_id=group_id_of(subscription, group.name),
                now=now,
                payload={"group_id": group.id},
            )
            for scale_set in session.scalars(select(ScaleSet).where(ScaleSet.group_id == group.id)):
                stop_runs_of_deleted_set(session, scale_set, now)
                self._delete_instances(session, operation, scale_set, _all_instances(session, scale_set))
                scale_set.provisioning_state = "Deleting"
            complete_if_done(session, operation.id, now)
        self._wake()
        return operation

    # ------------------------------------------------------------------------------------ scale sets
    def put_set(self, subscription: str, group_name: str, name: str, body: Any) -> Change:
        with self._db.read() as session:
            current = stored_document(session, ScaleSet, subscription, group_name, name)
        document = validate_scale_set(body, name, current)
        self._prepare_extensions(document, current)
        return self._write_set(subscription, group_name, name, document, expected_exists=current is not None)

    def patch_set(self, subscription: str, group_name: str, name: str, body: Any) -> Change:
        with self._db.read() as session:
            existing = _require_set(session, subscription, group_name, name)
            current = existing.document
        document = validate_scale_set(merge_patch(current, body), name, current)
        self._prepare_extensions(document, current)
        return self._write_set(subscription, group_name, name, document, expected_exists=True)

    def _prepare_extensions(self, document: Json, current: Json | None) -> None:
        """Check every extension resolves in the catalog and seal its protected settings (in place)."""
        prepare_extensions(document, current, self._extensions, self._secrets)

    # ---------------------------------------------------------------------------- scale-set extensions
    def put_extension(
        self,
        subscription: str,
        group_name: str,
        name: str,
        extension_name: str,
        body: Any,
        merge: bool = False,
    ) -> Change:
        """PUT (or, with `merge`, PATCH) one extension of the model: a model change like any other."""
        if not isinstance(body, dict) or not isinstance(body.get("properties", {}), dict):
            raise invalid("properties", 'The body must be an extension: {"properties": {...}}.')
        current = self.get_set(subscription, group_name, name).document
        document = copy.deepcopy(current)
        profile = document["properties"]["virtualMachineProfile"]
        extensions = (profile.setdefault("extensionProfile", {})).setdefault("extensions", [])
        existing = extension_named(extensions, extension_name)
        if merge and existing is None:
            raise self._extension_not_found(name, extension_name)
        properties = dict(existing["properties"]) if merge and existing else {}
        properties.update(copy.deepcopy(body.get("properties") or {}))
        replacement = {"name": existing["name"] if existing else extension_name, "properties": properties}
        if existing is None:
            extensions.append(replacement)
        else:
            extensions[extensions.index(existing)] = replacement
        validated = validate_scale_set(document, name, current)
        self._prepare_extensions(validated, current)
        change = self._write_set(subscription, group_name, name, validated, expected_exists=True)
        return Change(change.scale_set, change.operation, created=existing is None)

    def delete_extension(self, subscription: str, group_name: str, name: str, extension_name: str) -> Change:
        current = self.get_set(subscription, group_name, name).document
        document = copy.deepcopy(current)
        extensions = (document["properties"]["virtualMachineProfile"].get("extensionProfile") or {}).get(
            "extensions"
        ) or []
        existing = extension_named(extensions, extension_name)
        if existing is None:
            raise self._extension_not_found(name, extension_name)
        extensions.remove(existing)
        validated = validate_scale_set(document, name, current)
        self._prepare_extensions(validated, current)
        return self._write_set(subscription, group_name, name, validated, expected_exists=True)

    @staticmethod
    def _extension_not_found(name: str, extension_name: str) -> ArmError:
        return ArmError(
            404, "ResourceNotFound", f"The extension '{extension_name}' of scale set '{name}' was not found."
        )

    def _write_set(
        self, subscription: str, group_name: str, name: str, document: Json, expected_exists: bool
    ) -> Change:
        location = document["location"]
        probe = document["properties"]["virtualMachineProfile"].get("networkProfile", {}).get("healthProbe")
        if probe and not self._probe_exists(str(probe["id"])):
            raise ArmError(
                400,
                "InvalidParameter",
                f"The load balancer probe '{probe['id']}' does not exist.",
                "properties.virtualMachineProfile.networkProfile.healthProbe.id",
            )
        with self._db.read() as session:
            group = _find_group(session, subscription, group_name)
            existing = _find_set(session, group, name) if group is not None else None
            # 'latest' passes over versions rolled back on this set (services/platform.py): a PUT that
            # only scales must not bring a known-bad image back.
            blocked = blocked_image_versions(session, existing) if existing is not None else frozenset()
            was_auto = (
                existing is not None
                and AutoOsSettings.of(existing.document["properties"]["upgradePolicy"]).enabled
            )
        image = self._catalog.find_allowed(location, image_request(document), blocked)
        if image is None:
            raise image_not_found(location, image_request(document))
        if not was_auto:
            _check_automatic_os_upgrade_supported(document, image)
        now = self._clock.now()
        with self._db.write() as session:
            group = require_writable_group(session, subscription, group_name)
            scale_set = _find_set(session, group, name)
            if (scale_set is not None) != expected_exists:
                raise ArmError(
                    409,
                    "Conflict",
                    f"The scale set '{name}' changed while it was being written; send the request again.",
                )
            operation = start_operation(
                session,
                subscription=subscription,
                location=location,
                kind="set_update",
                resource_id=set_id_of(subscription, group.name, name),
                now=now,
            )
            created = scale_set is None
            new_model = False
            if scale_set is None:
                scale_set = add_scale_set(
                    session,
                    group,
                    uid=str(uuid.uuid4()),
                    name=name,
                    document=document,
                    image_version=image.version,
                    now=now,
                )
            else:
                if scale_set.provisioning_state == "Deleting":
                    raise operation_not_allowed(f"The scale set '{name}' is being deleted.")
                if model_changed(scale_set, document, image.version):
                    new_model = True
                    add_model_version(session, scale_set, document, image.version, now)
                scale_set.document = document
                scale_set.provisioning_state = "Updating"
                scale_set.updated_at = now
            operation.payload = {"set_id": scale_set.id}
            if not created and new_model:
                self._roll_out_model(session, operation, scale_set, now)
            self._scale_to(session, operation, scale_set, int(document["sku"]["capacity"]))
            complete_if_done(session, operation.id, now)
        self._wake()
        return Change(scale_set, operation, created)

    def _roll_out_model(self, session: Session, operation: Operation, scale_set: ScaleSet, now: Any) -> None:
        """What a new model does to running instances depends on the upgrade policy's mode (M-3):
        Automatic applies it to every instance at once, Rolling starts a rolling upgrade, Manual waits for
        `manualupgrade`. Instances protected from scale-set actions are left alone."""
        mode = scale_set.document["properties"]["upgradePolicy"]["mode"]
        if mode == "Automatic":
            stale = [
                i
                for i in _live_instances(session, scale_set)
                if i.model_version != scale_set.model_version and not i.protect_from_scale_set_actions
            ]
            self._apply_model(session, operation, scale_set, stale)
        elif mode == "Rolling" and active_run(session, scale_set.id) is None:
            begin_user_run(session, scale_set, "model", now)
        # A model change while a run is going on is picked up when that run ends (`follow_up`).

    def _scale_to(self, session: Session, operation: Operation, scale_set: ScaleSet, capacity: int) -> None:
        live = _live_instances(session, scale_set)
        if capacity > len(live):
            self._create_instances(session, operation, scale_set, live, capacity - len(live))
        elif capacity < len(live):
            # Scale-in removes the highest instance IDs first and never a protected instance.
            removable = [i for i in sorted(live, key=lambda i: -i.instance_id) if not i.protect_from_scale_in]
            excess = len(live) - capacity
            if len(removable) < excess:
                raise operation_not_allowed(
                    f"Cannot scale in to {capacity}: {len(live) - len(removable)} instances are protected "
                    "from scale-in (protectionPolicy.protectFromScaleIn).",
                    "sku.capacity",
                )
            self._delete_instances(session, operation, scale_set, removable[:excess])

    def _create_instances(
        self,
        session: Session,
        operation: Operation,
        scale_set: ScaleSet,
        live: Sequence[Instance],
        count: int,
    ) -> list[Instance]:
        now = self._clock.now()
        properties = scale_set.document["properties"]
        placements = place_instances(
            (Placement(i.zone, i.fault_domain, i.update_domain) for i in live),
            scale_set.document.get("zones", []),
            int(properties["platformFaultDomainCount"]),
            count,
        )
        addresses = allocate_addresses(session, self._pool, count)
        created = []
        for placement, address in zip(placements, addresses, strict=True):
            instance = Instance(
                set_id=scale_set.id,
                instance_id=scale_set.next_instance_id,
                vm_id=str(uuid.uuid4()),
                zone=placement.zone,
                fault_domain=placement.fault_domain,
                update_domain=placement.update_domain,
                address=address,
                model_version=scale_set.model_version,
                image_version=scale_set.exact_image_version,
                os_disk_generation=1,
                provisioning_state="creating",
                power_state="starting",
                status_message="",
                protect_from_scale_in=False,
                protect_from_scale_set_actions=False,
                created_at=now,
                updated_at=now,
            )
            scale_set.next_instance_id += 1
            session.add(instance)
            add_task(session, operation, instance, "create", now)
            created.append(instance)
        return created

    def create_instances(
        self, session: Session, operation: Operation, scale_set: ScaleSet, count: int
    ) -> list[Instance]:
        """`count` more instances on the set's newest model, each with its create task (maxSurge)."""
        return self._create_instances(
            session, operation, scale_set, _live_instances(session, scale_set), count
        )

    def _delete_instances(
        self, session: Session, operation: Operation, scale_set: ScaleSet, instances: Sequence[Instance]
    ) -> None:
        now = self._clock.now()
        for instance in instances:
            add_task(session, operation, instance, "delete", now)

    def get_set(self, subscription: str, group_name: str, name: str) -> ScaleSet:
        with self._db.read() as session:
            return _require_set(session, subscription, group_name, name)

    def list_sets(
        self, subscription: str, group_name: str | None = None, location: str | None = None
    ) -> list[ScaleSet]:
        with self._db.read() as session:
            query = select(ScaleSet).where(ScaleSet.subscription == subscription).order_by(ScaleSet.id)
            # Standalone VMs run on hidden one-instance sets (services/vms.py): not scale sets to clients.
            query = query.where(~ScaleSet.name_key.startswith(BACKING_SET_PREFIX, autoescape=True))
            if group_name is not None:
                query = query.where(ScaleSet.group_id == _require_group(session, subscription, group_name).id)
            if location is not None:
                query = query.where(ScaleSet.location == location.replace(" ", "").lower())
            return list(session.scalars(query))

    def delete_set(self, subscription: str, group_name: str, name: str) -> Operation:
        now = self._clock.now()
        with self._db.write() as session:
            scale_set = _require_set(session, subscription, group_name, name)
            group = session.get(ResourceGroup, scale_set.group_id)
            assert group is not None
            operation = self.begin_set_delete(
                session, scale_set, set_id_of(subscription, group.name, name), now
            )
        self._wake()
        return operation

    def begin_set_delete(
        self, session: Session, scale_set: ScaleSet, resource_id: str, now: datetime
    ) -> Operation:
        """Inside a write transaction: the delete operation of a set (a VM's hidden set too, under the
        VM's resource id), its runs stopped, a delete task for every instance; the engine removes the
        set when they are done."""
        operation = start_operation(
            session,
            subscription=scale_set.subscription,
            location=scale_set.location,
            kind="set_delete",
            resource_id=resource_id,
            now=now,
            payload={"set_id": scale_set.id},
        )
        scale_set.provisioning_state = "Deleting"
        stop_runs_of_deleted_set(session, scale_set, now)
        self._delete_instances(session, operation, scale_set, _all_instances(session, scale_set))
        complete_if_done(session, operation.id, now)
        return operation

    # ------------------------------------------------------------------------------------- instances
    def set_action(self, subscription: str, group_name: str, name: str, action: str, body: Any) -> Operation:
        """A POST action on a set's instances (`instanceIds` omitted or '*' means all of them)."""
        requested = _instance_ids(body, required=action == "delete")
        with self._db.write() as session:
            scale_set = _require_set(session, subscription, group_name, name)
            live = _live_instances(session, scale_set)
            chosen = _choose_instances(live, requested)
            if requested is None:
                # A set-wide action leaves instances protected from scale-set actions alone.
                chosen = [i for i in chosen if not i.protect_from_scale_set_actions]
            exact_version = _exact_version(body) if action in ("reimage", "reimageall") else None
            return self._instance_operation(session, scale_set, chosen, action, exact_version)

    def manual_upgrade(self, subscription: str, group_name: str, name: str, body: Any) -> Operation:
        """`manualupgrade`: bring the chosen instances to the set's latest model (M-3), each by the least
        disruptive action that realises the change (`domain/model_change.py`); instances already on the
        latest model are left alone."""
        requested = _instance_ids(body, required=True)
        with self._db.write() as session:
            scale_set = _require_set(session, subscription, group_name, name)
            stale = [
                instance
                for instance in _choose_instances(_live_instances(session, scale_set), requested)
                if instance.model_version != scale_set.model_version
            ]
            operation = self._start_instances_operation(session, scale_set, "manualupgrade")
            self._apply_model(session, operation, scale_set, stale)
            complete_if_done(session, operation.id, self._clock.now())
            return operation

    def _apply_model(
        self, session: Session, operation: Operation, scale_set: ScaleSet, instances: Sequence[Instance]
    ) -> None:
        """Tasks that bring `instances` onto the set's newest model (persisted with the operation)."""
        now = self._clock.now()
        target = session.get(ScaleSetModel, (scale_set.id, scale_set.model_version))
        assert target is not None
        models: dict[int, ScaleSetModel | None] = {}
        for instance in instances:
            if instance.model_version not in models:
                models[instance.model_version] = session.get(
                    ScaleSetModel, (scale_set.id, instance.model_version)
                )
            instance.updated_at = now
            move_to_model(session, operation, instance, models[instance.model_version], target, now)

    def vm_action(
        self,
        subscription: str,
        group_name: str,
        name: str,
        instance_id: str,
        action: str,
        body: Any = None,
        *,
        backing_set: bool = False,
    ) -> Operation:
        """A POST action on one instance; `backing_set` when a standalone VM acts on its hidden set."""
        with self._db.write() as session:
            scale_set = _require_set(session, subscription, group_name, name, backing_set=backing_set)
            instance = _require_instance(session, scale_set, instance_id)
            exact_version = _exact_version(body) if action in ("reimage", "reimageall") else None
            return self._instance_operation(session, scale_set, [instance], action, exact_version)

    def _instance_operation(
        self,
        session: Session,
        scale_set: ScaleSet,
        instances: Sequence[Instance],
        action: str,
        exact_version: str | None,
    ) -> Operation:
        now = self._clock.now()
        if exact_version is not None:
            exact_version = self._catalog_version(scale_set, exact_version)
        operation = self._start_instances_operation(session, scale_set, action)
        for instance in instances:
            if action in ("reimage", "reimageall"):
                instance.os_disk_generation += 1
                if exact_version is not None:
                    instance.image_version = exact_version
            add_task(session, operation, instance, action, now)
        if action == "delete" and instances:
            # Deleting instances lowers the capacity, as on Azure, so they do not come back on the next PUT.
            document = copy.deepcopy(scale_set.document)
            document["sku"]["capacity"] = max(0, int(document["sku"]["capacity"]) - len(instances))
            scale_set.document = document
        complete_if_done(session, operation.id, now)
        self._wake()
        return operation

    def _start_instances_operation(self, session: Session, scale_set: ScaleSet, action: str) -> Operation:
        if scale_set.provisioning_state == "Deleting":
            raise operation_not_allowed(f"The scale set '{scale_set.name}' is being deleted.")
        group = session.get(ResourceGroup, scale_set.group_id)
        assert group is not None
        return start_operation(
            session,
            subscription=scale_set.subscription,
            location=scale_set.location,
            kind="instances",
            resource_id=set_id_of(scale_set.subscription, group.name, scale_set.name),
            now=self._clock.now(),
            payload={"set_id": scale_set.id, "action": action},
        )

    def _catalog_version(self, scale_set: ScaleSet, version: str) -> str:
        """The catalog's spelling of a requested version (1.01.0 finds 1.1.0), or 404."""
        requested = image_request(scale_set.document)
        exact = requested.with_version(version)
        image = self._catalog.find(scale_set.location, exact)
        if image is None:
            raise image_not_found(scale_set.location, exact)
        return image.version

    def delete_vm(self, subscription: str, group_name: str, name: str, instance_id: str) -> Operation:
        return self.vm_action(subscription, group_name, name, instance_id, "delete")

    def update_vm(
        self, subscription: str, group_name: str, name: str, instance_id: str, body: Any
    ) -> Operation:
        """VM PUT: scaleset lets a client change the instance's `protectionPolicy`; the rest of an
        instance comes from its set's model."""
        if not isinstance(body, dict):
            raise invalid("body", "The request body must be a JSON object.")
        policy = (body.get("properties") or {}).get("protectionPolicy") or {}
        if not isinstance(policy, dict):
            raise invalid("properties.protectionPolicy", "'protectionPolicy' must be an object.")
        flags: dict[str, bool] = {}
        for key in ("protectFromScaleIn", "protectFromScaleSetActions"):
            if key in policy:
                if not isinstance(policy[key], bool):
                    raise invalid(f"properties.protectionPolicy.{key}", f"'{key}' must be true or false.")
                flags[key] = policy[key]
        now = self._clock.now()
        with self._db.write() as session:
            scale_set = _require_set(session, subscription, group_name, name)
            instance = _require_instance(session, scale_set, instance_id)
            instance.protect_from_scale_in = flags.get("protectFromScaleIn", instance.protect_from_scale_in)
            instance.protect_from_scale_set_actions = flags.get(
                "protectFromScaleSetActions", instance.protect_from_scale_set_actions
            )
            instance.updated_at = now
            group = session.get(ResourceGroup, scale_set.group_id)
            assert group is not None
            operation = start_operation(
                session,
                subscription=subscription,
                location=scale_set.location,
                kind="instances",
                resource_id=set_id_of(subscription, group.name, scale_set.name),
                now=now,
                payload={"set_id": scale_set.id},
            )
            finish_operation(operation, now, None)
            return operation

    def list_instances(
        self, subscription: str, group_name: str, name: str
    ) -> tuple[ScaleSet, list[Instance]]:
        with self._db.read() as session:
            scale_set = _require_set(session, subscription, group_name, name)
            instances = list(
                session.scalars(
                    select(Instance).where(Instance.set_id == scale_set.id).order_by(Instance.instance_id)
                )
            )
            return scale_set, instances

    def get_instance(
        self, subscription: str, group_name: str, name: str, instance_id: str
    ) -> tuple[ScaleSet, Instance]:
        with self._db.read() as session:
            scale_set = _require_set(session, subscription, group_name, name)
            return scale_set, _require_instance(session, scale_set, instance_id)

    def model_for(self, scale_set: ScaleSet, version: int) -> Json:
        with self._db.read() as session:
            row = session.get(ScaleSetModel, (scale_set.id, version))
            assert row is not None, "every instance's model version is kept"
            return row.model

    def group_name_of(self, scale_set: ScaleSet) -> str:
        with self._db.read() as session:
            group = session.get(ResourceGroup, scale_set.group_id)
            assert group is not None
            return group.name


# ------------------------------------------------------------------------------------------ helpers
def _check_automatic_os_upgrade_supported(document: Json, image: Image) -> None:
    """M-12: switching automatic OS upgrade on needs an image the catalog marks as supporting it
    (`automaticOSUpgradeSupported` in its manifest). Checked when it is switched on, not on every later
    write, so a newer version without the mark does not lock the set; the platform just never offers it."""
    if not AutoOsSettings.of(document["properties"]["upgradePolicy"]).enabled:
        return
    if not supports_automatic_os_upgrade(image):  # gallery images always do (catalog/service.py)
        raise invalid(
            "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade",
            f"Automatic OS image upgrade is not supported by the image {image.publisher}:{image.offer}:"
            f"{image.sku}:{image.version}: its manifest does not set automaticOSUpgradeSupported.",
        )


def _require_instance(session: Session, scale_set: ScaleSet, instance_id: str) -> Instance:
    instance = None
    if instance_id.isdigit():
        instance = session.scalars(
            select(Instance).where(Instance.set_id == scale_set.id, Instance.instance_id == int(instance_id))
        ).first()
    if instance is None:
        raise ArmError(
            404,
            "ResourceNotFound",
            f"The instance '{instance_id}' of scale set '{scale_set.name}' was not found.",
        )
    return instance


def _instance_ids(body: Any, required: bool) -> list[str] | None:
    """`instanceIds` of a POST body; None means every instance."""
    if body is None or (isinstance(body, dict) and body.get("instanceIds") is None):
        if required:
            raise invalid("instanceIds", "'instanceIds' is required.")
        return None
    if not isinstance(body, dict):
        raise invalid("body", "The request body must be a JSON object.")
    ids = body["instanceIds"]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise invalid("instanceIds", "'instanceIds' must be a list of instance ID strings.")
    return None if "*" in ids else ids


def _choose_instances(live: Sequence[Instance], requested: list[str] | None) -> list[Instance]:
    if requested is None:
        return list(live)
    by_id = {str(i.instance_id): i for i in live}
    unknown = [i for i in requested if i not in by_id]
    if unknown:
        raise invalid("instanceIds", f"The scale set has no instance with ID {', '.join(unknown)}.")
    return [by_id[i] for i in dict.fromkeys(requested)]


def _exact_version(body: Any) -> str | None:
    if not isinstance(body, dict) or body.get("exactVersion") is None:
        return None
    version = body["exactVersion"]
    if not isinstance(version, str) or not version:
        raise invalid("exactVersion", "'exactVersion' must be an image version string.")
    return version
