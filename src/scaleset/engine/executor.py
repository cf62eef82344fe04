"""The engine's executor: runs committed tasks through the provider and finishes operations.

One pass claims the tasks that may run now (at most one per instance, oldest first), commits the claim,
and hands each to a worker thread; a finished task records its outcome and wakes the loop for the next
pass. Nothing here decides *what* to do: the intent was written by the service layer before we got here,
so a server killed at any moment finds every unfinished task again at start (`recover`) and, provider
actions being idempotent, simply runs it again.

A second, slower duty is observation: instances whose init process died on their own (or that a restart
of the host took away) are shown as stopped, with the provider's message.
"""

from __future__ import annotations

import base64
import logging
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Table, delete, select, update
from sqlalchemy.orm import Session

from scaleset.catalog.extensions import resolve_handler_version
from scaleset.catalog.service import artifact_of
from scaleset.domain.durations import parse_duration
from scaleset.domain.scaleset_spec import reference_request
from scaleset.domain.versions import ExtensionVersion
from scaleset.engine.clock import Clock
from scaleset.engine.guest_goal import (
    ExtensionUnavailable,
    GuestExpectation,
    GuestVerdict,
    goal_state_for,
    judge_guest,
)
from scaleset.guest.goalstate import GoalState
from scaleset.guest.protected import (
    certificate_paths,
    encrypt_protected_settings,
    make_instance_certificate,
    thumbprint_of,
)
from scaleset.observability.logs import log_context
from scaleset.providers.base import (
    InstanceObservation,
    InstanceSpec,
    InstanceState,
    Provider,
    ProviderError,
)
from scaleset.services.operations import chunks, complete_if_done
from scaleset.services.secrets import SecretBox
from scaleset.store.db import (
    Database,
    bind_processor_of,
    execute_many,
    raw_rows,
    result_processor_of,
    rows_by_ids,
    select_in,
)
from scaleset.store.tables import ExtensionImage, Image, Instance, ScaleSet, ScaleSetModel, Task

log = logging.getLogger("scaleset.engine")

# The power state an instance is in once an action succeeded.
POWER_AFTER = {
    "create": "running",
    "start": "running",
    "restart": "running",
    "reimage": "running",
    "reimageall": "running",
    "restore": "running",
    "extensions": "running",
    "stop": "stopped",
    "deallocate": "deallocated",
}
_POWER_OF_STATE = {
    InstanceState.RUNNING: "running",
    InstanceState.STOPPED: "stopped",
    InstanceState.DEALLOCATED: "deallocated",
    InstanceState.MISSING: "unknown",
    InstanceState.UNKNOWN: "unknown",
}


KEY_ONLY_ACTIONS = ("stop", "deallocate", "delete")
# Actions that are done only when the guest reports: a fresh OS disk (custom data and extensions), a
# restored one (its extensions, for the model it comes back to), or a new goal state on a running instance.
PROVISIONING_ACTIONS = ("create", "reimage", "reimageall", "restore", "extensions")
# Of those, the ones whose OS disk is new, so its custom data runs.
FRESH_DISK_ACTIONS = ("create", "reimage", "reimageall")
DEFAULT_EXTENSIONS_BUDGET = 90 * 60.0  # Azure's extensionsTimeBudget default, PT1H30M
# Tasks one claim takes at most: enough to keep every worker busy between two passes, few enough that a
# claim holds the write lock (and the specs in memory) briefly even when a fleet of 100 000 waits.
CLAIM_LIMIT = 1024


def _fail(task: Task, instance: Instance, message: str) -> None:
    task.status = "failed"
    task.error = message
    instance.provisioning_state = "failed"
    instance.status_message = message


def _expectation(spec: InstanceSpec, action: str) -> GuestExpectation:
    goal = GoalState.from_json(spec.goal_state) if spec.goal_state else GoalState(incarnation=0)
    return GuestExpectation(
        incarnation=goal.incarnation,
        extensions=tuple((e.name, e.suppress_failures) for e in goal.extensions),
        custom_data=spec.custom_data is not None and action in FRESH_DISK_ACTIONS,
    )


def _extensions_budget(model: ScaleSetModel | None) -> float:
    budget = ((model.model if model else {}).get("extensionProfile") or {}).get("extensionsTimeBudget")
    try:
        return parse_duration(budget) if budget else DEFAULT_EXTENSIONS_BUDGET
    except ValueError:
        return DEFAULT_EXTENSIONS_BUDGET


def _aware(moment: datetime) -> datetime:
    # SQLite hands datetimes back without their zone; they were stored as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _resolve_extension(
    session: Session,
    publisher: str,
    type_: str,
    type_handler_version: str,
    auto_minor: bool,
    pinned: str | None,
) -> tuple[str, str] | None:
    images = session.scalars(
        select(ExtensionImage).where(
            ExtensionImage.publisher_key == publisher.lower(), ExtensionImage.type_key == type_.lower()
        )
    ).all()
    if pinned is not None:
        # The model version's own pin (services/extension_pins.py): exactly that package, or nothing.
        exact = ExtensionVersion.parse(pinned)
        image = next((i for i in images if ExtensionVersion.parse(i.version) == exact), None)
        return (image.version, image.path) if image else None
    chosen = resolve_handler_version(type_handler_version, (i.version for i in images), auto_minor)
    image = next((i for i in images if i.version == chosen), None)
    return (image.version, image.path) if image else None


@dataclass(frozen=True)
class _SharedSpec:
    """The part of an InstanceSpec that all instances of one set, model version and image share."""

    template: InstanceSpec  # key, address, generation and environment left to fill in
    computer_name_prefix: str
    versions: dict[str, str]  # the extension versions the goal state resolved to
    expect: dict[str, GuestExpectation]  # per provisioning action
    budget_seconds: float


class _ClaimRow(NamedTuple):
    """A pending task and its instance (row_id None: the instance is gone), as a claim reads them."""

    id: int
    action: str
    operation_id: str
    instance_row_id: int
    row_id: int | None
    set_id: int
    instance_id: int
    model_version: int
    image_version: str
    address: str
    os_disk_generation: int
    certificate_pem: str | None
    private_key_sealed: str | None
    extension_versions: dict[str, str] | None


# What a claim reads of each pending task and of its instance, as plain columns, in `_ClaimRow`'s order.
_CLAIM_COLUMNS = (
    "tasks.id",
    "tasks.action",
    "tasks.operation_id",
    "tasks.instance_row_id",
    "instances.id",  # row_id
    "instances.set_id",
    "instances.instance_id",
    "instances.model_version",
    "instances.image_version",
    "instances.address",
    "instances.os_disk_generation",
    "instances.certificate_pem",
    "instances.private_key_sealed",
    "instances.extension_versions",
)
assert len(_CLAIM_COLUMNS) == len(_ClaimRow._fields)

# The claim's and the record's reads and writes go to the driver's cursor directly (`store/db.py`:
# `select_in`, `execute_many`): they repeat over every task of a pass, and SQLAlchemy's statement,
# parameter and row machinery costs several times what SQLite does for them. The SQL is the same a
# Core statement would compile to; values whose type converts them (datetimes, JSON) go through the
# column type's own processor (`bind_processor_of`, `result_processor_of`).
_tasks: Table = Task.__table__  # type: ignore[assignment]
_instances: Table = Instance.__table__  # type: ignore[assignment]
_CLAIM = (
    f"SELECT {', '.join(_CLAIM_COLUMNS)} FROM tasks LEFT OUTER JOIN instances "
    "ON instances.id = tasks.instance_row_id WHERE tasks.id IN ({ids})"
)
# A settling task of an instance a claim gives a new action (it ends that wait).
_SETTLING_OF = (
    "SELECT id, instance_row_id FROM tasks WHERE status = 'settling' AND instance_row_id IN ({ids})"
)
_PENDING_PAGE = (
    "SELECT id, instance_row_id FROM tasks WHERE status = 'pending' AND id > ? ORDER BY id LIMIT ?"
)
_TASK_RUNNING = "UPDATE tasks SET status = 'running', attempts = attempts + 1, updated_at = ? WHERE id = ?"
# Recording finished tasks: one executemany per shape of change.
_TASK_FINISHED = "UPDATE tasks SET status = ?, error = ?, updated_at = ? WHERE id = ?"
_TASK_SETTLING = (
    "UPDATE tasks SET status = ?, error = ?, updated_at = ?, expect = ?, deadline = ? WHERE id = ?"
)
_INSTANCE_ACTED = "UPDATE instances SET power_state = ?, updated_at = ? WHERE id = ?"
_INSTANCE_SETTLED = (
    "UPDATE instances SET power_state = ?, updated_at = ?, provisioning_state = ?, status_message = ? "
    "WHERE id = ?"
)


@dataclass(frozen=True)
class _Outcome:
    """A finished task as a worker leaves it for the loop to record: the error, if it failed, and the power
    state the provider showed after the failure."""

    task: ClaimedTask
    error: str | None
    power_after_failure: str = "unknown"


class _ClaimRows:
    """What a claim reads again for every task of the same set and model: the set, the model version and
    its history, the image, the extension versions. A claim is one write transaction that changes none
    of these rows, so each is read once per claim rather than once per task (a claim can hold thousands
    of tasks; the session's identity map holds rows only while something references them)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._sets: dict[int, ScaleSet | None] = {}
        self._models: dict[tuple[int, int], ScaleSetModel | None] = {}
        self._histories: dict[tuple[int, int], list[tuple[int, dict[str, Any]]]] = {}
        self._images: dict[tuple[str, ...], Image | None] = {}
        self._extensions: dict[tuple[str, str, str, bool, str | None], tuple[str, str] | None] = {}
        self._shared: dict[tuple[int, int, str], _SharedSpec | ProviderError | None] = {}

    def shared(
        self, scale_set: ScaleSet, model_version: int, image_version: str
    ) -> _SharedSpec | ProviderError | None:
        """What every instance of one set, model version and image has in common in its spec (None: the
        model has protected settings, encrypted per instance, so nothing of the goal state is shared;
        a ProviderError: no instance of it can be built)."""
        key = (scale_set.id, model_version, image_version)
        if key not in self._shared:
            self._shared[key] = self._make_shared(scale_set, model_version, image_version)
        return self._shared[key]

    def _make_shared(
        self, scale_set: ScaleSet, model_version: int, image_version: str
    ) -> _SharedSpec | ProviderError | None:
        model_row = self.model(scale_set.id, model_version)
        assert model_row is not None
        model = model_row.model
        if any(
            (extension.get("properties") or {}).get("protectedSettingsSealed")
            for extension in (model.get("extensionProfile") or {}).get("extensions") or []
        ):
            return None
        reference = model["storageProfile"]["imageReference"]
        image = self.image(scale_set.location, reference, image_version)
        if image is None:
            return ProviderError(f"image version {image_version} is no longer in the catalog")

        def no_protected_settings(sealed: str) -> tuple[str, str]:
            raise AssertionError("a model without protected settings asked for their encryption")

        try:
            goal = goal_state_for(
                self.history(scale_set.id, model_version),
                self.extension,
                no_protected_settings,
                model_row.extension_versions,
            )
        except ExtensionUnavailable as error:
            return ProviderError(str(error))
        custom_data = model["osProfile"].get("customData")
        goal_json = goal.to_json()
        spec = InstanceSpec(
            key="",
            image=artifact_of(image),
            address="",
            data_disk_luns=tuple(int(disk["lun"]) for disk in model["storageProfile"].get("dataDisks", [])),
            custom_data=base64.b64decode(custom_data) if custom_data else None,
            goal_state=goal_json,
        )
        return _SharedSpec(
            template=spec,
            computer_name_prefix=model["osProfile"]["computerNamePrefix"],
            versions={goal_extension.name: goal_extension.version for goal_extension in goal.extensions},
            expect={action: _expectation(spec, action) for action in PROVISIONING_ACTIONS},
            budget_seconds=_extensions_budget(model_row),
        )

    def instance(self, row_id: int) -> Instance:
        instance = self._session.get(Instance, row_id)
        assert instance is not None
        return instance

    def scale_set(self, set_id: int) -> ScaleSet | None:
        if set_id not in self._sets:
            self._sets[set_id] = self._session.get(ScaleSet, set_id)
        return self._sets[set_id]

    def model(self, set_id: int, version: int) -> ScaleSetModel | None:
        key = (set_id, version)
        if key not in self._models:
            self._models[key] = self._session.get(ScaleSetModel, key)
        return self._models[key]

    def history(self, set_id: int, version: int) -> list[tuple[int, dict[str, Any]]]:
        """(version, model) of every model version of the set up to `version`, oldest first."""
        key = (set_id, version)
        if key not in self._histories:
            self._histories[key] = [
                (row.version, row.model)
                for row in self._session.scalars(
                    select(ScaleSetModel)
                    .where(ScaleSetModel.set_id == set_id, ScaleSetModel.version <= version)
                    .order_by(ScaleSetModel.version)
                )
            ]
        return self._histories[key]

    def image(self, location: str, reference: dict[str, Any], version: str) -> Image | None:
        # A gallery image (`id`) is filed under synthetic catalog coordinates (domain/gallery_spec.py).
        wanted = reference_request(reference)
        key = (location, wanted.publisher.lower(), wanted.offer.lower(), wanted.sku.lower(), version)
        if key not in self._images:
            self._images[key] = self._session.scalars(
                select(Image).where(
                    Image.location == key[0],
                    Image.publisher_key == key[1],
                    Image.offer_key == key[2],
                    Image.sku_key == key[3],
                    Image.version == key[4],
                )
            ).first()
        return self._images[key]

    def extension(
        self, publisher: str, type_: str, type_handler_version: str, auto_minor: bool, pinned: str | None
    ) -> tuple[str, str] | None:
        key = (publisher, type_, type_handler_version, auto_minor, pinned)
        if key not in self._extensions:
            self._extensions[key] = _resolve_extension(self._session, *key)
        return self._extensions[key]


def instance_key(scale_set: ScaleSet, instance: Instance) -> str:
    return f"{scale_set.uid}/{instance.instance_id}"


def computer_name(prefix: str, instance_id: int) -> str:
    """Azure names a Uniform instance `<prefix><instance id in base 36, six digits>`."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    value = instance_id
    while True:
        value, remainder = divmod(value, 36)
        text = digits[remainder] + text
        if value == 0:
            break
    return prefix + text.rjust(6, "0")


@dataclass(frozen=True)
class ClaimedTask:
    task_id: int
    action: str
    key: str
    spec: InstanceSpec | None
    expect: GuestExpectation | None = None
    budget_seconds: float = DEFAULT_EXTENSIONS_BUDGET
    # (subscription, set name, operation id): bound to every line logged while a worker runs the task.
    log_context: tuple[str, str, str] = ("", "", "")


class Executor:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        provider: Provider,
        secrets: SecretBox,
        *,
        workers: int = 8,
        observe_every: float = 2.0,
        settle_every: float = 0.2,
        claim_limit: int = CLAIM_LIMIT,
    ) -> None:
        self._db = db
        self._secrets = secrets
        self._settle_every = settle_every
        self._settling = 0
        self._last_picked = 0  # tasks the last claim picked (run_pass: was the claim full?)
        self._clock = clock
        self._provider = provider
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scaleset-task")
        self._workers = workers
        # Claimed tasks waiting for a free worker (`_work`).
        self._to_run: deque[ClaimedTask] = deque()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._observe_every = observe_every
        self._thread: threading.Thread | None = None
        # Reconcilers run after every pass (the rolling-upgrade loop); each returns True while it has
        # work in flight, so the loop comes back soon instead of idling until the next observation.
        self.reconcilers: list[Callable[[], bool]] = []
        self._reconciling = False
        self._claim_limit = claim_limit
        # Outcomes the workers left for the loop to record (`record_finished`).
        self._finished: deque[_Outcome] = deque()
        self._recording = threading.Lock()

    # ------------------------------------------------------------------------------------ lifecycle
    def recover(self) -> int:
        """Tasks that were running when the last server died run again (their actions are idempotent)."""
        with self._db.write() as session:
            result = session.execute(update(Task).where(Task.status == "running").values(status="pending"))
            return int(getattr(result, "rowcount", 0) or 0)

    def start(self) -> None:
        recovered = self.recover()
        if recovered:
            log.info("resuming %d task(s) left running by the previous server", recovered)
        self._thread = threading.Thread(target=self._loop, name="scaleset-engine", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        # Every finished task wakes the loop: setting an Event takes its lock, for which 8 workers
        # finishing instant actions queue. Already set, setting it again changes nothing (a waiter
        # only waits while it is clear), and reading the flag takes no lock. A clear() that races
        # with this check comes before the pass that records what the caller left for it.
        if not self._wakeup.is_set():
            self._wakeup.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._to_run.clear()  # not started: still `running` in the database, so run again after a restart
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.record_finished()

    def _loop(self) -> None:
        last_observed = 0.0
        while not self._stopping.is_set():
            busy = self._settling or self._reconciling
            self._wakeup.wait(timeout=self._settle_every if busy else self._observe_every)
            self._wakeup.clear()
            if self._stopping.is_set():
                return
            try:
                self.run_pass()
                self.settle()
                self._reconciling = any([reconcile() for reconcile in self.reconcilers])
                now = self._clock.now().timestamp()
                if now - last_observed >= self._observe_every:
                    self.observe()
                    last_observed = now
            except Exception:  # the loop must outlive any one bad pass; the next pass retries
                log.exception("engine pass failed")

    # ------------------------------------------------------------------------------------ one pass
    def run_pass(self) -> int:
        """Record what the workers finished, claim what may run now and hand it to the workers; returns
        how many tasks were started. At most `claim_limit` tasks per pass (a full claim wakes the loop
        again at once), so one claim never holds the write lock, or the specs of a whole fleet, for long."""
        self.record_finished()
        claimed = self._claim()
        if claimed:
            # The workers take tasks from one queue, oldest first, each as soon as it is free: the same
            # order and parallelism as one pool job per task, without a future and a thread hand-off
            # for each of hundreds of instant (simulated) actions.
            self._to_run.extend(claimed)
            if self._provider.acts_at_once:
                self._work()  # nothing to wait for: run them here, in order, as one worker would
            else:
                for _ in range(min(self._workers, len(claimed))):
                    self._pool.submit(self._work)
        # A full claim leaves work behind: come back at once. Count what was picked, not what runs: tasks
        # that ended inside the claim (instance gone, spec refused) filled the claim too.
        if self._last_picked >= self._claim_limit:
            self.wake()
        return len(claimed)

    def _claim(self) -> list[ClaimedTask]:
        now = self._clock.now()
        claimed: list[ClaimedTask] = []
        with self._db.write() as session:
            rows = _ClaimRows(session)
            busy = {
                row_id
                for (row_id,) in rows_by_ids(
                    session, "tasks", ("instance_row_id",), ["running"], key="status"
                )
            }
            # Oldest first (tasks of busy instances are skipped), a page of the oldest pending at a time:
            # SQLite finds them from the (status, instance) index and keeps only a page's worth in its
            # sorter. (Reading and sorting every pending task in Python for each claim made a start of
            # 20 000 instances, claimed 1 024 at a time, quadratic.)
            picked: list[int] = []
            after = 0
            while len(picked) < self._claim_limit:
                page = raw_rows(session, _PENDING_PAGE, (after, self._claim_limit))
                for task_id, row_id in page:
                    if len(picked) >= self._claim_limit:
                        break
                    if row_id in busy:
                        continue
                    busy.add(row_id)
                    picked.append(task_id)
                if len(page) < self._claim_limit:
                    break  # no pending task left after this page
                after = page[-1][0]
            self._last_picked = len(picked)
            chosen = self._claim_rows(session, picked)
            if not chosen:
                return claimed
            # Task ids by instance; rows are loaded only for the few that a new action supersedes.
            settling = {
                row_id: task_id
                for task_id, row_id in select_in(
                    session, _SETTLING_OF, [row.instance_row_id for row in chosen]
                )
            }
            operations: set[str] = set()
            running: list[int] = []
            versions: dict[int, dict[str, str]] = {}
            for row in chosen:
                if row.row_id is None:  # the instance went away under an earlier task: nothing to do
                    session.execute(update(Task).where(Task.id == row.id).values(status="done"))
                    operations.add(row.operation_id)
                    continue
                scale_set = rows.scale_set(row.set_id)
                assert scale_set is not None
                try:
                    task = self._claimed(rows, scale_set, row, versions)
                except ProviderError as error:
                    # This task cannot run (its image left the catalog, say): it fails alone and
                    # the pass goes on with the others.
                    failed = session.get(Task, row.id)
                    instance = session.get(Instance, row.row_id)
                    assert failed is not None and instance is not None
                    failed.attempts += 1
                    failed.updated_at = now
                    _fail(failed, instance, str(error))
                    operations.add(row.operation_id)
                    continue
                if (earlier_id := settling.pop(row.instance_row_id, None)) is not None:
                    # A new action on the instance ends the wait for the guest's word on the last one.
                    earlier = session.get(Task, earlier_id)
                    assert earlier is not None
                    earlier.status = "done"
                    earlier.error = f"superseded by {row.action} before the guest reported"
                    operations.add(earlier.operation_id)
                running.append(row.id)
                claimed.append(task)
            at = bind_processor_of(session, _tasks.c.updated_at)(now)
            execute_many(session, _TASK_RUNNING, [(at, task_id) for task_id in running])
            if versions:
                # What each goal state resolved to, so an extension upgrade knows who runs the newest.
                session.execute(
                    update(Instance),
                    [{"id": row_id, "extension_versions": v} for row_id, v in versions.items()],
                )
            session.flush()
            for operation_id in sorted(operations):
                complete_if_done(session, operation_id, now)
        return claimed

    @staticmethod
    def _claim_rows(session: Session, picked: list[int]) -> list[_ClaimRow]:
        """The picked tasks with their instances, oldest first."""
        decode = result_processor_of(session, _instances.c.extension_versions)
        # A fleet's instances share a handful of extension-version documents: parse each text once.
        decoded: dict[Any, dict[str, str] | None] = {}
        chosen = []
        for row in select_in(session, _CLAIM, picked):
            versions = row[-1]
            if isinstance(versions, str):  # JSON text (SQLite); a driver may have decoded it already
                if versions not in decoded:
                    decoded[versions] = decode(versions)
                versions = decoded[versions]
            chosen.append(_ClaimRow._make((*row[:-1], versions)))
        chosen.sort(key=lambda row: row.id)
        return chosen

    def _claimed(
        self, rows: _ClaimRows, scale_set: ScaleSet, row: _ClaimRow, versions: dict[int, dict[str, str]]
    ) -> ClaimedTask:
        """The task as a worker runs it; `versions` collects instances whose extension versions change."""
        assert row.row_id is not None
        key = f"{scale_set.uid}/{row.instance_id}"
        context = (scale_set.subscription, scale_set.name, row.operation_id)
        if row.action in KEY_ONLY_ACTIONS:
            return ClaimedTask(row.id, row.action, key, None, log_context=context)
        shared = rows.shared(scale_set, row.model_version, row.image_version)
        if isinstance(shared, ProviderError):
            raise shared
        if shared is None:
            # Protected settings are encrypted to each instance's own certificate: the slow path.
            instance = rows.instance(row.row_id)
            spec = self._spec(rows, scale_set, instance)
            if row.action not in PROVISIONING_ACTIONS:
                return ClaimedTask(row.id, row.action, key, spec, log_context=context)
            model = rows.model(scale_set.id, row.model_version)
            return ClaimedTask(
                row.id,
                row.action,
                key,
                spec,
                _expectation(spec, row.action),
                _extensions_budget(model),
                log_context=context,
            )
        if row.extension_versions != shared.versions:
            versions[row.row_id] = shared.versions
        certificates: tuple[tuple[str, bytes, bytes], ...] = ()
        if row.certificate_pem and row.private_key_sealed:
            certificate = row.certificate_pem.encode()
            private_key = str(self._secrets.open(row.private_key_sealed)).encode()
            certificates = ((thumbprint_of(certificate), certificate, private_key),)
        template = shared.template
        spec = InstanceSpec(
            key=key,
            image=template.image,
            address=row.address,
            data_disk_luns=template.data_disk_luns,
            os_disk_generation=row.os_disk_generation,
            custom_data=template.custom_data,
            goal_state=template.goal_state,
            environment={
                "SCALESET_INSTANCE_ID": str(row.instance_id),
                "SCALESET_COMPUTER_NAME": computer_name(shared.computer_name_prefix, row.instance_id),
                "SCALESET_VMSS_NAME": scale_set.name,
            },
            certificates=certificates,
        )
        if row.action not in PROVISIONING_ACTIONS:
            return ClaimedTask(row.id, row.action, key, spec, log_context=context)
        return ClaimedTask(
            row.id,
            row.action,
            key,
            spec,
            shared.expect[row.action],
            shared.budget_seconds,
            log_context=context,
        )

    def _spec(self, rows: _ClaimRows, scale_set: ScaleSet, instance: Instance) -> InstanceSpec:
        model_row = rows.model(scale_set.id, instance.model_version)
        assert model_row is not None
        model = model_row.model
        reference = model["storageProfile"]["imageReference"]
        image = rows.image(scale_set.location, reference, instance.image_version)
        if image is None:
            raise ProviderError(f"image version {instance.image_version} is no longer in the catalog")
        name = computer_name(model["osProfile"]["computerNamePrefix"], instance.instance_id)
        try:
            goal = goal_state_for(
                rows.history(scale_set.id, instance.model_version),
                rows.extension,
                lambda sealed: self._encrypt_for(instance, sealed),
                model_row.extension_versions,
            )
        except ExtensionUnavailable as error:
            raise ProviderError(str(error)) from None
        # What this goal state resolved to, so an extension upgrade knows who already runs the newest.
        versions = {goal_extension.name: goal_extension.version for goal_extension in goal.extensions}
        if instance.extension_versions != versions:
            instance.extension_versions = versions
        custom_data = model["osProfile"].get("customData")
        certificates: tuple[tuple[str, bytes, bytes], ...] = ()
        if instance.certificate_pem and instance.private_key_sealed:
            certificate = instance.certificate_pem.encode()
            private_key = str(self._secrets.open(instance.private_key_sealed)).encode()
            certificates = ((thumbprint_of(certificate), certificate, private_key),)
        return InstanceSpec(
            key=instance_key(scale_set, instance),
            image=artifact_of(image),
            address=instance.address,
            data_disk_luns=tuple(int(disk["lun"]) for disk in model["storageProfile"].get("dataDisks", [])),
            os_disk_generation=instance.os_disk_generation,
            environment={
                "SCALESET_INSTANCE_ID": str(instance.instance_id),
                "SCALESET_COMPUTER_NAME": name,
                "SCALESET_VMSS_NAME": scale_set.name,
            },
            custom_data=base64.b64decode(custom_data) if custom_data else None,
            goal_state=goal.to_json(),
            certificates=certificates,
        )

    def _encrypt_for(self, instance: Instance, sealed: str) -> tuple[str, str]:
        """Protected settings encrypted to the instance's own certificate (made on first need)."""
        if not instance.certificate_pem or not instance.private_key_sealed:
            with tempfile.TemporaryDirectory() as scratch:
                thumbprint = make_instance_certificate(Path(scratch))
                crt, prv = certificate_paths(Path(scratch), thumbprint)
                instance.certificate_pem = crt.read_text()
                instance.private_key_sealed = self._secrets.seal(prv.read_text())
        certificate = instance.certificate_pem.encode()
        return encrypt_protected_settings(self._secrets.open(sealed), certificate), thumbprint_of(certificate)

    # ---------------------------------------------------------------------------------- one action
    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                task = self._to_run.popleft()
            except IndexError:
                return
            self._run(task)

    def _run(self, task: ClaimedTask) -> None:
        # Worker threads do not inherit the caller's context: bind the task's own here.
        subscription, set_name, operation = task.log_context
        with log_context(
            subscription=subscription or None,
            set=set_name or None,
            instance=task.key.rsplit("/", 1)[-1],
            operation=operation or None,
        ):
            self._run_in_context(task)

    def _run_in_context(self, task: ClaimedTask) -> None:
        error: str | None = None
        try:
            self._act(task)
        except ProviderError as failure:
            error = str(failure)
        except Exception as failure:  # a bug or an OS error: keep the engine alive, show it on the task
            log.exception("task %s (%s %s) failed", task.task_id, task.action, task.key)
            error = f"{type(failure).__name__}: {failure}"
        try:
            power = _POWER_OF_STATE[self._observe_quietly(task.key).state] if error else "unknown"
            self._finished.append(_Outcome(task, error, power))
        finally:
            self.wake()

    def _act(self, task: ClaimedTask) -> None:
        provider = self._provider
        if task.action == "delete":
            provider.delete_instance(task.key)
            return
        if task.action == "stop":
            provider.stop_instance(task.key)
            return
        if task.action == "deallocate":
            provider.deallocate_instance(task.key)
            return
        assert task.spec is not None
        if task.action == "create":
            provider.create_instance(task.spec)
        elif task.action == "start":
            provider.start_instance(task.spec)
        elif task.action == "restart":
            provider.restart_instance(task.spec)
        elif task.action == "reimage":
            provider.reimage_instance(task.spec)
        elif task.action == "restore":
            provider.restore_os_disk(task.spec)
        elif task.action == "extensions":
            # Only the extensions changed: the running guest agent applies the new goal state.
            provider.apply_goal_state(task.spec)
        elif task.action == "reimageall":
            # Azure's reimageAll renews every disk, data disks included: the instance is made anew.
            provider.delete_instance(task.key)
            provider.create_instance(task.spec)
        else:
            raise ProviderError(f"unknown action {task.action}")

    def record_finished(self) -> int:
        """Write what the workers finished since the last call, in one transaction; returns how many.

        Workers leave their outcomes here rather than each opening a write transaction of its own: one
        commit for hundreds of tasks instead of one each. An outcome not yet written when the server
        dies leaves its task `running`, and a task left running runs again after a restart (`recover`;
        provider actions are idempotent), as it would had the server died a moment before acting."""
        with self._recording:
            outcomes: list[_Outcome] = []
            while self._finished:
                outcomes.append(self._finished.popleft())
            if not outcomes:
                return 0
            try:
                with self._db.write() as session:
                    self._record(session, outcomes, self._clock.now())
            except BaseException:
                # Not written (the database busy, say): keep them for the next pass, in their order, or
                # their tasks would stay `running` and block their instances until a restart.
                self._finished.extendleft(reversed(outcomes))
                raise
            return len(outcomes)

    def _record(self, session: Session, outcomes: list[_Outcome], now: datetime) -> None:
        ids = [outcome.task.task_id for outcome in outcomes]
        tasks = {
            task_id: (row_id, operation_id)
            for task_id, row_id, operation_id in rows_by_ids(
                session, "tasks", ("id", "instance_row_id", "operation_id"), ids
            )
        }
        live = {
            row_id for (row_id,) in rows_by_ids(session, "instances", ("id",), [r for r, _ in tasks.values()])
        }
        at = bind_processor_of(session, _tasks.c.updated_at)(now)
        as_json = bind_processor_of(session, _tasks.c.expect)
        as_deadline = bind_processor_of(session, _tasks.c.deadline)
        # The tasks of one set and model share their expectation object: its JSON is made once.
        expectations: dict[GuestExpectation, Any] = {}
        finished: list[tuple[Any, ...]] = []
        settling: list[tuple[Any, ...]] = []
        acted: list[tuple[Any, ...]] = []
        settled: list[tuple[Any, ...]] = []
        deleted: list[int] = []
        operations: set[str] = set()
        for outcome in outcomes:
            task, error = outcome.task, outcome.error
            found = tasks.get(task.task_id)
            if found is None:
                continue
            row_id, operation_id = found
            instance_id = row_id if row_id in live else None
            expect = task.expect
            if instance_id is not None and error is None and expect is not None and expect.waits:
                # Acted; the instance is provisioned once the guest reports custom data and extensions.
                if expect not in expectations:
                    expectations[expect] = as_json(expect.to_json())
                deadline = as_deadline(now + timedelta(seconds=task.budget_seconds))
                settling.append(("settling", "", at, expectations[expect], deadline, task.task_id))
                acted.append((POWER_AFTER[task.action], at, instance_id))
                continue
            finished.append(("failed" if error else "done", error or "", at, task.task_id))
            operations.add(operation_id)
            if instance_id is None:
                continue
            if task.action == "delete" and error is None:
                deleted.append(instance_id)
            else:
                power = outcome.power_after_failure if error else POWER_AFTER[task.action]
                settled.append((power, at, "failed" if error else "succeeded", error or "", instance_id))
        execute_many(session, _TASK_FINISHED, finished)
        execute_many(session, _TASK_SETTLING, settling)
        execute_many(session, _INSTANCE_ACTED, acted)
        execute_many(session, _INSTANCE_SETTLED, settled)
        for chunk in chunks(deleted):
            session.execute(delete(Instance).where(Instance.id.in_(chunk)))
        for operation_id in sorted(operations):
            complete_if_done(session, operation_id, now)

    def _observe_quietly(self, key: str) -> InstanceObservation:
        try:
            return self._provider.describe_instance(key)
        except Exception:  # observation is best effort after a failure
            return InstanceObservation(InstanceState.UNKNOWN, None, "")

    # ------------------------------------------------------------------------------------- settling
    def settle(self) -> int:
        """Judge every task waiting for its guest; returns how many still wait."""
        self.record_finished()
        with self._db.read() as session:
            waiting = [
                (
                    task.id,
                    instance_key(scale_set, instance),
                    GuestExpectation.from_json(task.expect or {}),
                    task.deadline,
                )
                for task, instance, scale_set in session.execute(
                    select(Task, Instance, ScaleSet)
                    .join(Instance, Task.instance_row_id == Instance.id)
                    .join(ScaleSet, Instance.set_id == ScaleSet.id)
                    .where(Task.status == "settling")
                ).all()
            ]
        now = self._clock.now()
        verdicts = {}
        for task_id, key, expect, deadline in waiting:
            verdict = judge_guest(self._provider.read_guest_report(key), expect)
            if not verdict.done and deadline is not None and _aware(deadline) <= now:
                verdict = GuestVerdict(
                    True,
                    "The guest did not report its custom data and extensions within "
                    "the extensions time budget.",
                )
            if verdict.done:
                verdicts[task_id] = verdict
        if verdicts:
            with self._db.write() as session:
                for task_id, verdict in verdicts.items():
                    self._finish_settling(session, task_id, verdict, now)
        self._settling = len(waiting) - len(verdicts)
        return self._settling

    def _finish_settling(self, session: Session, task_id: int, verdict: GuestVerdict, now: datetime) -> None:
        task = session.get(Task, task_id)
        if task is None or task.status != "settling":
            return
        task.status = "failed" if verdict.failure else "done"
        task.error = verdict.failure or ""
        task.updated_at = now
        instance = session.get(Instance, task.instance_row_id)
        if instance is not None:
            instance.provisioning_state = "failed" if verdict.failure else "succeeded"
            instance.status_message = verdict.failure or ""
            instance.updated_at = now
        session.flush()
        complete_if_done(session, task.operation_id, now)

    # ---------------------------------------------------------------------------------- observation
    def observe(self) -> int:
        """Bring settled instances' power state in line with what the provider sees; returns changes."""
        with self._db.read() as session:
            busy = set(
                session.scalars(
                    select(Task.instance_row_id).where(Task.status.in_(("pending", "running", "settling")))
                )
            )
            rows = session.execute(
                select(Instance, ScaleSet)
                .join(ScaleSet, Instance.set_id == ScaleSet.id)
                .where(Instance.provisioning_state.in_(("succeeded", "failed")))
            ).all()
        seen: dict[int, tuple[str, str]] = {}
        for instance, scale_set in rows:
            if instance.id in busy:
                continue
            observation = self._provider.describe_instance(instance_key(scale_set, instance))
            power = _POWER_OF_STATE[observation.state]
            if power != instance.power_state:
                seen[instance.id] = (power, observation.message)
        if not seen:
            return 0
        now = self._clock.now()
        with self._db.write() as session:
            for row_id, (power, message) in seen.items():
                current = session.get(Instance, row_id)
                if current is None or current.provisioning_state not in ("succeeded", "failed"):
                    continue
                current.power_state = power
                current.status_message = message
                current.updated_at = now
        return len(seen)
