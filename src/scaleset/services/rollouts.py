"""Availability first across regions and zones (M-21, issue 5 §5): which platform upgrade may start now,
and which batch may start now.

SEAM (session 4): `RolloutGate` is called in two places; the rules behind it are still to be written.
- `may_start`: the platform services (automatic OS upgrade, automatic extension upgrade) ask it, in the
  write transaction that would start a platform run, whether the set may start its run towards
  `subject` now. A reason (str) means "not now": the platform leaves the set for later (the end of
  another run, or the sweep, asks again).
- `admit_batch`: the rolling engine asks it, in the write transaction of a `StartBatch` step of any run,
  whether the batch may start now; a reason means the run waits (and is asked again on a later pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session

from scaleset.engine.clock import Clock
from scaleset.store.db import Database
from scaleset.store.tables import RollingUpgrade, ScaleSet


@dataclass(frozen=True)
class RolloutSubject:
    """What a platform rollout spreads: a version of an image or of an extension.

    `key` names the image or extension whatever its version, in lower case: "publisher:offer:sku" for a
    platform image, the gallery image's resource id for a gallery image, "publisher.type" for an
    extension."""

    kind: Literal["image", "extension"]
    key: str
    version: str


class RolloutGate:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def may_start(self, session: Session, scale_set: ScaleSet, subject: RolloutSubject) -> str | None:
        """None when `scale_set` may start its platform run towards `subject` now; else why not."""
        return None

    def admit_batch(
        self, session: Session, run: RollingUpgrade, scale_set: ScaleSet, instance_ids: Sequence[int]
    ) -> str | None:
        """None when the run may start a batch of `instance_ids` now; else why it waits."""
        return None
