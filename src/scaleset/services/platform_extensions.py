"""Automatic extension upgrades started by the platform (M-18…M-20, M-22…M-24; issue 5 §3).

An extension with `enableAutomaticUpgrade: true` in a set's model (or a standalone VM's: its extensions
live in the model of its hidden one-instance set, services/vms.py) is moved by the platform to the newest
published version of the same major. When the platform looks at a set:
- at once when a version of an extension's publisher/type is published (`on_extension_published`, an
  extension-catalog listener): every set whose newest model has that extension with automatic upgrade;
- when a run on the set ends (`on_run_finished`, a rolling-engine listener): the failure of an
  extension run is remembered, and the set's next extension (or a set that was busy) gets its turn;
- when an operator clears a failed version;
- in a sweep every `sweep_every` seconds and at start (`reconcile`, an engine reconciler): outcomes a crash
  kept from being recorded, publishes whose listener never ran, and retries that fell due (M-20, M-26).

A run moves ONE extension (M-23): the service writes a new model version with that extension's pin moved
(`new_model_version(extension_overrides=…)`), and a Platform run towards it with the set's rolling policy
and rollback per instance (`roll_back_each_failure`, M-19: each instance that fails gets its previous
model, hence its previous extension version, back; the run goes on unless maxUnhealthyUpgradedInstance-
Percent is breached, M-22). What to move is `domain/auto_extension.py`'s decision; what a failure means
for later is `services/extension_failures.py`'s memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from scaleset.catalog.extensions import ExtensionCatalog
from scaleset.domain.auto_extension import (
    ExtensionDecision,
    ExtensionFacts,
    ExtensionSetFacts,
    extension_enabled,
    extension_run_policy,
    next_extension_upgrade,
    run_verdict,
)
from scaleset.domain.auto_upgrade import PLATFORM
from scaleset.domain.fields import parse_versions
from scaleset.domain.model_change import change_action
from scaleset.domain.rolling import ACTIVE_STATUSES, FAULTED
from scaleset.domain.versions import ExtensionVersion
from scaleset.engine.clock import Clock
from scaleset.engine.guest_goal import extensions_of
from scaleset.services.extension_failures import (
    DEFAULT_RETRY_SECONDS,
    FAILED,
    all_failures,
    clear_failures,
    excluded_extension_versions,
    record_failure,
)
from scaleset.services.extension_pins import extension_key
from scaleset.services.lookups import require_in_group, require_set
from scaleset.services.periodic_sweep import PeriodicSweep
from scaleset.services.platform import ROLLED_BACK_STATES, record_unchanged_instances
from scaleset.services.rollouts import RolloutGate, RolloutSubject
from scaleset.services.runs import active_run, begin_run, new_model_version
from scaleset.store.db import Database
from scaleset.store.tables import (
    ExtensionImage,
    ExtensionUpgradeFailure,
    Instance,
    RollingUpgrade,
    ScaleSet,
    ScaleSetModel,
    UpgradeInstance,
    VirtualMachine,
)

log = logging.getLogger("scaleset.platform.extensions")


class ExtensionPlatformUpgrades:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        catalog: ExtensionCatalog,
        wake_engine: Callable[[], None],
        *,
        sweep_every: float = 60.0,
        retry_after: float = DEFAULT_RETRY_SECONDS,
        rollouts: RolloutGate | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._catalog = catalog
        self._wake = wake_engine
        self._sweeper = PeriodicSweep(
            clock, timedelta(seconds=sweep_every), self.sweep, log, "automatic extension upgrade"
        )
        self.retry_after = timedelta(seconds=retry_after)
        # Phases across regions, one zone of a region at a time (M-21): asked before a run starts.
        self._rollouts = rollouts or RolloutGate(db, clock)

    # ---------------------------------------------------------------------------------- listeners
    def on_extension_published(self, image: ExtensionImage) -> list[str]:
        """A new version is out: every set that has its publisher/type with automatic upgrade considers
        it now. Returns the ids of the runs started."""
        key = extension_key(image.publisher, image.type)
        with self._db.read() as session:
            candidates = [s.id for s in _all_sets(session) if key in _auto_keys(s.document)]
        return self._consider_each(candidates)

    def on_run_finished(self, run_id: str) -> None:
        """A run ended: remember a failed extension upgrade, then give the set its next one."""
        try:
            with self._db.write() as session:
                run = session.get(RollingUpgrade, run_id)
                if run is None:
                    return
                set_id = run.set_id
                self._record_outcome(session, run, self._clock.now())
            self._consider(set_id)
            # The end of a run may let the next targets of its rollout go (the next phase, VM wave or
            # zone, M-21): they are considered now rather than at the next sweep.
            self._consider_each(self._rollouts.held_back(run_id, "extension"))
        except Exception:  # the engine's other listeners still run; the next sweep retries this
            log.exception("automatic extension upgrade: the end of run %s could not be handled", run_id)

    def reconcile(self) -> bool:
        """An engine reconciler: a sweep at the first pass and then once per `sweep_every`; never asks the
        loop to come back sooner."""
        return self._sweeper()

    def sweep(self) -> list[str]:
        """Record every ended run whose outcome was missed, then start what is due (retries included);
        returns the ids of the runs started."""
        now = self._clock.now()
        with self._db.write() as session:
            for run in _unrecorded_failures(session):
                self._record_outcome(session, run, now)
        with self._db.read() as session:
            candidates = [s.id for s in _all_sets(session) if _auto_keys(s.document)]
        started = self._consider_each(candidates)
        log.info(
            "automatic extension upgrade sweep: %d set(s) with automatic upgrade, %d upgrade(s) started",
            len(candidates),
            len(started),
        )
        return started

    # ----------------------------------------------------------------------------------- operators
    def list_failures(
        self, subscription: str, group: str, name: str, *, vm: bool = False
    ) -> list[ExtensionUpgradeFailure]:
        with self._db.read() as session:
            return all_failures(session, _require_target(session, subscription, group, name, vm))

    def clear(
        self,
        subscription: str,
        group: str,
        name: str,
        *,
        extension: str | None = None,
        versions: Sequence[str] | None = None,
        vm: bool = False,
    ) -> list[ExtensionUpgradeFailure]:
        """Forget failed and blocked versions (all, or those of `extension` and/or `versions`); the set may
        be offered them again at once. Returns what was cleared."""
        wanted = _parse_versions(versions)
        with self._db.write() as session:
            scale_set = _require_target(session, subscription, group, name, vm)
            set_id = scale_set.id
            cleared = clear_failures(session, scale_set, self._clock.now(), extension, wanted)
        if cleared:
            log.info(
                "%s: failed extension versions cleared: %s",
                name,
                [f"{r.extension_key} {r.version}" for r in cleared],
            )
            self._consider(set_id)
        return cleared

    # -------------------------------------------------------------------------------------- deciding
    def _consider_each(self, set_ids: Iterable[int]) -> list[str]:
        started = []
        for set_id in set_ids:
            try:
                run = self._consider(set_id)
            except Exception:  # one set's trouble must not keep the others from their upgrade
                log.exception("automatic extension upgrade of set %s: could not start", set_id)
                continue
            if run is not None:
                started.append(run)
        return started

    def _consider(self, set_id: int) -> str | None:
        """Decide for one set and, when an extension is due, write its model version and run together;
        returns the id of the run started."""
        with self._db.read() as session:
            scale_set = session.get(ScaleSet, set_id)
            keys = _auto_keys(scale_set.document) if scale_set is not None else {}
        published = {
            key: tuple(image.version for image in self._catalog.list_versions(publisher, type_))
            for key, (publisher, type_) in keys.items()
        }
        if not published:
            return None
        now = self._clock.now()
        with self._db.write() as session:
            scale_set = session.get(ScaleSet, set_id)
            if scale_set is None:
                return None
            decision = next_extension_upgrade(_facts(session, scale_set, published, now))
            target = decision.target
            if target is None:
                return None
            waiting = self._rollouts.may_start(
                session, scale_set, RolloutSubject("extension", target.key, target.version)
            )
            if waiting is not None:
                log.info("set %s: %s; not now: %s", scale_set.name, decision.reason, waiting)
                return None
            run = self._begin(session, scale_set, decision, now)
            name, run_id = scale_set.name, run.id
        log.info("automatic extension upgrade of set %s started (run %s): %s", name, run_id, decision.reason)
        self._wake()
        return run_id

    @staticmethod
    def _begin(
        session: Session, scale_set: ScaleSet, decision: ExtensionDecision, now: datetime
    ) -> RollingUpgrade:
        target = decision.target
        assert target is not None
        new_model_version(
            session,
            scale_set,
            scale_set.exact_image_version,
            now,
            extension_overrides={target.name: target.version},
        )
        run = begin_run(
            session,
            scale_set,
            kind="extension",
            started_by=PLATFORM,
            rollback_on_breach=True,
            now=now,
            policy=extension_run_policy(scale_set.document["properties"]["upgradePolicy"]),
        )
        run.extension_key, run.extension_name, run.extension_version = target.key, target.name, target.version
        run.roll_back_each_failure = True
        return run

    # ---------------------------------------------------------------------------------------- outcomes
    def _record_outcome(self, session: Session, run: RollingUpgrade, now: datetime) -> None:
        """Remember a failed platform extension run, once, and put the set's pin back to the version
        its instances ran before, so instances made from now on do not start on the failed one."""
        if run.kind != "extension" or run.started_by != PLATFORM or run.extension_key is None:
            return
        if run.status in ACTIVE_STATUSES:
            return
        states = list(
            session.scalars(select(UpgradeInstance.state).where(UpgradeInstance.upgrade_id == run.id))
        )
        verdict = run_verdict(run.status, states)
        scale_set = session.get(ScaleSet, run.set_id)
        if verdict is None or scale_set is None:
            return
        rolled = sum(1 for state in states if state in ROLLED_BACK_STATES)
        code = (run.error or {}).get("code") or "rolled back"
        reason = f"{run.started_by} upgrade {run.id} rolled {rolled} instance(s) back: {code}"
        row = record_failure(session, scale_set, run, verdict, reason, now, self.retry_after)
        if row is None:
            return
        log.warning(
            "set %s: extension %s %s failed (%s); %s",
            scale_set.name,
            row.extension_key,
            row.version,
            reason,
            "blocked" if row.kind == FAILED and row.retry_at is None else f"not before {row.retry_at}",
        )
        _restore_pin(session, scale_set, run, now)


def _restore_pin(session: Session, scale_set: ScaleSet, run: RollingUpgrade, now: datetime) -> None:
    """When the set's newest model still pins the run's failed version, a new model version pins the one
    before the run again (or, if that one is excluded too, what pin resolution picks)."""
    assert run.extension_name is not None and run.extension_version is not None
    newest = session.get(ScaleSetModel, (scale_set.id, scale_set.model_version))
    if newest is None or _pin(newest, run.extension_name) != run.extension_version:
        return
    before = session.get(ScaleSetModel, (scale_set.id, run.target_model_version - 1))
    previous = _pin(before, run.extension_name) if before is not None else None
    excluded = excluded_extension_versions(session, scale_set, now)
    overrides = (
        {run.extension_name: previous}
        if previous is not None and (run.extension_key, previous) not in excluded
        else None
    )
    new_model_version(session, scale_set, scale_set.exact_image_version, now, extension_overrides=overrides)
    record_unchanged_instances(session, scale_set)


def _pin(model: ScaleSetModel, name: str) -> str | None:
    pins = {k.lower(): v for k, v in (model.extension_versions or {}).items()}
    return pins.get(name.lower())


# ------------------------------------------------------------------------------------------- facts
def _auto_keys(document: dict[str, object]) -> dict[str, tuple[str, str]]:
    """Extension key → (publisher, type) of the model's extensions with automatic upgrade."""
    properties = document.get("properties") or {}
    assert isinstance(properties, dict)
    model = properties.get("virtualMachineProfile") or {}
    found = {}
    for extension in extensions_of(model):
        ext = extension["properties"]
        if extension_enabled(ext):
            found[extension_key(ext["publisher"], ext["type"])] = (ext["publisher"], ext["type"])
    return found


def _all_sets(session: Session) -> list[ScaleSet]:
    return list(session.scalars(select(ScaleSet).order_by(ScaleSet.id)))


def _facts(
    session: Session, scale_set: ScaleSet, published: dict[str, tuple[str, ...]], now: datetime
) -> ExtensionSetFacts:
    newest = session.get(ScaleSetModel, (scale_set.id, scale_set.model_version))
    assert newest is not None
    pins = {k.lower(): v for k, v in (newest.extension_versions or {}).items()}
    extensions = tuple(
        ExtensionFacts(
            name=e["name"],
            key=extension_key(e["properties"]["publisher"], e["properties"]["type"]),
            type_handler_version=e["properties"]["typeHandlerVersion"],
            automatic_upgrade=extension_enabled(e["properties"]),
            pin=pins.get(e["name"].lower()),
        )
        for e in extensions_of(newest.model)
    )
    return ExtensionSetFacts(
        running=active_run(session, scale_set.id) is not None,
        deleting=scale_set.provisioning_state == "Deleting",
        extensions=extensions,
        published=published,
        excluded=excluded_extension_versions(session, scale_set, now),
        pending_reimage=_pending_reimage(session, scale_set, newest),
    )


def _pending_reimage(session: Session, scale_set: ScaleSet, newest: ScaleSetModel) -> bool:
    """Whether a live instance runs a model that differs from the newest by more than extensions."""
    lagging = session.execute(
        select(Instance.model_version, Instance.image_version)
        .distinct()
        .where(
            Instance.set_id == scale_set.id,
            Instance.provisioning_state != "deleting",
            Instance.model_version != scale_set.model_version,
        )
    )
    for model_version, image_version in lagging:
        model = session.get(ScaleSetModel, (scale_set.id, model_version))
        if model is None:
            continue
        if change_action(model.model, newest.model, image_version, newest.exact_image_version) == "reimage":
            return True
    return False


def _unrecorded_failures(session: Session) -> list[RollingUpgrade]:
    """Ended platform extension runs that may have failed and left no failure row: the listener did not
    get to them."""
    rolled_back = exists().where(
        and_(UpgradeInstance.upgrade_id == RollingUpgrade.id, UpgradeInstance.state.in_(ROLLED_BACK_STATES))
    )
    recorded = exists().where(ExtensionUpgradeFailure.run_id == RollingUpgrade.id)
    return list(
        session.scalars(
            select(RollingUpgrade).where(
                RollingUpgrade.kind == "extension",
                RollingUpgrade.started_by == PLATFORM,
                RollingUpgrade.extension_key.is_not(None),
                RollingUpgrade.status.not_in(ACTIVE_STATUSES),
                or_(RollingUpgrade.status == FAULTED, rolled_back),
                ~recorded,
            )
        )
    )


def _require_target(session: Session, subscription: str, group: str, name: str, vm: bool) -> ScaleSet:
    """A client's scale set, or (with `vm`) the hidden set behind the standalone VM `name`."""
    if not vm:
        return require_set(session, subscription, group, name)
    row = require_in_group(
        session, VirtualMachine, "Microsoft.Compute/virtualMachines", subscription, group, name
    )
    scale_set = session.get(ScaleSet, row.set_id)
    assert scale_set is not None, "a VM row goes with its set"
    return scale_set


def _parse_versions(versions: Sequence[str] | None) -> set[ExtensionVersion] | None:
    return parse_versions(versions, ExtensionVersion.parse)
