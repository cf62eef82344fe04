"""ISO-8601 durations as Azure writes them (`PT0S`, `PT10M`, `PT1H30M`, `P1D`)."""

from __future__ import annotations

import re

_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration; ValueError for anything else (including a bare 'P' or 'PT')."""
    match = _DURATION.match(text.strip().upper())
    if match is None or not any(match.groupdict().values()) or text.strip().upper().endswith("T"):
        raise ValueError(f"'{text}' is not an ISO-8601 duration such as PT0S, PT30S or PT1H30M")
    parts = {name: float(value) if value else 0.0 for name, value in match.groupdict().items()}
    return parts["days"] * 86400 + parts["hours"] * 3600 + parts["minutes"] * 60 + parts["seconds"]
