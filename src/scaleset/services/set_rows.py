"""Writing a scale set's model rows: a new set with its first model version, a later model version, and an
instance moved onto the newest one.

Shared by the scale-set service and the VM service (a VM runs on a hidden one-instance set,
services/vms.py), so a model is versioned, and reaches instances, by one rule for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from scaleset.domain.model_change import change_action
from scaleset.domain.scaleset_spec import model_of, models_differ
from scaleset.services.extension_pins import pins_for
from scaleset.services.lookups import add_to_group
from scaleset.services.operations import add_task
from scaleset.store.tables import Instance, Operation, ResourceGroup, ScaleSet, ScaleSetModel

Json = dict[str, Any]


def add_scale_set(
    session: Session,
    group: ResourceGroup,
    *,
    uid: str,
    name: str,
    document: Json,
    image_version: str,
    now: datetime,
) -> ScaleSet:
    """A new set (Creating, no instances yet) with `document` as its model version 1."""
    scale_set = add_to_group(
        session,
        ScaleSet,
        group,
        name,
        document,
        now,
        uid=uid,
        model_version=1,
        exact_image_version=image_version,
        provisioning_state="Creating",
        next_instance_id=0,
    )
    session.flush()
    model = model_of(document)
    session.add(
        ScaleSetModel(
            set_id=scale_set.id,
            version=1,
            model=model,
            exact_image_version=image_version,
            extension_versions=pins_for(session, scale_set, model, None, now),
            created_at=now,
        )
    )
    return scale_set


def model_changed(scale_set: ScaleSet, document: Json, image_version: str) -> bool:
    """Whether writing `document` (to run `image_version`) makes a new model version."""
    return models_differ(scale_set.document, document) or scale_set.exact_image_version != image_version


def add_model_version(
    session: Session, scale_set: ScaleSet, document: Json, image_version: str, now: datetime
) -> None:
    """A new model version from a changed `document`: instances keep the one they run until it is applied
    to them."""
    write_model_version(session, scale_set, model_of(document), image_version, now)


def write_model_version(
    session: Session,
    scale_set: ScaleSet,
    model: Json,
    image_version: str,
    now: datetime,
    *,
    extensions_afresh: bool = False,
    extension_overrides: Mapping[str, str] | None = None,
) -> int:
    """Write `model` as the set's next model version, running `image_version` and the extension versions
    `services/extension_pins.py` pins for it (`extensions_afresh`, `extension_overrides`: see `pins_for`);
    returns the new version."""
    previous = session.get(ScaleSetModel, (scale_set.id, scale_set.model_version))
    pins = pins_for(
        session, scale_set, model, previous, now, afresh=extensions_afresh, overrides=extension_overrides
    )
    scale_set.model_version += 1
    scale_set.exact_image_version = image_version
    session.add(
        ScaleSetModel(
            set_id=scale_set.id,
            version=scale_set.model_version,
            model=model,
            exact_image_version=image_version,
            extension_versions=pins,
            created_at=now,
        )
    )
    return scale_set.model_version


def move_to_model(
    session: Session,
    operation: Operation,
    instance: Instance,
    before: ScaleSetModel | None,
    target: ScaleSetModel,
    now: datetime,
) -> None:
    """Put `instance` (running model version `before`, None if that row is gone) on model version
    `target`, with the task of the least disruptive action that realises the change
    (`domain/model_change.py`), if any."""
    action = change_action(
        before.model if before is not None else {},
        target.model,
        instance.image_version,
        target.exact_image_version,
        before.extension_versions if before is not None else None,
        target.extension_versions,
    )
    instance.model_version = target.version
    instance.image_version = target.exact_image_version
    if action == "reimage":
        instance.os_disk_generation += 1
    if action != "none":
        add_task(session, operation, instance, action, now)
