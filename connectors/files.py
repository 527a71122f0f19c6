"""File connectors: Parquet, CSV, JSON and JSON Lines files as rows of message fields.

Columns are the message fields of ARCHITECTURE.md §4; ``ts`` may be a timestamp column or a
string. Null cells mean "field absent". Used by ``replay`` (file to topic) and ``backtest``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

SUPPORTED = (".parquet", ".csv", ".json", ".jsonl", ".ndjson")


class FileFormatError(ValueError):
    """The file cannot be read as rows; the message names the file and the reason."""


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Each row of the file as a dict without null fields, in file order."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise FileFormatError(
            f"{path}: unsupported file type {suffix!r} (use {', '.join(SUPPORTED)})"
        )
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    if suffix in (".json", ".jsonl", ".ndjson"):
        yield from _json_rows(path, lines=suffix != ".json")
        return
    try:
        frame = (
            pl.read_parquet(path)
            if suffix == ".parquet"
            else pl.read_csv(path, try_parse_dates=False)
        )
    except Exception as exc:
        raise FileFormatError(f"{path}: cannot read: {exc}") from exc
    for row in frame.iter_rows(named=True):
        yield {name: _cell(value) for name, value in row.items() if not _is_null(value)}


def count_rows(path: Path) -> int | None:
    """The number of rows when cheap to know (Parquet, CSV), for progress output."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pl.scan_parquet(path).select(pl.len()).collect().item()
    if suffix == ".csv":
        return pl.scan_csv(path).select(pl.len()).collect().item()
    return None


def _json_rows(path: Path, *, lines: bool) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        if not lines:
            try:
                data = json.load(handle)
            except ValueError as exc:
                raise FileFormatError(f"{path}: not JSON: {exc}") from exc
            if not isinstance(data, list):
                raise FileFormatError(f"{path}: expected a JSON list of objects")
            for index, item in enumerate(data):
                yield _object(item, path, index + 1)
            return
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield _object(json.loads(line), path, number)
                except ValueError as exc:
                    raise FileFormatError(f"{path}:{number}: not JSON: {exc}") from exc


def _object(item: Any, path: Path, where: int) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise FileFormatError(f"{path}: item {where} is not a JSON object")
    return item


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        # Naive timestamp columns are read as UTC, the only zone on the wire.
        return value.isoformat() + "Z"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
