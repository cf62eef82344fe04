"""Automatic OS image upgrades started by the platform (M-7, M-8, M-10, M-12), and the memory that keeps
them from looping.

When does the platform look at a set?
- at once when a version of its publisher/offer/sku is published (`on_image_published`, a catalog
  listener): every opted-in set starts its run in that same moment;
- when a run on the set ends (`on_run_finished`, a rolling-engine listener): a set that was busy when the
  version came out gets its turn; a run that rolled an image back blocks that image on the set;
- when an operator clears a blocked version or approves a deferred upgrade;
- in a sweep every `sweep_every` seconds and at start (`reconcile`, an engine reconciler): whatever a
  crash between two of the steps above lost is found again (M-26). The sweep only reads unless a set is
  behind.

What it decides is `domain/auto_upgrade.py`'s job; this module gathers the facts and writes the result,
the run (and the model version it targets) in one transaction, as a user-started upgrade would be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session

from scaleset.catalog.service import ImageCatalog, supports_automatic_os_upgrade
from scaleset.domain.auto_upgrade import (
    PLATFORM,
    AutoOsSettings,
    MemberOutcome,
    PlatformDecision,
    SetFacts,
    follows_latest,
    plan_platform_upgrade,
    platform_run_policy,
    version_to_block,
    version_to_restore,
)
from scaleset.domain.errors import operation_not_allowed
from scaleset.domain.fields import parse_versions
from scaleset.domain.model_change import change_action
from scaleset.domain.rolling import ACTIVE_STATUSES, CANCELLED, FAULTED
from scaleset.domain.scaleset_spec import image_request
from scaleset.domain.versions import ImageVersion
from scaleset.engine.clock import Clock
from scaleset.services.lookups import require_set
from scaleset.services.periodic_sweep import PeriodicSweep
from scaleset.services.rollouts import RolloutGate, RolloutSubject, image_key_of
from scaleset.services.runs import active_run, begin_run, blocked_image_versions, new_model_version
from scaleset.store.db import Database
from scaleset.store.tables import (
    BlockedImageVersion,
    Image,
    Instance,
    Operation,
    RollingUpgrade,
    ScaleSet,
    ScaleSetModel,
    UpgradeInstance,
)

log = logging.getLogger("scaleset.platform")
ROLLED_BACK_STATES = ("rolled_back", "rollback_failed")
# A platform run that stopped at the gate before its first batch (the set was too unhealthy to start)
# touched nothing and says nothing against the version: it is tried again, but not before this long.
GATE_RETRY = timedelta(minutes=15)


class PlatformUpgrades:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        catalog: ImageCatalog,
        wake_engine: Callable[[], None],
        sweep_every: float = 60.0,
        rollouts: RolloutGate | None = None,
    ) -> None:
        self._db = db
        # Phases across regions, one zone of a region at a time (M-21): asked before a run starts.
        self._rollouts = rollouts or RolloutGate(db, clock)
        self._clock = clock
        self._catalog = catalog
        self._wake = wake_engine
        self._sweeper = PeriodicSweep(
            clock, timedelta(seconds=sweep_every), self.sweep, log, "automatic OS upgrade"
        )

    # ---------------------------------------------------------------------------------- listeners
    def on_image_published(self, image: Image) -> list[str]:
        """A new version is out: every opted-in set on its publisher/offer/sku starts its run now.

        A gallery version is heard once per target region it may be 'latest' in (its catalog row there,
        under the definition's synthetic coordinates), so only sets of those regions are looked at."""
        with self._db.read() as session:
            candidates = [
                s.id
                for s in session.scalars(select(ScaleSet).where(ScaleSet.location == image.location))
                if _same_image(s, image)
            ]
        return self._consider_all(candidates)

    def on_run_finished(self, run_id: str) -> None:
        """A run ended: remember a rolled-back image, then see whether the set, and the sets its rollout
        held back, have an upgrade waiting."""
        try:
            with self._db.write() as session:
                run = session.get(RollingUpgrade, run_id)
                if run is None:
                    return
                set_id = run.set_id
                record_outcome(session, run, self._clock.now())
            self._consider(set_id)
            # The end of a run may let the next targets of its rollout go (the next phase, VM wave or
            # zone, M-21): they are considered now rather than at the next sweep.
            self._consider_all(self._rollouts.held_back(run_id, "image"))
        except Exception:  # the engine's other listeners still run; the next sweep retries this
            log.exception("automatic OS upgrade: the end of run %s could not be handled", run_id)

    def reconcile(self) -> bool:
        """An engine reconciler: sweep at start and then every `sweep_every` (never keeps the loop busy)."""
        return self._sweeper()

    def sweep(self) -> list[str]:
        """Record the outcome of every ended run that was missed, then start what is due; returns the ids
        of the runs started."""
        now = self._clock.now()
        with self._db.write() as session:
            for run in _unrecorded_rollbacks(session):
                record_outcome(session, run, now)
        with self._db.read() as session:
            opted_in = [
                s.id
                for s in session.scalars(select(ScaleSet).order_by(ScaleSet.id))
                if AutoOsSettings.of(s.document["properties"]["upgradePolicy"]).enabled
            ]
        started = self._consider_all(opted_in)
        log.info("platform sweep: %d opted-in set(s), %d upgrade(s) started", len(opted_in), len(started))
        return started

    # ----------------------------------------------------------------------------------- operators
    def list_blocked(self, subscription: str, group: str, name: str) -> list[BlockedImageVersion]:
        with self._db.read() as session:
            scale_set = require_set(session, subscription, group, name)
            return list(
                session.scalars(
                    select(BlockedImageVersion)
                    .where(BlockedImageVersion.set_uid == scale_set.uid)
                    .order_by(BlockedImageVersion.blocked_at, BlockedImageVersion.id)
                )
            )

    def clear_blocked(
        self, subscription: str, group: str, name: str, versions: Sequence[str] | None = None
    ) -> list[BlockedImageVersion]:
        """Lift the blocks (all, or those of `versions`); the set may be offered those versions again at
        once. Returns the blocks lifted."""
        wanted = _parse_versions(versions)
        now = self._clock.now()
        with self._db.write() as session:
            scale_set = require_set(session, subscription, group, name)
            set_id = scale_set.id
            cleared = [
                row
                for row in session.scalars(
                    select(BlockedImageVersion).where(
                        BlockedImageVersion.set_uid == scale_set.uid, BlockedImageVersion.cleared_at.is_(None)
                    )
                )
                if wanted is None or ImageVersion.parse(row.image_version) in wanted
            ]
            for row in cleared:
                row.cleared_at = now
        if cleared:
            log.info("set %s: blocked image versions cleared: %s", name, [r.image_version for r in cleared])
            self._consider(set_id)
        return cleared

    def approve(self, subscription: str, group: str, name: str) -> Operation:
        """POST approveRollingUpgrade: start the upgrade `osRollingUpgradeDeferral` holds back."""
        with self._db.read() as session:
            set_id = require_set(session, subscription, group, name).id
        run, decision = self._consider(set_id, approved=True)
        if run is None:
            raise operation_not_allowed(
                f"There is no automatic OS upgrade to approve on '{name}': {decision.reason}."
            )
        with self._db.read() as session:
            operation = session.get(Operation, run.operation_id)
            assert operation is not None
            return operation

    # -------------------------------------------------------------------------------------- deciding
    def _consider_all(self, set_ids: Sequence[int]) -> list[str]:
        started = []
        for set_id in set_ids:
            try:
                run, _ = self._consider(set_id)
            except Exception:  # one set's trouble must not keep the others from their upgrade
                log.exception("automatic OS upgrade of set %s: could not start", set_id)
                continue
            if run is not None:
                started.append(run.id)
        return started

    def _consider(
        self, set_id: int, approved: bool = False
    ) -> tuple[RollingUpgrade | None, PlatformDecision]:
        """Decide for one set and, when an upgrade is due, write its model version and run together."""
        with self._db.read() as session:
            scale_set = session.get(ScaleSet, set_id)
            if scale_set is None:
                return None, PlatformDecision("none", None, "the set is gone")
            published = self._published(scale_set)
        now = self._clock.now()
        with self._db.write() as session:
            scale_set = session.get(ScaleSet, set_id)
            if scale_set is None:
                return None, PlatformDecision("none", None, "the set is gone")
            decision = plan_platform_upgrade(_facts(session, scale_set, published, approved, now))
            if decision.action == "none":
                return None, decision
            assert decision.target is not None
            waiting = self._rollouts.may_start(
                session, scale_set, RolloutSubject("image", image_key(scale_set), decision.target)
            )
            if waiting is not None:
                return None, PlatformDecision("none", decision.target, waiting)
            if decision.action == "new_model":
                new_model_version(session, scale_set, decision.target, now)
            policy, rollback = platform_run_policy(scale_set.document["properties"]["upgradePolicy"])
            run = begin_run(
                session,
                scale_set,
                kind="os",
                started_by=PLATFORM,
                rollback_on_breach=rollback,
                now=now,
                policy=policy,
            )
            # M-10: an instance not healthy within the health wait gets its previous OS disk back at once,
            # not only when the policy is breached (unless disableAutomaticRollback).
            run.roll_back_each_failure = rollback
            name = scale_set.name
        log.info(
            "automatic OS upgrade of set %s to %s started (run %s): %s",
            name,
            decision.target,
            run.id,
            decision.reason,
        )
        self._wake()
        return run, decision

    def _published(self, scale_set: ScaleSet) -> tuple[tuple[str, bool], ...]:
        """(version, may be offered) of the set's image in its region. A gallery image's versions excluded
        from latest there are left out; the others need no manifest flag (`supports_automatic_os_upgrade`)."""
        request = image_request(scale_set.document)
        images = self._catalog.latest_candidates(scale_set.location, request)
        return tuple((image.version, supports_automatic_os_upgrade(image)) for image in images)


# ------------------------------------------------------------------------------------------- facts
def _facts(
    session: Session,
    scale_set: ScaleSet,
    published: tuple[tuple[str, bool], ...],
    approved: bool,
    now: datetime,
) -> SetFacts:
    properties = scale_set.document["properties"]
    settings = AutoOsSettings.of(properties["upgradePolicy"])
    # Each image version once: the decision asks only whether some live instance runs an older one.
    instances = session.scalars(
        select(Instance.image_version)
        .distinct()
        .where(
            Instance.set_id == scale_set.id,
            Instance.provisioning_state != "deleting",
            Instance.protect_from_scale_set_actions.is_(False),
        )
    )
    platform_runs = session.scalars(
        select(RollingUpgrade).where(
            RollingUpgrade.set_id == scale_set.id,
            RollingUpgrade.started_by == PLATFORM,
            RollingUpgrade.kind == "os",  # an automatic extension upgrade tries no image
        )
    )
    attempted = {run.target_image_version for run in platform_runs if _counts_as_tried(session, run, now)}
    return SetFacts(
        enabled=settings.enabled,
        follows_latest=follows_latest(
            properties["virtualMachineProfile"]["storageProfile"]["imageReference"]
        ),
        deleting=scale_set.provisioning_state == "Deleting",
        running=active_run(session, scale_set.id) is not None,
        deferred=settings.deferral and not approved,
        model_version=scale_set.exact_image_version,
        instance_versions=tuple(instances),
        published=published,
        blocked=blocked_image_versions(session, scale_set),
        attempted=frozenset(attempted),
    )


def _counts_as_tried(session: Session, run: RollingUpgrade, now: datetime) -> bool:
    """A platform run that reached instances, or was cancelled, is the one try a version gets on a set.
    One stopped at the gate before touching anything counts only for `GATE_RETRY` after it ended."""
    if run.status in ACTIVE_STATUSES or run.status == CANCELLED or run.end_time is None:
        return True
    touched = session.scalar(
        select(UpgradeInstance.instance_row_id).where(UpgradeInstance.upgrade_id == run.id)
    )
    ended = run.end_time if run.end_time.tzinfo else run.end_time.replace(tzinfo=UTC)
    return touched is not None or now - ended < GATE_RETRY


def image_key(scale_set: ScaleSet) -> str:
    """The set's image whatever its version, as a rollout names it (`RolloutSubject.key`): a platform
    image's publisher:offer:sku, a gallery image's definition id (as `rollouts.image_key_of`)."""
    return image_key_of(scale_set.document)


def _same_image(scale_set: ScaleSet, image: Image) -> bool:
    """Whether a catalog row is a version of the set's image; a gallery image compares by the synthetic
    coordinates of its definition (`reference_request`), which its catalog rows carry."""
    request = image_request(scale_set.document)
    return (request.publisher.lower(), request.offer.lower(), request.sku.lower()) == (
        image.publisher_key,
        image.offer_key,
        image.sku_key,
    )


def _parse_versions(versions: Sequence[str] | None) -> set[ImageVersion] | None:
    return parse_versions(versions, ImageVersion.parse)


# ---------------------------------------------------------------------------------------- outcomes
def _unrecorded_rollbacks(session: Session) -> list[RollingUpgrade]:
    """Ended runs that rolled instances back and left no block: the listener did not get to them."""
    # Only members the run moved to another image can prove a version bad (`version_to_block`): a run that
    # rolled back without changing the image (extensions, a walk onto the same image) never leaves a
    # block, and must not be picked up again by every sweep.
    rolled_back = exists().where(
        and_(
            UpgradeInstance.upgrade_id == RollingUpgrade.id,
            UpgradeInstance.state.in_(ROLLED_BACK_STATES),
            UpgradeInstance.before_image_version != RollingUpgrade.target_image_version,
        )
    )
    recorded = exists().where(BlockedImageVersion.run_id == RollingUpgrade.id)
    return list(
        session.scalars(
            select(RollingUpgrade).where(RollingUpgrade.status == FAULTED, rolled_back, ~recorded)
        )
    )


def record_outcome(session: Session, run: RollingUpgrade, now: datetime) -> BlockedImageVersion | None:
    """Block the image an ended run had to roll back, once per run.

    A platform run's set also goes back to the image its instances were rolled back to, so instances the
    set makes from now on (scale-out, repairs) do not start on the image that just failed.
    """
    if run.status != FAULTED:
        # Instances restored one by one in a run that went on and completed (M-10) are not proof against
        # the version: the policy held, and the platform does not offer the same version again anyway
        # (`attempted`). Only a run the policy stopped blocks it.
        return None
    if session.scalar(select(BlockedImageVersion.id).where(BlockedImageVersion.run_id == run.id)) is not None:
        return None
    # Only rolled-back members say anything against a version (`version_to_block`, `version_to_restore`):
    # their two columns, not every member of the run as an object.
    members = [
        MemberOutcome(state, before_image_version)
        for state, before_image_version in session.execute(
            select(UpgradeInstance.state, UpgradeInstance.before_image_version).where(
                UpgradeInstance.upgrade_id == run.id, UpgradeInstance.state.in_(ROLLED_BACK_STATES)
            )
        )
    ]
    version = version_to_block(run.target_image_version, members)
    scale_set = session.get(ScaleSet, run.set_id)
    if version is None or scale_set is None:
        return None
    code = (run.error or {}).get("code") or "rolled back"
    rolled = sum(1 for m in members if m.state in ROLLED_BACK_STATES)
    block = BlockedImageVersion(
        set_uid=scale_set.uid,
        image_version=version,
        run_id=run.id,
        reason=f"{run.started_by} upgrade {run.id} rolled {rolled} instance(s) back: {code}",
        blocked_at=now,
        cleared_at=None,
    )
    session.add(block)
    log.warning("set %s: image version %s blocked (%s)", scale_set.name, version, block.reason)
    reference = scale_set.document["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]
    if (
        run.started_by == PLATFORM
        and follows_latest(reference)
        and scale_set.exact_image_version == run.target_image_version
    ):
        restore = version_to_restore(members, blocked_image_versions(session, scale_set) | {version})
        if restore is not None:
            new_model_version(session, scale_set, restore, now)
            record_unchanged_instances(session, scale_set)
    return block


def record_unchanged_instances(session: Session, scale_set: ScaleSet) -> None:
    """Instances that already run what the newest model says (image and all) are recorded as on it:
    nothing needs doing to them, as for a batch member whose change action is 'none'."""
    newest = session.get(ScaleSetModel, (scale_set.id, scale_set.model_version))
    assert newest is not None
    models: dict[int, ScaleSetModel | None] = {}
    for instance in session.scalars(
        select(Instance).where(
            Instance.set_id == scale_set.id, Instance.model_version != scale_set.model_version
        )
    ):
        if instance.model_version not in models:
            models[instance.model_version] = session.get(
                ScaleSetModel, (scale_set.id, instance.model_version)
            )
        before = models[instance.model_version]
        if before is None:
            continue
        action = change_action(
            before.model,
            newest.model,
            instance.image_version,
            newest.exact_image_version,
            before.extension_versions,
            newest.extension_versions,
        )
        if action == "none":
            # Only the model number moves: `updated_at` dates the instance's last provisioning, and nothing
            # was provisioned here.
            instance.model_version = scale_set.model_version
