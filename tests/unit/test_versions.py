from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scaleset.domain.versions import (
    INT32_MAX,
    ExtensionVersion,
    ImageVersion,
    highest_minor,
    is_latest,
    resolve_version,
)

parts = st.integers(min_value=0, max_value=INT32_MAX)
zeros = st.integers(min_value=0, max_value=3)


@st.composite
def version_texts(draw: st.DrawFn, count: int) -> tuple[tuple[int, ...], str]:
    """Numbers and a text for them, sometimes with leading zeros."""
    numbers = tuple(draw(parts) for _ in range(count))
    text = ".".join("0" * draw(zeros) + str(number) for number in numbers)
    return numbers, text


# --- image versions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.0.0", (1, 0, 0)),
        ("0.0.0", (0, 0, 0)),
        ("2024.01.015", (2024, 1, 15)),
        (f"{INT32_MAX}.{INT32_MAX}.{INT32_MAX}", (INT32_MAX, INT32_MAX, INT32_MAX)),
        ("000000000000000001.0.0", (1, 0, 0)),
    ],
)
def test_image_version_parses_three_integers(text: str, expected: tuple[int, int, int]) -> None:
    version = ImageVersion.parse(text)
    assert (version.major, version.minor, version.build) == expected
    assert str(version) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.0",
        "1.0.0.0",
        "1..0",
        "1.0.",
        ".1.0",
        "+1.0.0",
        "-1.0.0",
        " 1.0.0",
        "1.0.0 ",
        "1.0.0\n",
        "1_0.0.0",
        "1.0.x",
        "latest",
        "\u0661.0.0",  # ARABIC-INDIC DIGIT ONE: a digit to int(), not to Azure
        f"{INT32_MAX + 1}.0.0",
        "9" * 5000 + ".0.0",  # past int()'s own digit limit: still our message
    ],
)
def test_image_version_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="image version"):
        ImageVersion.parse(text)


def test_image_versions_compare_numerically() -> None:
    assert ImageVersion.parse("1.10.0") > ImageVersion.parse("1.9.9")
    assert ImageVersion.parse("1.02.3") == ImageVersion.parse("1.2.3")
    assert hash(ImageVersion.parse("1.02.3")) == hash(ImageVersion.parse("1.2.3"))
    assert str(ImageVersion.parse("1.02.3")) == "1.02.3"


def test_image_version_built_from_numbers_prints_canonically() -> None:
    assert str(ImageVersion(1, 2, 3)) == "1.2.3"
    with pytest.raises(ValueError):
        ImageVersion(-1, 0, 0)


@given(version_texts(3))
def test_image_version_text_round_trips(case: tuple[tuple[int, ...], str]) -> None:
    numbers, text = case
    version = ImageVersion.parse(text)
    assert str(version) == text
    assert (version.major, version.minor, version.build) == numbers


@given(version_texts(3), version_texts(3))
def test_image_version_order_is_tuple_order(
    left: tuple[tuple[int, ...], str], right: tuple[tuple[int, ...], str]
) -> None:
    a, b = ImageVersion.parse(left[1]), ImageVersion.parse(right[1])
    assert (a < b) == (left[0] < right[0])
    assert (a == b) == (left[0] == right[0])
    assert (a > b) == (left[0] > right[0])


@pytest.mark.parametrize("text", ["latest", "Latest", "LATEST"])
def test_is_latest_ignores_case(text: str) -> None:
    assert is_latest(text)


@pytest.mark.parametrize("text", ["", "latest ", "newest", "1.0.0"])
def test_is_latest_is_exact(text: str) -> None:
    assert not is_latest(text)


def test_resolve_latest_picks_the_highest() -> None:
    assert resolve_version("latest", ["1.0.2", "1.10.0", "1.9.9"]) == "1.10.0"
    assert resolve_version("LATEST", ["1.9.9"]) == "1.9.9"


def test_resolve_latest_with_nothing_published_is_none() -> None:
    assert resolve_version("latest", []) is None


def test_resolve_exact_version() -> None:
    assert resolve_version("1.0.2", ["1.0.2", "1.10.0"]) == "1.0.2"
    assert resolve_version("2.0.0", ["1.0.2", "1.10.0"]) is None


def test_resolve_matches_numerically_and_prefers_identical_text() -> None:
    assert resolve_version("1.0.01", ["1.0.1"]) == "1.0.1"
    assert resolve_version("1.0.01", ["1.0.1", "1.0.01"]) == "1.0.01"


def test_resolve_latest_is_independent_of_order() -> None:
    assert resolve_version("latest", ["1.0.1", "1.0.01"]) == resolve_version("latest", ["1.0.01", "1.0.1"])


def test_resolve_rejects_invalid_versions() -> None:
    with pytest.raises(ValueError):
        resolve_version("1.0", ["1.0.0"])
    with pytest.raises(ValueError):
        resolve_version("latest", ["1.0.0", "bad"])


@given(st.lists(version_texts(3), min_size=1, max_size=8))
def test_resolve_latest_is_the_maximum(cases: list[tuple[tuple[int, ...], str]]) -> None:
    resolved = resolve_version("latest", [text for _, text in cases])
    assert resolved is not None
    assert ImageVersion.parse(resolved) == max(ImageVersion.parse(text) for _, text in cases)


# --- extension versions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.0", (1, 0, 0, 0)),
        ("2.1.3", (2, 1, 3, 0)),
        ("2.1.3.4", (2, 1, 3, 4)),
        ("01.02", (1, 2, 0, 0)),
    ],
)
def test_extension_version_parses(text: str, expected: tuple[int, int, int, int]) -> None:
    version = ExtensionVersion.parse(text)
    assert (version.major, version.minor, version.build, version.revision) == expected
    assert str(version) == text


@pytest.mark.parametrize("text", ["", "1", "1.2.3.4.5", "1.a", "1.-2", "v1.0", f"1.{INT32_MAX + 1}"])
def test_extension_version_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="extension version"):
        ExtensionVersion.parse(text)


def test_extension_version_missing_parts_count_as_zero() -> None:
    assert ExtensionVersion.parse("1.0") == ExtensionVersion.parse("1.0.0.0")
    assert ExtensionVersion.parse("1.0") < ExtensionVersion.parse("1.0.0.1")
    assert ExtensionVersion.parse("1.10") > ExtensionVersion.parse("1.9.9.9")


@given(st.integers(min_value=2, max_value=4).flatmap(version_texts), st.integers(2, 4).flatmap(version_texts))
def test_extension_version_order_is_padded_tuple_order(
    left: tuple[tuple[int, ...], str], right: tuple[tuple[int, ...], str]
) -> None:
    def padded(numbers: tuple[int, ...]) -> tuple[int, ...]:
        return (*numbers, 0, 0)[:4]

    a, b = ExtensionVersion.parse(left[1]), ExtensionVersion.parse(right[1])
    assert str(a) == left[1]
    assert (a < b) == (padded(left[0]) < padded(right[0]))
    assert (a == b) == (padded(left[0]) == padded(right[0]))


def test_highest_minor_stays_within_the_major() -> None:
    published = ["1.0.0.0", "1.4.2.0", "1.10.0.0", "2.0.0.0"]
    assert highest_minor("1.0", published) == "1.10.0.0"
    assert highest_minor("2.0", published) == "2.0.0.0"
    assert highest_minor("3.0", published) is None


def test_highest_minor_never_downgrades() -> None:
    assert highest_minor("1.5", ["1.4.2.0"]) is None
    assert highest_minor("1.4", ["1.4.2.0"]) == "1.4.2.0"


def test_highest_minor_rejects_invalid_versions() -> None:
    with pytest.raises(ValueError):
        highest_minor("1", ["1.0"])
