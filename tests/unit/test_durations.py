"""ISO-8601 durations as Azure writes them (pauseTimeBetweenBatches, gracePeriod)."""

from __future__ import annotations

import pytest

from scaleset.domain.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT0S", 0),
        ("PT30S", 30),
        ("PT10M", 600),
        ("PT90M", 5400),
        ("PT1H30M", 5400),
        ("PT1H", 3600),
        ("P1D", 86400),
        ("P1DT2H3M4S", 93784),
        ("PT1.5S", 1.5),
        ("pt10m", 600),
        (" PT5M ", 300),
    ],
)
def test_good_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "P", "PT", "P1DT", "10M", "PT10", "PT-5M", "PT5X", "PT1M1H", "P1H", "PT1,5S", "five minutes"],
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_duration(text)
