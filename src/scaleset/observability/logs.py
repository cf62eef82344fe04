"""Logs that say which scale set, upgrade and batch a line is about (docs/observability.md).

The work a line concerns is bound once, with `log_context(set=…, upgrade=…, batch=…)`, around the code
that does it; every record logged inside, by any logger (ours, uvicorn's, SQLAlchemy's), carries it.
The context lives in a `ContextVar`, so it follows a request through `await`s and stays out of other
requests, and threads never see each other's: a worker thread binds its own.

Two formats: `human` (the default; `[set=web upgrade=3f2a9c1e batch=2]` before the message) and `json`
(one object per line: time, level, logger, message, then the bound fields), for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import IO, Any

# The fields a context may hold, in the order both formats show them.
FIELDS = ("subscription", "group", "set", "upgrade", "batch", "instance", "operation")
# Left out of the human prefix: nearly always the one default subscription, and 36 characters long.
_HIDDEN_IN_HUMAN = frozenset({"subscription"})
# Shown by their first 8 characters in the human prefix (as `git log --oneline` shows hashes).
_SHORTENED_IN_HUMAN = frozenset({"upgrade", "operation"})

_context: ContextVar[Mapping[str, Any]] = ContextVar("scaleset_log_context", default=MappingProxyType({}))


class LogFormat(StrEnum):
    human = "human"
    json = "json"


def current_context() -> dict[str, Any]:
    """The fields bound here, in `FIELDS` order."""
    bound = _context.get()
    return {name: bound[name] for name in FIELDS if name in bound}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields (any of `FIELDS`; None leaves a field as it was) for the code inside the block.

    Nested blocks add to the outer ones and restore them on the way out:

    >>> with log_context(set="web"), log_context(upgrade="3f2a9c1e", batch=2):
    ...     current_context()
    {'set': 'web', 'upgrade': '3f2a9c1e', 'batch': 2}
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"log_context() got unknown fields {sorted(unknown)}; known: {', '.join(FIELDS)}")
    given = {name: value for name, value in fields.items() if value is not None}
    token = _context.set({**_context.get(), **given})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts the context bound where a record is made onto the record (`record.context`), so a handler
    that formats it later, or on another thread, still shows it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "context"):
            record.context = current_context()
        return True


def _context_of(record: logging.LogRecord) -> dict[str, Any]:
    found = getattr(record, "context", None)
    return dict(found) if isinstance(found, Mapping) else current_context()


def human_prefix(context: Mapping[str, Any]) -> str:
    """`[set=web upgrade=3f2a9c1e batch=2] `, or '' when nothing is bound."""
    shown = []
    for name in FIELDS:
        if name in context and name not in _HIDDEN_IN_HUMAN:
            value = str(context[name])
            shown.append(f"{name}={value[:8] if name in _SHORTENED_IN_HUMAN else value}")
    return f"[{' '.join(shown)}] " if shown else ""


class HumanFormatter(logging.Formatter):
    """`2026-12-03 07:01:02,345 INFO scaleset.rolling [set=web upgrade=3f2a9c1e batch=2] message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        prefix = human_prefix(_context_of(record))
        if not prefix:
            return super().formatMessage(record)
        # Other handlers format the same record: leave its message as it was.
        plain = record.message
        record.message = prefix + plain
        try:
            return super().formatMessage(record)
        finally:
            record.message = plain


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, the context's fields, and
    `exception` (the formatted traceback) when the record has one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context_of(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def make_handler(log_format: LogFormat, stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.json else HumanFormatter())
    return handler


def configure_logging(level: str, log_format: LogFormat, stream: IO[str] | None = None) -> None:
    """Route every logger through one handler on the root logger, in the chosen format.

    Uvicorn must be started with `log_config=None` so its loggers keep propagating here instead of
    writing through their own handlers (which would bypass the format and the context).
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(log_format, stream))
    root.setLevel(level.upper())
