"""The tables. Resource documents are kept as JSON (the validated wire shape), with the columns we query
on beside them; the schema itself is owned by the Alembic migrations in `store/migrations`.

Names are stored as given and matched through a lower-cased `*_key` column, because ARM names are
case-insensitive but case-preserving.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime]


class ResourceGroup(Base):
    __tablename__ = "resource_groups"
    __table_args__ = (UniqueConstraint("subscription", "name_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subscription: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(90))
    name_key: Mapped[str] = mapped_column(String(90))
    location: Mapped[str] = mapped_column(String(64))
    tags: Mapped[dict[str, Any]]
    provisioning_state: Mapped[str] = mapped_column(String(16), default="Succeeded")
    created_at: Mapped[datetime]


class ScaleSet(Base):
    __tablename__ = "scale_sets"
    __table_args__ = (UniqueConstraint("group_id", "name_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    subscription: Mapped[str] = mapped_column(String(64), index=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("resource_groups.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    name_key: Mapped[str] = mapped_column(String(64))
    location: Mapped[str] = mapped_column(String(64), index=True)
    document: Mapped[dict[str, Any]]
    model_version: Mapped[int] = mapped_column(Integer, default=1)
    exact_image_version: Mapped[str] = mapped_column(String(64))
    provisioning_state: Mapped[str] = mapped_column(String(16))
    next_instance_id: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ScaleSetModel(Base):
    """Every model version a set has had, so an instance can be told which one it runs (and, later,
    be rolled back to the one before)."""

    __tablename__ = "scale_set_models"
    set_id: Mapped[int] = mapped_column(ForeignKey("scale_sets.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[dict[str, Any]]
    exact_image_version: Mapped[str] = mapped_column(String(64))
    # The exact handler version each extension of the model resolved to when the version was written
    # ({extension name: version}), as `exact_image_version` pins the image: every instance on this model
    # runs these, and an instance put back on it (a rollback) gets them back. None for versions written
    # before pins existed (resolved afresh at each goal state then).
    extension_versions: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime]


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("set_id", "instance_id"),
        # The live-instance count a rolling upgrade takes every pass: answered from the index alone.
        Index("ix_instances_set_state", "set_id", "provisioning_state"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("scale_sets.id"), index=True)
    instance_id: Mapped[int] = mapped_column(Integer)
    vm_id: Mapped[str] = mapped_column(String(36))
    zone: Mapped[str | None] = mapped_column(String(8), nullable=True)
    fault_domain: Mapped[int] = mapped_column(Integer)
    update_domain: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(45), unique=True)
    model_version: Mapped[int] = mapped_column(Integer)
    image_version: Mapped[str] = mapped_column(String(64))
    os_disk_generation: Mapped[int] = mapped_column(Integer, default=1)
    # Azure's words: ProvisioningState/creating|updating|succeeded|failed|deleting,
    # PowerState/starting|running|stopping|stopped|deallocating|deallocated|unknown.
    provisioning_state: Mapped[str] = mapped_column(String(16))
    power_state: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str] = mapped_column(Text, default="")
    protect_from_scale_in: Mapped[bool] = mapped_column(Boolean, default=False)
    protect_from_scale_set_actions: Mapped[bool] = mapped_column(Boolean, default=False)
    # The instance's certificate for protected settings (as Azure gives each VM one); the private key is
    # sealed at rest. Made the first time an extension with protected settings reaches the instance.
    certificate_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    private_key_sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The extension handler versions the instance's last goal state resolved to ({name: version}), so an
    # extension upgrade knows which instances already run the newest ones.
    extension_versions: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Operation(Base):
    """A long-running operation as ARM shows it; `kind` and `payload` say what finishing it means."""

    __tablename__ = "operations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subscription: Mapped[str] = mapped_column(String(64))
    location: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))  # InProgress | Succeeded | Failed | Canceled
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    start_time: Mapped[datetime]
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Task(Base):
    """One provider action on one instance, committed before the provider is called (M-26)."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_status_instance", "status", "instance_row_id"),
        # An operation's tasks of some instances (a rolling batch's newest task per member).
        Index("ix_tasks_operation_instance", "operation_id", "instance_row_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    operation_id: Mapped[str] = mapped_column(ForeignKey("operations.id"), index=True)
    instance_row_id: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    # pending | running | settling (acted; waiting for the guest to report) | done | failed
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text, default="")
    # While settling: what the guest must report (GuestExpectation as JSON) and by when.
    expect: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class RollingUpgrade(Base):
    """One rolling upgrade of a set: the persisted state its reconcile loop moves one step per pass.

    `phase` is where the loop is: `ready` (the next batch may start once `not_before` has passed),
    `upgrading` (a batch runs; judged when its instances are done and healthy, or at `deadline`),
    `rolling_back` (failed instances get their previous OS disk and model back), `done`.
    `status` is Azure's RollingUpgradeStatusCode. Progress counts are computed from `upgrade_instances`.
    """

    __tablename__ = "rolling_upgrades"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("scale_sets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # os | extension | model
    started_by: Mapped[str] = mapped_column(String(16))  # User | Platform
    operation_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    policy: Mapped[dict[str, Any]]
    rollback_on_breach: Mapped[bool] = mapped_column(Boolean, default=False)
    target_model_version: Mapped[int] = mapped_column(Integer)
    target_image_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str] = mapped_column(String(16))
    batch_number: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    last_action: Mapped[str] = mapped_column(String(16), default="Start")
    last_action_time: Mapped[datetime]
    start_time: Mapped[datetime]
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A platform extension upgrade (M-18): the one extension it moves ("publisher.type" in lower case),
    # its name in the model, and the version it moves it to. None for other runs.
    extension_key: Mapped[str | None] = mapped_column(String(260), nullable=True)
    extension_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    extension_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Roll each failed member of a batch back as soon as its batch is judged, and go on (M-19, M-22),
    # rather than only on a breach of maxUnhealthyUpgradedInstancePercent.
    roll_back_each_failure: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class UpgradeInstance(Base):
    """One instance's part in a rolling upgrade, with what it ran before (for rollback)."""

    __tablename__ = "upgrade_instances"
    # One batch of a run (the rolling loop reads the current batch's members).
    __table_args__ = (Index("ix_upgrade_instances_upgrade_batch", "upgrade_id", "batch"),)
    upgrade_id: Mapped[str] = mapped_column(ForeignKey("rolling_upgrades.id"), primary_key=True)
    instance_row_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    # upgrading | succeeded | failed | rolling_back | rolled_back | rollback_failed | replaced
    state: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))  # reimage | extensions | model | surge
    before_model_version: Mapped[int] = mapped_column(Integer)
    before_image_version: Mapped[str] = mapped_column(String(64))
    before_os_disk_generation: Mapped[int] = mapped_column(Integer)
    # maxSurge: the new instance made in this one's place (deleted once the new one is healthy).
    surge_row_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime]


class LoadBalancer(Base):
    """A minimal `Microsoft.Network/loadBalancers`: only its `probes` matter, as health sources (M-11)."""

    __tablename__ = "load_balancers"
    __table_args__ = (UniqueConstraint("group_id", "name_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subscription: Mapped[str] = mapped_column(String(64), index=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("resource_groups.id"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    name_key: Mapped[str] = mapped_column(String(80))
    location: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("location", "publisher_key", "offer_key", "sku_key", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    location: Mapped[str] = mapped_column(String(64))
    publisher: Mapped[str] = mapped_column(String(128))
    publisher_key: Mapped[str] = mapped_column(String(128))
    offer: Mapped[str] = mapped_column(String(128))
    offer_key: Mapped[str] = mapped_column(String(128))
    sku: Mapped[str] = mapped_column(String(128))
    sku_key: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]]
    path: Mapped[str] = mapped_column(Text)
    published_at: Mapped[datetime]


class ExtensionImage(Base):
    """A published extension handler package (Azure's `VirtualMachineExtensionImages`), unpacked on disk.

    Extension images are the same in every location here, as a catalog on one host has no regions to differ.
    """

    __tablename__ = "extension_images"
    __table_args__ = (UniqueConstraint("publisher_key", "type_key", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    publisher: Mapped[str] = mapped_column(String(128))
    publisher_key: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(128))
    type_key: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    handler_manifest: Mapped[dict[str, Any]]
    path: Mapped[str] = mapped_column(Text)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    published_at: Mapped[datetime]


class BlockedImageVersion(Base):
    """An image version an automatic OS upgrade must not offer a set again: an upgrade to it there was
    rolled back (services/platform.py). One row per such run; `cleared_at` is set when an operator lifts
    the block, and the row stays as the record of what happened. Keyed by the set's `uid`, not its row id:
    no foreign key holds up deleting the set, and a set made later under a reused row id inherits nothing."""

    __tablename__ = "blocked_image_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    set_uid: Mapped[str] = mapped_column(String(36), index=True)
    image_version: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(36), unique=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    blocked_at: Mapped[datetime]
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AvailabilitySet(Base):
    """`Microsoft.Compute/availabilitySets`: the document holds the domain counts (domain/
    availability_set_spec.py). Goes with its resource group (ON DELETE CASCADE)."""

    __tablename__ = "availability_sets"
    __table_args__ = (UniqueConstraint("group_id", "name_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subscription: Mapped[str] = mapped_column(String(64), index=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("resource_groups.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    name_key: Mapped[str] = mapped_column(String(64))
    location: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class VirtualMachine(Base):
    """A standalone `Microsoft.Compute/virtualMachines`, run by a hidden one-instance scale set
    (`set_id`, services/vms.py). The row goes when that set is removed (ON DELETE CASCADE), so deleting a
    VM, or its group, needs no step of its own once the instance is gone. `update_domain`/`fault_domain`
    are its place in its availability set (0/0 outside one); `extensions` is the list of its extension
    resources as the set's model holds them."""

    __tablename__ = "virtual_machines"
    __table_args__ = (UniqueConstraint("group_id", "name_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subscription: Mapped[str] = mapped_column(String(64), index=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("resource_groups.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    name_key: Mapped[str] = mapped_column(String(64))
    location: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict[str, Any]]
    extensions: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    set_id: Mapped[int] = mapped_column(ForeignKey("scale_sets.id", ondelete="CASCADE"), unique=True)
    availability_set_id: Mapped[int | None] = mapped_column(
        ForeignKey("availability_sets.id"), nullable=True, index=True
    )
    update_domain: Mapped[int] = mapped_column(Integer, default=0)
    fault_domain: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ExtensionUpgradeFailure(Base):
    """A platform extension upgrade that failed on a set (services/extension_failures.py, M-20): one row per
    such run. `retry_at` is when the version may be given to the set again; None means never (it failed
    again on its retry: blocked until an operator clears it). `kind` "gated" is a run stopped at the gate
    before any instance, which says nothing against the version and never counts towards a block.
    `cleared_at` is set when an operator lifts it; the row stays as the record. Keyed by the set's `uid`
    (no foreign key), as `BlockedImageVersion`."""

    __tablename__ = "extension_upgrade_failures"
    __table_args__ = (Index("ix_extension_upgrade_failures_set", "set_uid", "extension_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    set_uid: Mapped[str] = mapped_column(String(36))
    extension_key: Mapped[str] = mapped_column(String(260))  # "publisher.type" in lower case
    extension_name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(36), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # failed | gated
    reason: Mapped[str] = mapped_column(Text, default="")
    failed_at: Mapped[datetime]
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Gallery(Base):
    """`Microsoft.Compute/galleries` (services/galleries.py): a holder of image definitions. Goes with its
    resource group (ON DELETE CASCADE, down to its versions)."""

    __tablename__ = "galleries"
    __table_args__ = (UniqueConstraint("group_id", "name_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subscription: Mapped[str] = mapped_column(String(64), index=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("resource_groups.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    name_key: Mapped[str] = mapped_column(String(80))
    location: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class GalleryImage(Base):
    """`Microsoft.Compute/galleries/images`, an image definition. `catalog_key` is the synthetic catalog
    offer its versions are filed under in `images` (domain/gallery_spec.py)."""

    __tablename__ = "gallery_images"
    __table_args__ = (UniqueConstraint("gallery_id", "name_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    gallery_id: Mapped[int] = mapped_column(ForeignKey("galleries.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    name_key: Mapped[str] = mapped_column(String(80))
    location: Mapped[str] = mapped_column(String(64))
    catalog_key: Mapped[str] = mapped_column(String(64), index=True)
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class GalleryImageVersion(Base):
    """`Microsoft.Compute/galleries/images/versions`: immutable once published. Its artifact lives in the
    image catalog, one `images` row per target region under the definition's `catalog_key`; the document
    holds the publishing profile (target regions, excludeFromLatest, publishedDate)."""

    __tablename__ = "gallery_image_versions"
    __table_args__ = (UniqueConstraint("image_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("gallery_images.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    catalog_key: Mapped[str] = mapped_column(String(64), index=True)
    document: Mapped[dict[str, Any]]
    published_at: Mapped[datetime]
