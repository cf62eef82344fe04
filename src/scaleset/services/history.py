"""A scale set's OS upgrade history (M-14; azure-api.md §2.6, VirtualMachineScaleSets_GetOSUpgradeHistory).

Nothing is recorded for the history: it is a view of the persisted runs (`rolling_upgrades`, with the
counts `run_status` derives from `upgrade_instances`), so it survives restarts like the runs do (M-26).

Which runs are OS upgrade attempts:

- every `os` run (`osRollingUpgrade`, by a user or by the platform's automatic OS upgrade);
- a `model` run (a model change rolled out in `Rolling` mode) when it moves instances to another image:
  its target image (publisher/offer/sku or custom image id, and the exact version) differs from the
  image of the model version just before its target, or from the image any instance it took ran before.
  Azure counts a new image reached through a model change as an OS upgrade too (M-2: "change the
  platform image version or SKU"), and a user who PUTs a new version expects to find it here. The two
  comparisons together cover a model change made while another run was going on (the run that follows
  targets the newest model, whose predecessor may already have had the new image) and a run that was
  cancelled before it took any instance;
- never an `extension` run: no OS disk changes.

Limits, as Azure documents them ("the last five OS upgrade attempts within the past two months"): by
default the five newest attempts that started in the last 60 days. A caller may ask for more (`count`,
up to `MAX_COUNT`) or for a different window (`since`). The attempts are chosen once, as of the first
page's moment (`as_of`), which every later page carries in its token: an upgrade that starts while a
client pages does not shift the pages under it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.domain.errors import invalid
from scaleset.domain.gallery_spec import gallery_base_id, parse_gallery_image_id
from scaleset.engine.clock import Clock
from scaleset.services.lookups import require_set
from scaleset.services.upgrades import RunStatus, run_status
from scaleset.store.db import Database
from scaleset.store.tables import RollingUpgrade, ScaleSet, ScaleSetModel, Task, UpgradeInstance

Json = dict[str, Any]

DEFAULT_COUNT = 5
DEFAULT_WINDOW = timedelta(days=60)
MAX_COUNT = 1000
# Run kinds that can be OS upgrade attempts (an `extension` run never is).
CANDIDATE_KINDS = ("os", "model")
ROLLBACK_FAILED = "RollbackFailed"

T = TypeVar("T")


# ------------------------------------------------------------------------------------ pure rules
@dataclass(frozen=True)
class ImageIdentity:
    """What makes two OS images the same: where the image comes from and its exact version."""

    publisher: str
    offer: str
    sku: str
    custom_id: str
    version: str


def image_identity(model: Json, exact_version: str) -> ImageIdentity:
    """The image a model version runs (names compared without case, as ARM does; versions exactly).

    >>> model = {"storageProfile": {"imageReference": {"publisher": "Canonical", "offer": "ubuntu",
    ...     "sku": "22_04-lts", "version": "latest"}}}
    >>> image_identity(model, "1.0.0") == image_identity(model, "1.0.0")
    True
    >>> image_identity(model, "1.0.0") == image_identity(model, "1.1.0")
    False
    """
    reference = _image_reference(model)
    return ImageIdentity(
        publisher=str(reference.get("publisher") or "").lower(),
        offer=str(reference.get("offer") or "").lower(),
        sku=str(reference.get("sku") or "").lower(),
        custom_id=str(reference.get("id") or "").lower(),
        version=exact_version,
    )


def is_os_upgrade(kind: str, target: ImageIdentity, before: Iterable[ImageIdentity]) -> bool:
    """Whether a run of `kind` towards `target` is an OS upgrade attempt, given the images it started from
    (the model version before its target, and each instance it took as that instance was before).

    >>> old = ImageIdentity("p", "o", "s", "", "1.0.0")
    >>> new = ImageIdentity("p", "o", "s", "", "1.1.0")
    >>> is_os_upgrade("os", old, [old]), is_os_upgrade("model", new, [old, new])
    (True, True)
    >>> is_os_upgrade("model", old, [old])
    False
    >>> is_os_upgrade("extension", new, [old])
    False
    """
    if kind == "os":
        return True
    if kind == "model":
        return any(image != target for image in before)
    return False


def target_image_reference(model: Json, exact_version: str) -> Json:
    """`targetImageReference`: the model's image reference with the exact version the run targeted (a
    model on `latest` shows the version `latest` resolved to, as Azure's history does).

    >>> target_image_reference({"storageProfile": {"imageReference": {"publisher": "p", "offer": "o",
    ...     "sku": "s", "version": "latest", "exactVersion": "1.0.0"}}}, "1.1.0")
    {'publisher': 'p', 'offer': 'o', 'sku': 's', 'version': '1.1.0'}
    >>> target_image_reference({"storageProfile": {"imageReference": {"id": "/subscriptions/s/resourceGroups/"
    ...     "g/providers/Microsoft.Compute/galleries/gal/images/def"}}}, "1.1.0")["id"].split("/images/")[1]
    'def/versions/1.1.0'
    """
    reference = {k: v for k, v in _image_reference(model).items() if k != "exactVersion"}
    if reference.get("id") and not reference.get("publisher"):
        # A custom image is named by its id; the version it resolved to is the read-only exactVersion. A
        # gallery image's id names that version too (without /versions/... it would read as 'latest').
        gallery = parse_gallery_image_id(str(reference["id"]))
        if gallery is not None:
            reference["id"] = f"{gallery_base_id(str(reference['id']))}/versions/{exact_version}"
        reference["exactVersion"] = exact_version
    else:
        reference["version"] = exact_version
    return reference


def window_start(as_of: datetime, since: datetime | None) -> datetime:
    """The oldest start time the history shows: `since`, or two months (60 days) before `as_of`."""
    return since if since is not None else as_of - DEFAULT_WINDOW


def select_attempts(candidates: Iterable[T], is_attempt: Callable[[T], bool], count: int) -> list[T]:
    """The first `count` candidates (newest first) that are attempts; stops reading once it has them."""
    chosen: list[T] = []
    for candidate in candidates:
        if len(chosen) == count:
            break
        if is_attempt(candidate):
            chosen.append(candidate)
    return chosen


def page_of(items: Sequence[T], offset: int, size: int) -> tuple[list[T], int | None]:
    """One page and the offset of the next (None on the last page).

    >>> page_of([1, 2, 3, 4, 5], 0, 2), page_of([1, 2, 3, 4, 5], 4, 2), page_of([], 0, 2)
    (([1, 2], 2), ([5], None), ([], None))
    """
    end = offset + size
    return list(items[offset:end]), (end if end < len(items) else None)


def _image_reference(model: Json) -> Json:
    reference = (model.get("storageProfile") or {}).get("imageReference") or {}
    return dict(reference) if isinstance(reference, dict) else {}


# ------------------------------------------------------------------------------------ the query
@dataclass(frozen=True)
class HistoryLimits:
    """How much history: at most `count` attempts that started at or after `since` (None: 60 days)."""

    count: int = DEFAULT_COUNT
    since: datetime | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_COUNT:
            raise invalid("$top", f"$top must be between 1 and {MAX_COUNT}; got {self.count}.")


@dataclass(frozen=True)
class HistoryEntry:
    """One OS upgrade attempt: the run with its computed counts, and the image it went to."""

    status: RunStatus
    target_image: Json
    rollback_errors: list[tuple[int, str]]  # (instance id, why) for instances whose rollback failed


@dataclass(frozen=True)
class HistoryPage:
    entries: list[HistoryEntry]
    as_of: datetime
    next_offset: int | None


class HistoryService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def page(
        self,
        subscription: str,
        group: str,
        name: str,
        *,
        limits: HistoryLimits,
        page_size: int,
        offset: int = 0,
        as_of: datetime | None = None,
    ) -> HistoryPage:
        """The attempts `limits` selects as of `as_of` (default: now), newest first, from `offset` on."""
        moment = as_of or self._clock.now()
        with self._db.read() as session:
            scale_set = require_set(session, subscription, group, name)
            candidates = _candidate_runs(session, scale_set, window_start(moment, limits.since), moment)
            images = _ModelImages(session, scale_set.id)
            attempts = select_attempts(candidates, images.is_attempt, limits.count)
            runs, next_offset = page_of(attempts, offset, page_size)
            entries = [
                HistoryEntry(
                    status=run_status(session, run, scale_set),
                    target_image=target_image_reference(
                        images.model(run.target_model_version), run.target_image_version
                    ),
                    rollback_errors=_rollback_errors(session, run),
                )
                for run in runs
            ]
        return HistoryPage(entries=entries, as_of=moment, next_offset=next_offset)


def _candidate_runs(
    session: Session, scale_set: ScaleSet, since: datetime, as_of: datetime
) -> Iterator[RollingUpgrade]:
    yield from session.scalars(
        select(RollingUpgrade)
        .where(
            RollingUpgrade.set_id == scale_set.id,
            RollingUpgrade.kind.in_(CANDIDATE_KINDS),
            RollingUpgrade.start_time >= since,
            RollingUpgrade.start_time <= as_of,
        )
        .order_by(RollingUpgrade.start_time.desc(), RollingUpgrade.id.desc())
    )


class _ModelImages:
    """The set's model versions, each read once per request."""

    def __init__(self, session: Session, set_id: int) -> None:
        self._session = session
        self._set_id = set_id
        self._rows: dict[int, ScaleSetModel | None] = {}

    def _row(self, version: int) -> ScaleSetModel | None:
        if version not in self._rows:
            self._rows[version] = self._session.get(ScaleSetModel, (self._set_id, version))
        return self._rows[version]

    def model(self, version: int) -> Json:
        row = self._row(version)
        return row.model if row is not None else {}

    def identity(self, version: int, exact_version: str | None = None) -> ImageIdentity | None:
        row = self._row(version)
        if row is None:
            return None
        return image_identity(
            row.model, exact_version if exact_version is not None else row.exact_image_version
        )

    def is_attempt(self, run: RollingUpgrade) -> bool:
        target = image_identity(self.model(run.target_model_version), run.target_image_version)
        return is_os_upgrade(run.kind, target, self._images_before(run))

    def _images_before(self, run: RollingUpgrade) -> Iterator[ImageIdentity]:
        """The images a run started from, read only as far as `is_os_upgrade` asks (never for `os` runs)."""
        previous = self.identity(run.target_model_version - 1)
        if previous is not None:
            yield previous
        members = self._session.scalars(select(UpgradeInstance).where(UpgradeInstance.upgrade_id == run.id))
        for member in members:
            image = self.identity(member.before_model_version, member.before_image_version)
            if image is not None:
                yield image


def _rollback_errors(session: Session, run: RollingUpgrade) -> list[tuple[int, str]]:
    """Why each instance whose rollback failed failed: its newest failed task of the run, else the
    reason it was rolled back at all."""
    failed = list(
        session.scalars(
            select(UpgradeInstance)
            .where(UpgradeInstance.upgrade_id == run.id, UpgradeInstance.state == "rollback_failed")
            .order_by(UpgradeInstance.instance_id)
        )
    )
    if not failed or run.operation_id is None:
        return [(row.instance_id, row.error) for row in failed]
    reasons: dict[int, str] = {}
    for task in session.scalars(
        select(Task)
        .where(
            Task.operation_id == run.operation_id,
            Task.status == "failed",
            Task.instance_row_id.in_([row.instance_row_id for row in failed]),
        )
        .order_by(Task.id)
    ):
        reasons[task.instance_row_id] = task.error
    return [(row.instance_id, reasons.get(row.instance_row_id) or row.error) for row in failed]
