"""Availability first across regions and zones (M-21, issue 5 §5): which platform upgrade may start now,
and which batch may start now. The rules are `domain/rollout.py`'s; this module gathers the facts.

`RolloutGate` is called in two places:
- `may_start`: the platform services (automatic OS upgrade, automatic extension upgrade) ask it, in the
  write transaction that would start a platform run, whether the set may start its run towards `subject`
  now. A reason (str) means "not now": the platform leaves the set for later. When a platform run ends,
  the platform asks `held_back(run_id)` for the targets waiting on that rollout and considers them again
  at once (the sweep would find them too, later).
- `admit_batch`: the rolling engine asks it, in the write transaction of a `StartBatch` step of any run,
  whether the batch may start now; a reason means the run waits (and is asked again a second later).

Nothing is kept in memory (M-26): a rollout's state is derived each time from the tables, the sets that
are its targets and their platform runs. A restarted control plane decides exactly as before.

Targets of a subject, and how each counts (`TargetState`):
- image "publisher:offer:sku" (or a gallery image's id) at version V: every set, hidden VM sets included,
  with `enableAutomaticOSUpgrade` whose model follows `latest` of that image; extension "publisher.type"
  at V: every set whose model has that extension with `enableAutomaticUpgrade`.
- its newest platform run towards V or newer decides: active → running; `Completed` with no member
  failed or rolled back → succeeded; otherwise (faulted, rolled back, cancelled, a member failed) →
  failed, which halts the later phases. A run that ended at the gate before touching any instance (the
  set was too unhealthy to start) says nothing yet: the platform retries it, and it counts as waiting.
- with no such run: a set already on V or newer (image: the model and every live instance; extension:
  every live instance) has succeeded; an image target with `osRollingUpgradeDeferral` that nobody
  approved is excluded (it neither holds the rollout back nor halts it: it waits for its owner, perhaps
  for ever), and so is one in a region where the published version does not support automatic OS
  upgrade (it is never offered there); any other is waiting, including one in a region the version has
  not been published to yet: a rollout waits for the version to reach its earlier phases' regions.
- a deleted set is no target at all; a version blocked on a set is a version whose run rolled back there,
  so that run already counts as failed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from scaleset.catalog.service import latest_candidates_in, supports_automatic_os_upgrade
from scaleset.domain.auto_upgrade import PLATFORM, AutoOsSettings, follows_latest
from scaleset.domain.rolling import ACTIVE_STATUSES, COMPLETED
from scaleset.domain.rollout import (
    DEFAULT_PHASES,
    PhaseState,
    RolloutPhases,
    TargetState,
    may_start_phase,
    may_start_vm,
    may_start_zone,
    parse_phases,
    phase_state,
)
from scaleset.domain.scaleset_spec import image_request
from scaleset.domain.versions import ExtensionVersion
from scaleset.domain.vm_batches import VmRef, plan_vm_batches
from scaleset.engine.clock import Clock
from scaleset.store.db import Database
from scaleset.store.tables import (
    Image,
    Instance,
    ResourceGroup,
    RollingUpgrade,
    ScaleSet,
    ScaleSetModel,
    UpgradeInstance,
    VirtualMachine,
)

log = logging.getLogger("scaleset.rollouts")
IN_FLIGHT = ("upgrading", "rolling_back")
FAILED_MEMBERS = ("failed", "rolled_back", "rollback_failed")
ENV_PHASES = "SCALESET_ROLLOUT_PHASES"


@dataclass(frozen=True)
class RolloutSubject:
    """What a platform rollout spreads: a version of an image or of an extension.

    `key` names the image or extension whatever its version, in lower case: "publisher:offer:sku" for a
    platform image, the gallery image's resource id for a gallery image, "publisher.type" for an
    extension."""

    kind: Literal["image", "extension"]
    key: str
    version: str


@dataclass(frozen=True)
class Target:
    """One set (or standalone VM) a rollout reaches, and where it stands."""

    set_id: int
    name: str  # the set's name, or the VM's
    subscription: str
    group: str
    location: str
    phase: int
    vm: VmRef | None  # a standalone VM: what its wave is computed from
    state: TargetState
    run_id: str | None


@dataclass(frozen=True)
class PhaseView:
    number: int  # 1-based
    regions: tuple[str, ...]
    state: PhaseState
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class RolloutView:
    subject: RolloutSubject
    state: PhaseState
    phases: tuple[PhaseView, ...]


def load_rollout_phases(path: Path | str | None) -> RolloutPhases:
    """The phases of `path` (a JSON list of lists of region names), or the default without one. Raises
    ValueError naming the file and what is wrong with it."""
    if path is None or str(path) == "":
        return DEFAULT_PHASES
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"rollout phases file {path}: cannot be read ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"rollout phases file {path}: not JSON ({error})") from None
    try:
        return parse_phases(raw)
    except ValueError as error:
        raise ValueError(f"rollout phases file {path}: {error}") from None


def version_key(text: str | None) -> tuple[int, ...]:
    """A version's numbers for ordering (images "1.2.3", extensions "1.2" or "1.2.3.4"); () when none."""
    try:
        return tuple(int(part) for part in (text or "").split("."))
    except ValueError:
        return ()


def image_key_of(document: dict[str, Any]) -> str:
    """A set's image whatever its version, as a rollout names it (`RolloutSubject.key`): a platform
    image's publisher:offer:sku, a gallery image's definition id as the gallery rules parse it."""
    request = image_request(document)
    if request.gallery_image is not None:
        return request.gallery_image.lower()
    return f"{request.publisher}:{request.offer}:{request.sku}".lower()


def _auto_extensions(document: dict[str, Any]) -> dict[str, str]:
    """{publisher.type (lower case): extension name} of the model's extensions with enableAutomaticUpgrade."""
    profile = document["properties"]["virtualMachineProfile"].get("extensionProfile") or {}
    found = {}
    for extension in profile.get("extensions") or []:
        properties = extension.get("properties") or {}
        if properties.get("enableAutomaticUpgrade") is True:
            key = f"{properties.get('publisher', '')}.{properties.get('type', '')}".lower()
            found[key] = str(extension.get("name", ""))
    return found


class RolloutGate:
    def __init__(self, db: Database, clock: Clock, phases: RolloutPhases = DEFAULT_PHASES) -> None:
        self._db = db
        self._clock = clock
        self.phases = phases

    # ------------------------------------------------------------------------------ the two questions
    def may_start(self, session: Session, scale_set: ScaleSet, subject: RolloutSubject) -> str | None:
        """None when `scale_set` may start its platform run towards `subject` now; else why not."""
        targets = self.targets(session, subject)
        phase = self.phases.phase_of(scale_set.location)
        by_phase: dict[int, list[TargetState]] = {}
        for target in targets:
            by_phase.setdefault(target.phase, []).append(target.state)
        reason = may_start_phase(phase, by_phase)
        if reason is not None:
            return f"{subject.key} {subject.version}: {reason}"
        mine = next((t for t in targets if t.set_id == scale_set.id), None)
        if mine is None or mine.vm is None:
            return None
        # A standalone VM: the waves of its phase's VMs (availability sets one update domain at a time,
        # single VMs of a subscription in chunks).
        vms = [t for t in targets if t.vm is not None and t.phase == phase]
        waves = plan_vm_batches([t.vm for t in vms if t.vm is not None])
        wave_of = {key: index for index, wave in enumerate(waves) for key in wave}
        by_wave: dict[int, list[TargetState]] = {}
        for target in vms:
            assert target.vm is not None
            by_wave.setdefault(wave_of[target.vm.key], []).append(target.state)
        reason = may_start_vm(wave_of[mine.vm.key], by_wave)
        return None if reason is None else f"{subject.key} {subject.version}: {reason}"

    def admit_batch(
        self, session: Session, run: RollingUpgrade, scale_set: ScaleSet, instance_ids: Sequence[int]
    ) -> str | None:
        """None when the run may start a batch of `instance_ids` now; else why it waits.

        Only platform runs are held: a user's upgrade is the user's call. A platform batch waits while
        another platform run of the region has instances of another zone in flight (regional instances
        count as a zone of their own, `domain/rollout.py` rule 3)."""
        if run.started_by != PLATFORM:
            return None
        if run.policy.get("enableCrossZoneUpgrade"):
            # A platform service that took the set's own policy: a platform batch never spans zones
            # (M-21). The run's policy is corrected here, in the step's transaction, and the next pass
            # cuts its batches inside zones; `rollingUpgrades/latest` shows the policy it runs with.
            run.policy = {**run.policy, "enableCrossZoneUpgrade": False}
            return "a platform upgrade keeps each batch inside one zone: its batches are cut again"
        batch_zones = list(
            session.scalars(
                select(Instance.zone).where(
                    Instance.set_id == scale_set.id, Instance.instance_id.in_(list(instance_ids))
                )
            )
        )
        other_set = aliased(ScaleSet)
        in_flight = session.scalars(
            select(Instance.zone)
            .select_from(UpgradeInstance)
            .join(RollingUpgrade, RollingUpgrade.id == UpgradeInstance.upgrade_id)
            .join(other_set, other_set.id == RollingUpgrade.set_id)
            .join(Instance, Instance.id == UpgradeInstance.instance_row_id)
            .where(
                RollingUpgrade.id != run.id,
                RollingUpgrade.started_by == PLATFORM,
                RollingUpgrade.status.in_(ACTIVE_STATUSES),
                other_set.location == scale_set.location,
                UpgradeInstance.state.in_(IN_FLIGHT),
            )
            .distinct()
        )
        return may_start_zone(batch_zones, list(in_flight))

    # ------------------------------------------------------------------------------------- waking
    def held_back(self, run_id: str, kind: Literal["image", "extension"]) -> list[int]:
        """The sets still waiting on the `kind` rollout an ended platform run belongs to (the run's own set
        aside): the platform service of that kind considers them again at once, since the end of this
        run may let them go. Empty for a run of another kind, a user's run or an unknown run."""
        with self._db.read() as session:
            run = session.get(RollingUpgrade, run_id)
            if run is None or run.started_by != PLATFORM:
                return []
            subject = subject_of_run(session, run)
            if subject is None or subject.kind != kind:
                return []
            return [
                t.set_id
                for t in self.targets(session, subject)
                if t.state == "waiting" and t.set_id != run.set_id
            ]

    # ------------------------------------------------------------------------------------ viewing
    def list_rollouts(self) -> list[RolloutView]:
        """Every rollout a platform run belongs to, newest version first within a key."""
        with self._db.read() as session:
            subjects: set[RolloutSubject] = set()
            for run in session.scalars(select(RollingUpgrade).where(RollingUpgrade.started_by == PLATFORM)):
                subject = subject_of_run(session, run)
                if subject is not None:
                    subjects.add(subject)
            ordered = sorted(
                subjects, key=lambda s: (s.kind, s.key, tuple(-p for p in version_key(s.version)))
            )
            return [self.view(session, subject) for subject in ordered]

    def view(self, session: Session, subject: RolloutSubject) -> RolloutView:
        targets = self.targets(session, subject)
        count = max([len(self.phases.phases)] + [t.phase + 1 for t in targets])
        phases = []
        halted = False
        for index in range(count):
            mine = tuple(t for t in targets if t.phase == index)
            state: PhaseState = "halted" if halted else phase_state([t.state for t in mine])
            halted = halted or state == "halted"
            regions = self.phases.phases[index] if index < len(self.phases.phases) else ()
            phases.append(PhaseView(index + 1, regions, state, mine))
        states = [p.state for p in phases if p.targets]
        overall: PhaseState
        if "halted" in states:
            overall = "halted"
        elif all(s == "succeeded" for s in states):
            overall = "succeeded"
        elif any(s in ("running", "succeeded") for s in states):
            overall = "running"
        else:
            overall = "waiting"
        return RolloutView(subject, overall, tuple(phases))

    # ----------------------------------------------------------------------------------- targets
    def targets(self, session: Session, subject: RolloutSubject) -> list[Target]:
        """Every target of `subject`, with its phase and state (see the module docstring)."""
        wanted = version_key(subject.version)
        rows = session.execute(
            select(ScaleSet, ResourceGroup.name).join(ResourceGroup, ResourceGroup.id == ScaleSet.group_id)
        ).all()
        chosen: list[tuple[ScaleSet, str, str | None]] = []  # (set, group, extension name)
        for scale_set, group in rows:
            if scale_set.provisioning_state == "Deleting":
                continue
            document = scale_set.document
            if subject.kind == "image":
                settings = AutoOsSettings.of(document["properties"].get("upgradePolicy") or {})
                profile = document["properties"]["virtualMachineProfile"]
                reference = profile["storageProfile"]["imageReference"]
                # A gallery image without `/versions/…` follows latest too (domain/auto_upgrade.py).
                if settings.enabled and follows_latest(reference) and image_key_of(document) == subject.key:
                    chosen.append((scale_set, group, None))
            else:
                name = _auto_extensions(document).get(subject.key)
                if name is not None:
                    chosen.append((scale_set, group, name))
        if not chosen:
            return []
        set_ids = [s.id for s, _, _ in chosen]
        vms = {
            vm.set_id: vm
            for vm in session.scalars(select(VirtualMachine).where(VirtualMachine.set_id.in_(set_ids)))
        }
        runs = _newest_runs(session, subject, set_ids, wanted)
        # Each fact in one query for every target, not one per target: the gate is asked in every
        # transaction that would start a platform run.
        member_states: dict[str, set[str]] = {}
        for upgrade_id, member_state in session.execute(
            select(UpgradeInstance.upgrade_id, UpgradeInstance.state)
            .where(UpgradeInstance.upgrade_id.in_([r.id for r in runs.values()]))
            .distinct()
        ):
            member_states.setdefault(upgrade_id, set()).add(member_state)
        live: dict[int, list[tuple[str, dict[str, Any] | None]]] = {}
        for set_id, image_version, extension_versions in session.execute(
            select(Instance.set_id, Instance.image_version, Instance.extension_versions).where(
                Instance.set_id.in_(set_ids), Instance.provisioning_state != "deleting"
            )
        ):
            live.setdefault(set_id, []).append((image_version, extension_versions))
        unsupported = _unsupported_regions(session, subject)
        pins = _newest_pins(session, [s for s, _, _ in chosen]) if subject.kind == "extension" else {}
        targets = []
        for scale_set, group, extension_name in chosen:
            run = runs.get(scale_set.id)
            vm = vms.get(scale_set.id)
            state = _state(
                subject,
                unsupported,
                scale_set,
                run,
                None if run is None else member_states.get(run.id, set()),
                _already_there(subject, scale_set, live.get(scale_set.id, []), extension_name, wanted),
            )
            if state == "waiting" and not _ever_offered(
                session, subject, scale_set, pins.get(scale_set.id, {}).get((extension_name or "").lower())
            ):
                # The platform will never offer it this version (another major, no pin, a gallery
                # version not replicated to its region or excluded from latest there): it must not
                # hold the rollout back for ever.
                state = "excluded"
            targets.append(
                Target(
                    set_id=scale_set.id,
                    name=vm.name if vm is not None else scale_set.name,
                    subscription=scale_set.subscription,
                    group=group,
                    location=scale_set.location,
                    phase=self.phases.phase_of(scale_set.location),
                    vm=None
                    if vm is None
                    else VmRef(
                        str(scale_set.id),
                        vm.subscription,
                        None if vm.availability_set_id is None else str(vm.availability_set_id),
                        vm.update_domain,
                    ),
                    state=state,
                    run_id=None if run is None else run.id,
                )
            )
        return targets


def subject_of_run(session: Session, run: RollingUpgrade) -> RolloutSubject | None:
    """The rollout a platform run belongs to (None for a user's run or a set that is gone)."""
    if run.started_by != PLATFORM:
        return None
    if run.kind == "extension" and run.extension_key and run.extension_version:
        return RolloutSubject("extension", run.extension_key.lower(), run.extension_version)
    if run.kind != "os":
        return None
    scale_set = session.get(ScaleSet, run.set_id)
    if scale_set is None:
        return None
    return RolloutSubject("image", image_key_of(scale_set.document), run.target_image_version)


def _newest_runs(
    session: Session, subject: RolloutSubject, set_ids: list[int], wanted: tuple[int, ...]
) -> dict[int, RollingUpgrade]:
    """Per set, its newest platform run towards the subject's version or a newer one."""
    query = select(RollingUpgrade).where(
        RollingUpgrade.set_id.in_(set_ids), RollingUpgrade.started_by == PLATFORM
    )
    if subject.kind == "image":
        query = query.where(RollingUpgrade.kind == "os")
    else:
        query = query.where(RollingUpgrade.kind == "extension", RollingUpgrade.extension_key == subject.key)
    newest: dict[int, RollingUpgrade] = {}
    for run in session.scalars(query.order_by(RollingUpgrade.start_time, RollingUpgrade.id)):
        version = run.target_image_version if subject.kind == "image" else run.extension_version
        if version_key(version) >= wanted:
            newest[run.set_id] = run
    return newest


def _state(
    subject: RolloutSubject,
    unsupported: frozenset[str],
    scale_set: ScaleSet,
    run: RollingUpgrade | None,
    members: set[str] | None,
    already_there: bool,
) -> TargetState:
    if run is not None:
        if run.status in ACTIVE_STATUSES:
            return "running"
        if run.status == COMPLETED and not (members or set()) & set(FAILED_MEMBERS):
            return "succeeded"
        if members or run.status == "Cancelled":
            return "failed"
        # Stopped at the gate before touching anything: the platform tries again later.
    if already_there:
        return "succeeded"
    if subject.kind == "image" and run is None:
        if AutoOsSettings.of(scale_set.document["properties"].get("upgradePolicy") or {}).deferral:
            return "excluded"
        if scale_set.location in unsupported:
            return "excluded"
    return "waiting"


def _unsupported_regions(session: Session, subject: RolloutSubject) -> frozenset[str]:
    """The regions where the image version is published without automatic OS upgrade support: the
    platform never offers it to a set there. (A version not yet published in a region is still to come:
    the rollout waits for it. Gallery images are not checked here.)"""
    parts = subject.key.split(":")
    if subject.kind != "image" or len(parts) != 3:
        return frozenset()
    publisher, offer, sku = parts
    wanted = version_key(subject.version)
    return frozenset(
        image.location
        for image in session.scalars(
            select(Image).where(
                Image.publisher_key == publisher, Image.offer_key == offer, Image.sku_key == sku
            )
        )
        if version_key(image.version) == wanted and not supports_automatic_os_upgrade(image)
    )


def _already_there(
    subject: RolloutSubject,
    scale_set: ScaleSet,
    live: list[tuple[str, dict[str, Any] | None]],
    extension_name: str | None,
    wanted: tuple[int, ...],
) -> bool:
    """Whether every live instance (its image version and extension versions as `live` lists them) and,
    for an image, the model are on the version or a newer one."""
    if subject.kind == "image" and version_key(scale_set.exact_image_version) < wanted:
        return False
    if not live:
        return True  # nothing to upgrade (an image target's model was checked above)
    for image_version, extension_versions in live:
        have = (
            image_version if subject.kind == "image" else (extension_versions or {}).get(extension_name or "")
        )
        if version_key(have) < wanted:
            return False
    return True


def _newest_pins(session: Session, sets: Sequence[ScaleSet]) -> dict[int, dict[str, str]]:
    """{set id: {extension name (lower case): pinned version}} of each set's newest model version."""
    pins: dict[int, dict[str, str]] = {}
    for scale_set in sets:
        model = session.get(ScaleSetModel, (scale_set.id, scale_set.model_version))
        versions = (model.extension_versions if model is not None else None) or {}
        pins[scale_set.id] = {name.lower(): version for name, version in versions.items()}
    return pins


def _ever_offered(session: Session, subject: RolloutSubject, scale_set: ScaleSet, pin: str | None) -> bool:
    """Whether the platform could offer `scale_set` the subject's version at all, so that waiting for it
    makes sense: an extension only within the major of the set's pin (never across majors, M-18); a
    gallery image version only where it is replicated and not excluded from latest. A platform image not
    yet published in a region is still to come (it is published region by region)."""
    if subject.kind == "extension":
        if pin is None:
            return False
        try:
            return ExtensionVersion.parse(pin).major == ExtensionVersion.parse(subject.version).major
        except ValueError:
            return False
    request = image_request(scale_set.document)
    if request.gallery_image is None:
        return True
    wanted = version_key(subject.version)
    return any(
        version_key(image.version) == wanted
        for image in latest_candidates_in(session, scale_set.location, request)
    )
