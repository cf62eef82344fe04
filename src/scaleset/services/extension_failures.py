"""The automatic extension upgrade's memory of versions that failed on a set (M-20, issue 5 §3).

SEAM (session 4): filled in by the automatic-extension-upgrade work. `excluded_extension_versions` is read
whenever a model version's extension versions are resolved (`services/extension_pins.py`), so a version that
failed on a set is not handed to it again while it is blocked or waiting for its retry.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from scaleset.store.tables import ScaleSet


def excluded_extension_versions(
    session: Session, scale_set: ScaleSet, now: datetime
) -> frozenset[tuple[str, str]]:
    """(extension key "publisher.type" in lower case, version) pairs the set must not be given now."""
    return frozenset()
