"""File connectors: Parquet, CSV, JSON and JSON Lines files as rows of message fields.

Columns are the message fields of ARCHITECTURE.md §4; ``ts`` may be a timestamp column or a
string. Null cells mean "field absent". Used by ``replay`` (file to topic) and ``backtest``.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from connectors.kafka import SourceRecord

SUPPORTED = (".parquet", ".csv", ".json", ".jsonl", ".ndjson", ".yaml", ".yml")


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
    if suffix in (".yaml", ".yml"):
        yield from _yaml_rows(path)
        return
    frame = _read_frame(path, try_parse_dates=False)
    for row in frame.iter_rows(named=True):
        yield {name: _cell(value) for name, value in row.items() if not _is_null(value)}


def count_rows(path: Path) -> int | None:
    """The number of rows when cheap to know (Parquet, CSV), for progress output."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        return None
    _require_file(path)
    scan = pl.scan_parquet(path) if suffix == ".parquet" else pl.scan_csv(path)
    try:
        count: int = scan.select(pl.len()).collect().item()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise FileFormatError(f"{path}: cannot read as {_kind(path)}: {_reason(exc)}") from exc
    return count


def _require_file(path: Path) -> None:
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    if not path.is_file():
        raise FileFormatError(f"{path}: not a file")


def _read_frame(path: Path, **csv_options: Any) -> pl.DataFrame:
    _require_file(path)
    try:
        if path.suffix.lower() == ".parquet":
            return pl.read_parquet(path)
        return pl.read_csv(path, **csv_options)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise FileFormatError(f"{path}: cannot read as {_kind(path)}: {_reason(exc)}") from exc


def _kind(path: Path) -> str:
    return "Parquet" if path.suffix.lower() == ".parquet" else "CSV"


def _reason(exc: BaseException) -> str:
    """Polars' reason on one short line: its messages run to paragraphs of tuning advice, with
    the actual cause after 'Original error:' when there is one."""
    text = str(exc)
    if "Original error:" in text:
        text = text.split("Original error:", 1)[1]
    else:
        text = text.split("\n\n", 1)[0]
    text = " ".join(text.replace("`", "").split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _json_rows(path: Path, *, lines: bool) -> Iterator[dict[str, Any]]:
    try:
        yield from _json_items(path, lines=lines)
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _json_items(path: Path, *, lines: bool) -> Iterator[dict[str, Any]]:
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


def _yaml_rows(path: Path) -> Iterator[dict[str, Any]]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise FileFormatError(f"{path}: not YAML: {exc}") from exc
    if not isinstance(data, list):
        raise FileFormatError(f"{path}: expected a YAML list of mappings")
    for index, item in enumerate(data):
        yield _object(item, path, index + 1)


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


# ---------------------------------------------------------------- backtest input


class SortedRows:
    """A file's rows in event-time order, read and checked when made, so that a missing file,
    a malformed one or a missing column is a FileFormatError before any dataflow starts (inside
    one, Bytewax turns it into a Rust panic). Rows whose ts does not parse come last."""

    def __init__(self, path: Path, required: tuple[str, ...] = ("ts",)) -> None:
        self.path = path
        suffix = path.suffix.lower()
        self._rows: list[dict[str, Any]] | None = None
        if suffix not in (".parquet", ".csv"):
            self._rows = list(read_rows(path))
            columns = {name for row in self._rows for name in row}
            frame = pl.DataFrame(
                {
                    "_row": list(range(len(self._rows))),
                    "ts": [str(r.get("ts", "")) for r in self._rows],
                }
            )
        else:
            frame = _read_frame(path)
            columns = set(frame.columns)
        missing = [name for name in ("ts", *required) if name not in columns]
        if missing:
            found = ", ".join(sorted(columns)[:12]) or "none"
            raise FileFormatError(
                f"{path}: no {' or '.join(repr(m) for m in dict.fromkeys(missing))} column "
                f"(columns found: {found})"
            )
        ts = frame["ts"]
        if ts.dtype == pl.String:
            key = ts.str.to_datetime(time_zone="UTC", strict=False)
        elif ts.dtype.is_integer():
            key = pl.from_epoch(ts, time_unit="ms").dt.replace_time_zone("UTC")
        elif isinstance(ts.dtype, pl.Datetime):
            key = ts if ts.dtype.time_zone else ts.dt.replace_time_zone("UTC")  # type: ignore[attr-defined]
        else:
            raise FileFormatError(
                f"{path}: column 'ts' has type {ts.dtype}; use a timestamp or text"
            )
        self._frame = frame.with_columns(key.alias("_event_time")).sort(
            "_event_time", maintain_order=True, nulls_last=True
        )

    def __iter__(self) -> Iterator[tuple[datetime | None, dict[str, Any]]]:
        for row in self._frame.iter_rows(named=True):
            event_time = row.pop("_event_time")
            if self._rows is not None:
                row = self._rows[row["_row"]]
            cells = {k: _cell(v) for k, v in row.items() if not _is_null(v) and k != "_row"}
            yield event_time, cells


def merged_by_time(
    sources: list[tuple[str, SortedRows, Callable[[dict[str, Any]], str | None]]],
) -> Iterator[SourceRecord]:
    """The rows of several files as records of their topics, merged in event-time order.

    ``sources`` are (topic, rows, key function); at equal times the earlier source comes first.
    """

    def tagged(
        order: int, topic: str, rows: SortedRows, key_of: Callable[..., str | None]
    ) -> Iterator[Any]:
        for offset, (event_time, row) in enumerate(rows):
            sort_time = event_time.timestamp() if event_time is not None else math.inf
            yield sort_time, order, offset, topic, key_of(row), row, event_time

    streams = [tagged(order, *source) for order, source in enumerate(sources)]
    for _, _, offset, topic, key, row, event_time in heapq.merge(*streams):
        yield SourceRecord(
            topic=topic,
            partition=0,
            offset=offset,
            key=key.encode() if key is not None else None,
            value=json.dumps(row, default=str).encode(),
            timestamp_ms=int(event_time.timestamp() * 1000) if event_time is not None else None,
        )
