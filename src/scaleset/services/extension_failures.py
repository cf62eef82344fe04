"""The automatic extension upgrade's memory of versions that failed on a set (M-20, issue 5 §3).

Azure retries a failed automatic extension upgrade "after some time without needing customer
intervention". Retrying for ever would loop onto a version that fails there, so the memory allows one retry:

- A platform extension run that rolled an instance back, or faulted after touching instances, leaves a
  `failed` row for (set, extension, version) with `retry_at` = now + the retry interval (Settings
  `extension_retry_seconds`, env `SCALESET_EXTENSION_RETRY_SECONDS`, default three days). Until then the
  version is excluded on the set: the platform does not offer it, and no model version written for the set
  pins it (`excluded_extension_versions`, read by `services/extension_pins.py`).
- When `retry_at` has passed, the version is allowed again and the platform starts its one retry.
- A second failure of the same version on the same set (with the first not cleared) writes a row with
  `retry_at` None: the version is blocked on that set for good. A newer version is still offered as
  usual; the blocked one only comes back when an operator clears it (`clear_failures`, the
  `clearBlockedExtensionVersions` endpoint), which also forgets its earlier failure.
- A run stopped at the gate before its first batch (the set was too unhealthy to start) touched nothing:
  a `gated` row keeps the version back for `GATE_RETRY` (doubled for each earlier gate stop of the same
  version, up to the retry interval) and never counts towards a block.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.domain.versions import ExtensionVersion
from scaleset.store.tables import ExtensionUpgradeFailure, RollingUpgrade, ScaleSet

DEFAULT_RETRY_SECONDS = 3 * 24 * 3600
# As for automatic OS upgrades (services/platform.py): a gated run is tried again, but not at once.
GATE_RETRY = timedelta(minutes=15)
FAILED, GATED = "failed", "gated"


def _aware(moment: datetime) -> datetime:
    # SQLite hands datetimes back without their zone; they were stored as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def failures_in_force(session: Session, scale_set: ScaleSet) -> list[ExtensionUpgradeFailure]:
    return list(
        session.scalars(
            select(ExtensionUpgradeFailure)
            .where(
                ExtensionUpgradeFailure.set_uid == scale_set.uid, ExtensionUpgradeFailure.cleared_at.is_(None)
            )
            .order_by(ExtensionUpgradeFailure.failed_at, ExtensionUpgradeFailure.id)
        )
    )


def excluded_extension_versions(
    session: Session, scale_set: ScaleSet, now: datetime
) -> frozenset[tuple[str, str]]:
    """(extension key "publisher.type" in lower case, version) pairs the set must not be given now: blocked,
    or failed and waiting for its retry."""
    return frozenset(
        (row.extension_key, row.version)
        for row in failures_in_force(session, scale_set)
        if row.retry_at is None or now < _aware(row.retry_at)
    )


def is_blocked(row: ExtensionUpgradeFailure) -> bool:
    return row.kind == FAILED and row.retry_at is None


def record_failure(
    session: Session,
    scale_set: ScaleSet,
    run: RollingUpgrade,
    kind: str,
    reason: str,
    now: datetime,
    retry_after: timedelta,
) -> ExtensionUpgradeFailure | None:
    """Remember that `run` (a platform extension run) failed, once per run; None when it is already
    remembered. A second failure of its version on the set (not cleared since) blocks the version."""
    assert run.extension_key is not None and run.extension_version is not None
    if session.scalar(select(ExtensionUpgradeFailure.id).where(ExtensionUpgradeFailure.run_id == run.id)):
        return None
    version = ExtensionVersion.parse(run.extension_version)
    # This version's failures in force on the set, by kind.
    same = [
        row.kind
        for row in failures_in_force(session, scale_set)
        if row.extension_key == run.extension_key and ExtensionVersion.parse(row.version) == version
    ]
    if kind == GATED:
        # Each gate stop in a row on the same version waits twice as long (15 min, 30 min, … up to the
        # retry interval), so a set that stays too unhealthy to start does not get a new model version
        # and run every 15 minutes for ever.
        retry_at: datetime | None = now + min(GATE_RETRY * 2 ** min(same.count(GATED), 16), retry_after)
    else:
        retry_at = None if FAILED in same else now + retry_after
    row = ExtensionUpgradeFailure(
        set_uid=scale_set.uid,
        extension_key=run.extension_key,
        extension_name=run.extension_name or run.extension_key,
        version=run.extension_version,
        run_id=run.id,
        kind=kind,
        reason=reason,
        failed_at=now,
        retry_at=retry_at,
        cleared_at=None,
    )
    session.add(row)
    session.flush()  # pin resolution in this same transaction must see the version excluded
    return row


def all_failures(session: Session, scale_set: ScaleSet) -> list[ExtensionUpgradeFailure]:
    """Every failure the set has had, oldest first (cleared ones included, as the record)."""
    return list(
        session.scalars(
            select(ExtensionUpgradeFailure)
            .where(ExtensionUpgradeFailure.set_uid == scale_set.uid)
            .order_by(ExtensionUpgradeFailure.failed_at, ExtensionUpgradeFailure.id)
        )
    )


def clear_failures(
    session: Session,
    scale_set: ScaleSet,
    now: datetime,
    extension: str | None = None,
    versions: Collection[ExtensionVersion] | None = None,
) -> list[ExtensionUpgradeFailure]:
    """Forget the failures in force (all, or those of `extension` — its name in the model or its
    "publisher.type" — and/or of `versions`): their versions may be offered again at once. Returns them."""
    wanted = extension.lower() if extension is not None else None
    cleared = [
        row
        for row in failures_in_force(session, scale_set)
        if (wanted is None or wanted in (row.extension_key, row.extension_name.lower()))
        and (versions is None or ExtensionVersion.parse(row.version) in versions)
    ]
    for row in cleared:
        row.cleared_at = now
    return cleared
