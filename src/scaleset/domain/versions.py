"""Version strings: Azure image versions and extension handler versions.

Azure files an image version as `Major.Minor.Build`, three non-negative integers that each fit a signed
32-bit int; a scale set may ask for a version exactly or for `latest`, which means the highest one
published. Leading zeros are allowed and compare numerically, so `1.02.3` and `1.2.3` are the same
version and both sort below `1.10.0`.

Extension handler versions are `major.minor` (what a scale set's `typeHandlerVersion` usually says) or
`major.minor.build[.revision]` (what a publisher publishes); missing parts count as 0 when comparing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

INT32_MAX = 2**31 - 1
LATEST = "latest"

_DIGITS = re.compile(r"[0-9]+")
# More significant digits than INT32_MAX has: rejected before int() sees them (int() refuses very long
# digit strings with a message about Python's limits, not ours).
_MAX_SIGNIFICANT_DIGITS = len(str(INT32_MAX))


def _parse_parts(text: str, *, what: str, form: str, allowed_counts: tuple[int, ...]) -> tuple[int, ...]:
    """The integers of a dotted version, or ValueError saying what `text` should have looked like."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string of the form {form}, not {type(text).__name__}")
    pieces = text.split(".")
    if len(pieces) not in allowed_counts:
        raise ValueError(f"{what} {text!r} must have the form {form}")
    return tuple(_parse_part(piece, text, what=what, form=form) for piece in pieces)


def _parse_part(piece: str, text: str, *, what: str, form: str) -> int:
    # fullmatch and an explicit [0-9] class: int() alone would accept '+1', ' 1', '1_0'
    # and non-ASCII digits.
    if not _DIGITS.fullmatch(piece):
        raise ValueError(f"{what} {text!r} must have the form {form}, each part a non-negative integer")
    if len(piece.lstrip("0")) > _MAX_SIGNIFICANT_DIGITS or int(piece) > INT32_MAX:
        raise ValueError(f"{what} {text!r} has a part larger than {INT32_MAX}")
    return int(piece)


@dataclass(frozen=True, order=True)
class ImageVersion:
    """An image version; ordered and compared by its numbers, printed as the text it was parsed from."""

    major: int
    minor: int
    build: int
    text: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for part in (self.major, self.minor, self.build):
            if not 0 <= part <= INT32_MAX:
                raise ValueError(f"image version parts must be between 0 and {INT32_MAX}, got {part}")
        if not self.text:
            object.__setattr__(self, "text", f"{self.major}.{self.minor}.{self.build}")

    @classmethod
    def parse(cls, text: str) -> Self:
        major, minor, build = _parse_parts(
            text, what="image version", form="Major.Minor.Build", allowed_counts=(3,)
        )
        return cls(major, minor, build, text)

    def __str__(self) -> str:
        return self.text


def is_latest(text: str) -> bool:
    """Whether a requested image version means 'the highest published one' (Azure ignores case here)."""
    return text.lower() == LATEST


def resolve_version(requested: str, available: Iterable[str]) -> str | None:
    """The published version (as published) that `requested` names, or None when none matches.

    `latest` picks the highest; anything else must parse and matches numerically, preferring the
    identical text, so `1.0.01` finds a published `1.0.1`. Raises ValueError if `requested` or any of
    `available` is not a valid version: the catalog validates versions when they are published.

    >>> resolve_version("latest", ["1.0.2", "1.10.0", "1.9.9"])
    '1.10.0'
    >>> resolve_version("1.0.01", ["1.0.1"])
    '1.0.1'
    >>> resolve_version("2.0.0", ["1.0.1"]) is None
    True
    """
    published = [ImageVersion.parse(text) for text in available]
    if is_latest(requested):
        # Ties (same numbers, different text) are broken by text so the answer never depends on order.
        return max(published, key=lambda v: (v, v.text)).text if published else None
    wanted = ImageVersion.parse(requested)
    matches = sorted((v.text != requested, v.text) for v in published if v == wanted)
    return matches[0][1] if matches else None


@dataclass(frozen=True, order=True)
class ExtensionVersion:
    """An extension handler version; `build` and `revision` are 0 when the text leaves them out."""

    major: int
    minor: int
    build: int = 0
    revision: int = 0
    text: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for part in (self.major, self.minor, self.build, self.revision):
            if not 0 <= part <= INT32_MAX:
                raise ValueError(f"extension version parts must be between 0 and {INT32_MAX}, got {part}")
        if not self.text:
            object.__setattr__(self, "text", f"{self.major}.{self.minor}.{self.build}.{self.revision}")

    @classmethod
    def parse(cls, text: str) -> Self:
        parts = _parse_parts(
            text,
            what="extension version",
            form="major.minor or major.minor.build[.revision]",
            allowed_counts=(2, 3, 4),
        )
        major, minor, build, revision = (*parts, 0, 0)[:4]
        return cls(major, minor, build, revision, text)

    def __str__(self) -> str:
        return self.text


def highest_minor(major_minor: str, available: Iterable[str]) -> str | None:
    """The highest published version with the same major as `major_minor`, for autoUpgradeMinorVersion.

    Never lower than `major_minor` itself: auto-upgrading a minor version must not downgrade, so when
    everything published in that major is older than what was asked for, the answer is None. Raises
    ValueError on an invalid version, like `resolve_version`.

    >>> highest_minor("1.0", ["1.0.0.0", "1.4.2.0", "2.0.0.0"])
    '1.4.2.0'
    >>> highest_minor("1.5", ["1.4.2.0"]) is None
    True
    """
    floor = ExtensionVersion.parse(major_minor)
    published = (ExtensionVersion.parse(text) for text in available)
    candidates = [v for v in published if v.major == floor.major and v >= floor]
    return max(candidates, key=lambda v: (v, v.text)).text if candidates else None
