"""Field checks shared by the resource specs (scale sets, load balancers, galleries): ARM-style 400s that
name the field."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from scaleset.domain.errors import invalid

V = TypeVar("V")


MAX_TAGS = 50  # ARM's limit per resource


def json_object(value: Any, target: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(target, f"'{target}' must be a JSON object.")
    return value


def validate_tags(raw: Any) -> dict[str, str]:
    """A resource's `tags`: an object of at most 50 string values (None: no tags)."""
    if raw is None:
        return {}
    tags = json_object(raw, "tags")
    if len(tags) > MAX_TAGS:
        raise invalid("tags", f"A resource can have at most {MAX_TAGS} tags.")
    for key, value in tags.items():
        if not isinstance(value, str):
            raise invalid(f"tags.{key}", "Tag values must be strings.")
    return dict(tags)


def non_empty_string(value: Any, target: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(target, f"'{target}' must be a non-empty string.")
    return value


def one_of(value: Any, target: str, choices: tuple[str, ...]) -> str:
    """`value` as the choice it names, compared case-insensitively (ARM enums are)."""
    text = non_empty_string(value, target)
    for choice in choices:
        if choice.lower() == text.lower():
            return choice
    raise invalid(target, f"'{target}' is '{text}'; it must be one of {', '.join(choices)}.")


def parse_versions(versions: Iterable[Any] | None, parse: Callable[[str], V]) -> set[V] | None:
    """A request's list of versions (`{"versions": [...]}`), each parsed; None when it names none. A bad
    one is a 400 naming its index."""
    if versions is None:
        return None
    parsed = set()
    for index, version in enumerate(versions):
        try:
            parsed.add(parse(str(version)))
        except ValueError as error:
            raise invalid(f"versions[{index}]", str(error)) from None
    return parsed
