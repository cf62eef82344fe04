"""A sweep the engine loop runs as a reconciler: at the first pass, then at most once per interval.

Both platform services (automatic OS and extension upgrades) sweep for what a crash or a busy set left
waiting (M-26); the sweep never asks the loop to come back sooner, and its failure never stops the pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from scaleset.engine.clock import Clock


class PeriodicSweep:
    def __init__(
        self, clock: Clock, every: timedelta, sweep: Callable[[], object], log: logging.Logger, what: str
    ) -> None:
        self._clock = clock
        self._every = every
        self._sweep = sweep
        self._log = log
        self._what = what
        self._last: datetime | None = None

    def __call__(self) -> bool:
        """An engine reconciler: sweeps when due; always False (never keeps the loop busy)."""
        now = self._clock.now()
        if self._last is not None and now - self._last < self._every:
            return False
        self._last = now
        try:
            self._sweep()
        except Exception:  # the engine pass goes on; the next sweep tries again
            self._log.exception("%s: sweep failed", self._what)
        return False
