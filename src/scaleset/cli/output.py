"""Rendering command results: JSON for programs (the default), Rich tables for people, TSV for shells."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table


class OutputFormat(StrEnum):
    json = "json"
    table = "table"
    tsv = "tsv"


@dataclass(frozen=True)
class Column:
    """One table/TSV column: a header and how to read the cell from an item."""

    header: str
    get: Callable[[Any], Any]


def field(*keys: str | int) -> Callable[[Any], Any]:
    """A getter for a nested key path (`field("properties", "provisioningState")`); missing → None."""

    def get(item: Any) -> Any:
        node = item
        for key in keys:
            if isinstance(key, int):
                node = node[key] if isinstance(node, list) and -len(node) <= key < len(node) else None
            else:
                node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                return None
        return node

    return get


def col(header: str, *keys: str | int) -> Column:
    return Column(header, field(*keys))


def render(
    data: Any,
    fmt: OutputFormat,
    columns: Sequence[Column] | None = None,
    *,
    stream: TextIO | None = None,
) -> None:
    """Print `data` (a resource, a list of them, a string, or None for nothing) in `fmt`."""
    out = stream or sys.stdout
    if data is None:
        return
    if fmt is OutputFormat.json:
        out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    if isinstance(data, str | int | float | bool):
        out.write(f"{cell(data)}\n")
        return
    items = data if isinstance(data, list) else [data]
    chosen = list(columns) if columns is not None else auto_columns(items)
    if fmt is OutputFormat.tsv:
        for item in items:
            out.write("\t".join(cell(column.get(item)) for column in chosen) + "\n")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in chosen:
        table.add_column(column.header, overflow="fold")
    for item in items:
        table.add_row(*(cell(column.get(item)) for column in chosen))
    console(out).print(table)


def console(stream: TextIO) -> Console:
    # Off a terminal (pipes, tests) Rich would assume 80 columns and wrap cells; tables shrink to
    # their content anyway, so give them room.
    interactive = stream.isatty()
    return Console(file=stream, width=None if interactive else 250, highlight=False, soft_wrap=False)


def cell(value: Any) -> str:
    """A table cell: az's spelling of booleans, lists joined, objects as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value).replace("\t", " ").replace("\n", " ")


def auto_columns(items: Sequence[Any]) -> list[Column]:
    """Columns for shapes without a table of their own: the scalar fields of the items and of their
    `properties`, in first-seen order."""
    columns: list[Column] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            return [Column("Value", lambda value: value)]
        for key, value in item.items():
            if key != "properties" and _scalar(value) and key not in seen:
                seen.add(key)
                columns.append(col(_title(key), key))
        properties = item.get("properties")
        if isinstance(properties, dict):
            for key, value in properties.items():
                if _scalar(value) and key not in seen:
                    seen.add(key)
                    columns.append(col(_title(key), "properties", key))
    return columns


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _title(key: str) -> str:
    return key[:1].upper() + key[1:]


def print_error(code: str, message: str, target: str | None = None, *, stream: TextIO | None = None) -> None:
    """`ERROR (code) message` (+ the target), as az prints service errors, on stderr."""
    err = stream or sys.stderr
    err.write(f"ERROR ({code}) {message}\n")
    if target:
        err.write(f"Target: {target}\n")
