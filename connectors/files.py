"""File connectors: Parquet, CSV, JSON and JSON Lines files as rows of message fields.

Columns are the message fields of ARCHITECTURE.md §4; ``ts`` may be a timestamp column or a
string. Null cells mean "field absent". Used by ``replay`` (file to topic) and ``backtest``.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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

# Names a file may give its time column; the first one present stands for ``ts``.
TIME_ALIASES = ("timestamp", "time", "date", "datetime")
# OHLCV columns by their short and long names, as bar files spell them.
BAR_ALIASES = {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"}
# A symbol as exchanges and vendors spell one: letters and digits, with the separators of
# share classes (BRK.B, BRK/B), indices (^SPX), futures (ES=F), pairs (BTC-USD) and the
# padded OCC option symbols ("AAPL  260116C00200000").
SYMBOL_PATTERN = r"^[A-Z0-9^][A-Z0-9 ./=:_^-]{0,31}$"
_MAX_NAMED = 12


def parse_column_map(text: str) -> dict[str, str]:
    """``"ts=timestamp,price=c"`` as {message field: file column}."""
    mapping: dict[str, str] = {}
    for part in text.split(","):
        field, sep, column = (piece.strip() for piece in part.partition("="))
        if not sep or not field or not column:
            raise FileFormatError(
                f"--columns: {part.strip()!r} is not FIELD=COLUMN (e.g. ts=timestamp,price=c)"
            )
        if field in mapping:
            raise FileFormatError(f"--columns: {field!r} is mapped twice")
        mapping[field] = column
    return mapping


def parse_duration(text: str) -> float:
    """``"1m"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"30s"`` or plain seconds, in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    factor = units.get(value[-1:])
    number = value[:-1] if factor is not None else value
    try:
        seconds = float(number) * (factor or 1)
    except ValueError:
        raise FileFormatError(f"--bar: {text!r} is not a duration (e.g. 1m, 5m, 1h, 1d)") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise FileFormatError(f"--bar: {text!r} is not a positive duration")
    return seconds


@dataclass(frozen=True)
class InputOptions:
    """How a backtest reads a file that is not exactly the message fields (docs/operations.md,
    Backtest input)."""

    # The message's fields: other columns are ignored and named in ``SortedRows.notices``.
    fields: frozenset[str] | None = None
    # Fields holding symbols: stripped, upper-cased, refused when not a symbol.
    symbol_fields: tuple[str, ...] = ()
    tz: str | None = None  # the zone of naive timestamps; None: they are an error
    columns: dict[str, str] = field(default_factory=dict)  # message field -> file column
    symbol: str | None = None  # the symbol of a file without a symbol column
    bars: bool = False  # OHLCV bars are recognised and expanded to ticks
    bar_seconds: float | None = None  # a bar's length; None: the most common gap


class SortedRows:
    """A file's rows in event-time order, read and checked when made, so that a missing file,
    a malformed one or a missing column is a FileFormatError before any dataflow starts (inside
    one, Bytewax turns it into a Rust panic). Rows whose ts does not parse come last.

    Each row carries its position in the file (``_row``, from 0 after the header), which the
    merged records carry as their offset, so a rejected row is named by where it is in the file.
    """

    def __init__(
        self,
        path: Path,
        required: tuple[str, ...] = ("ts",),
        options: InputOptions | None = None,
    ) -> None:
        self.path = path
        self.notices: list[str] = []
        options = options or InputOptions()
        frame = self._load(path).with_row_index("_row")
        frame = self._rename(frame, options)
        if options.symbol is not None:
            if "symbol" in frame.columns:
                raise FileFormatError(
                    f"{path}: --symbol is for files without a symbol column, and this one has one"
                )
            frame = frame.with_columns(pl.lit(options.symbol).alias("symbol"))
        bars = options.bars and "price" not in frame.columns and _has_bars(frame)
        columns = set(frame.columns) - {"_row"}
        missing = [name for name in ("ts", *required) if name not in columns]
        if missing:
            found = ", ".join(sorted(columns)[:_MAX_NAMED]) or "none"
            hint = " (or pass --symbol SYM)" if "symbol" in missing and options.bars else ""
            raise FileFormatError(
                f"{path}: no {' or '.join(repr(m) for m in dict.fromkeys(missing))} column"
                f"{hint} (columns found: {found})"
            )
        frame = _normalise_symbols(path, frame, options.symbol_fields)
        key, naive = self._event_time(frame, options.tz)
        frame = frame.with_columns(key.alias("_event_time"), naive.alias("_naive"))
        if bars:
            frame = _expand_bars(path, frame, options.bar_seconds)
            self.notices.append(
                f"{path}: OHLCV bars, expanded to 4 ticks a bar "
                "(docs/operations.md, Backtest input)"
            )
        if options.fields is not None:
            extra = [c for c in frame.columns if c not in options.fields and c[:1] != "_"]
            if extra:
                self.notices.append(
                    f"{path}: ignoring columns that are not message fields: {', '.join(extra)}"
                )
                frame = frame.drop(extra)
        self._frame = frame.sort("_event_time", maintain_order=True, nulls_last=True)

    def __len__(self) -> int:
        return self._frame.height

    @staticmethod
    def _load(path: Path) -> pl.DataFrame:
        if path.suffix.lower() in (".parquet", ".csv"):
            return _read_frame(path)
        rows = list(read_rows(path))
        try:
            return pl.from_dicts(rows, infer_schema_length=None) if rows else pl.DataFrame()
        except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
            raise FileFormatError(f"{path}: rows of mixed types: {_reason(exc)}") from exc

    def _rename(self, frame: pl.DataFrame, options: InputOptions) -> pl.DataFrame:
        path, mapping = self.path, dict(options.columns)
        for field_name, column in mapping.items():
            if column not in frame.columns:
                found = ", ".join(c for c in frame.columns[:_MAX_NAMED] if c != "_row")
                raise FileFormatError(
                    f"{path}: no column {column!r} for --columns {field_name}={column} "
                    f"(columns found: {found})"
                )
        if "ts" not in mapping and "ts" not in frame.columns:
            alias = next((name for name in TIME_ALIASES if name in frame.columns), None)
            if alias is not None:
                mapping["ts"] = alias
        if options.bars and "price" not in mapping and "price" not in frame.columns:
            for short, long in BAR_ALIASES.items():
                if long not in mapping and long not in frame.columns and short in frame.columns:
                    mapping[long] = short
        taken = set(mapping.values())
        clashes = [f for f in mapping if f in frame.columns and f not in taken]
        if clashes:
            raise FileFormatError(
                f"{path}: --columns maps onto {', '.join(map(repr, clashes))}, "
                "which the file already has"
            )
        return frame.rename({column: field_name for field_name, column in mapping.items()})

    def _event_time(self, frame: pl.DataFrame, tz: str | None) -> tuple[pl.Series, pl.Series]:
        """Each row's time in UTC, and whether the file gave it without a zone."""
        path, ts = self.path, frame["ts"]
        naive = pl.Series([False] * len(ts))
        if ts.dtype == pl.String:
            # A zone follows a time of day; a date alone ("2026-01-05") has none.
            has_zone = ts.str.contains(r"(?i)\d:\d\d.*(z|[+-]\d{2}(:?\d{2})?)$")
            key = ts.str.to_datetime(time_zone="UTC", strict=False)
            # Text that starts as a date and has no zone: naive, read in --tz or refused.
            looks_naive = ~has_zone & ts.str.contains(r"^\d{4}-\d{2}-\d{2}")
            candidates = pl.select(
                pl.when(pl.lit(looks_naive)).then(pl.lit(ts)).otherwise(None)
            ).to_series()
            try:
                parsed = candidates.str.to_datetime(strict=False) if looks_naive.any() else None
            except pl.exceptions.PolarsError:
                parsed = None  # no format fits: the dataflow rejects these rows, saying why
            if parsed is not None and parsed.null_count() < len(ts):
                naive = parsed.is_not_null()
                example = candidates.filter(naive)[0]
                local = self._localise(parsed, tz, example=example)
                key = pl.select(
                    pl.when(pl.lit(naive)).then(pl.lit(local)).otherwise(pl.lit(key))
                ).to_series()
        elif ts.dtype.is_integer():
            key = pl.from_epoch(ts, time_unit="ms").dt.replace_time_zone("UTC")
        elif ts.dtype == pl.Date or isinstance(ts.dtype, pl.Datetime):
            if ts.dtype == pl.Date or not ts.dtype.time_zone:  # type: ignore[attr-defined]
                example = ts.drop_nulls().head(1).to_list()
                key = self._localise(
                    ts.cast(pl.Datetime("us")), tz, example=str(example[0]) if example else ""
                )
                naive = pl.Series([True] * len(ts))
            else:
                key = ts.dt.convert_time_zone("UTC")
        else:
            raise FileFormatError(
                f"{path}: column 'ts' has type {ts.dtype}; use a timestamp or text"
            )
        return key, naive

    def _localise(self, naive: pl.Series, tz: str | None, *, example: str) -> pl.Series:
        if tz is None:
            raise FileFormatError(
                f"{self.path}: timestamps without a zone (e.g. {example!r}); pass --tz ZONE "
                "to read them in that zone (e.g. --tz America/New_York, or --tz UTC)"
            )
        try:
            local = naive.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
        except pl.exceptions.PolarsError as exc:
            raise FileFormatError(f"--tz: {tz!r} is not a time zone ({_reason(exc)})") from exc
        return local.dt.convert_time_zone("UTC")

    def __iter__(self) -> Iterator[tuple[int, datetime | None, dict[str, Any]]]:
        for row in self._frame.iter_rows(named=True):
            event_time = row.pop("_event_time")
            number = row.pop("_row")
            naive = row.pop("_naive")
            cells = {k: _cell(v) for k, v in row.items() if not _is_null(v)}
            if naive and event_time is not None:
                # Read in --tz here: the dataflow takes only timestamps with a zone.
                cells["ts"] = event_time.isoformat()
            yield number, event_time, cells


def _normalise_symbols(path: Path, frame: pl.DataFrame, names: tuple[str, ...]) -> pl.DataFrame:
    for name in names:
        if name not in frame.columns:
            continue
        column = frame[name]
        if column.dtype != pl.String:
            column = column.cast(pl.String)
        cleaned = column.str.strip_chars().str.to_uppercase()
        cleaned = pl.select(
            pl.when(pl.lit(cleaned) == "").then(None).otherwise(pl.lit(cleaned))
        ).to_series()
        bad = cleaned.is_not_null() & ~cleaned.str.contains(SYMBOL_PATTERN)
        if bad.any():
            index = int(bad.arg_true()[0])
            raise FileFormatError(
                f"{path}: row {frame['_row'][index]}: {column[index]!r} in {name!r} is not a "
                "symbol (letters and digits with . / - ^ = : _, up to 32 characters)"
            )
        frame = frame.with_columns(cleaned.alias(name))
    return frame


def _has_bars(frame: pl.DataFrame) -> bool:
    return all(name in frame.columns for name in ("open", "high", "low", "close"))


def _expand_bars(path: Path, frame: pl.DataFrame, bar_seconds: float | None) -> pl.DataFrame:
    """Four ticks a bar, from the bar's start: open at 0, the first extreme at a third of the
    bar, the second at two thirds, close 1 ms before the bar ends; the low comes first in a bar
    that closes at or above its open, the high first otherwise; each tick has a quarter of the
    volume. Intrabar order is unknown: this is an assumption, stated in docs/operations.md."""
    for name in ("open", "high", "low", "close", "volume"):
        if name in frame.columns and not frame[name].dtype.is_numeric():
            raise FileFormatError(f"{path}: bar column {name!r} is not numeric")
    seconds = bar_seconds if bar_seconds is not None else _common_gap(path, frame)
    length = pl.duration(milliseconds=round(seconds * 1000))
    rising = pl.col("close") >= pl.col("open")
    first = pl.when(rising).then(pl.col("low")).otherwise(pl.col("high"))
    second = pl.when(rising).then(pl.col("high")).otherwise(pl.col("low"))
    size = (pl.col("volume") / 4).cast(pl.Float64) if "volume" in frame.columns else None
    keep = [c for c in frame.columns if c not in ("open", "high", "low", "close", "volume")]
    parts = []
    for step, (price, at) in enumerate(
        (
            (pl.col("open"), pl.col("_event_time")),
            (first, pl.col("_event_time") + length / 3),
            (second, pl.col("_event_time") + length * 2 / 3),
            (pl.col("close"), pl.col("_event_time") + length - pl.duration(milliseconds=1)),
        )
    ):
        extra = [size.alias("size")] if size is not None else []
        parts.append(
            frame.select(
                *[pl.col(c) for c in keep if c != "_event_time"],
                price.cast(pl.Float64).alias("price"),
                at.dt.truncate("1ms").alias("_event_time"),
                pl.lit(step).alias("_step"),
                *extra,
            )
        )
    return pl.concat(parts).sort("_row", "_step").drop("_step")


def _common_gap(path: Path, frame: pl.DataFrame) -> float:
    times = frame.select("symbol", "_event_time").drop_nulls().sort("symbol", "_event_time")
    gaps = times.select(
        pl.col("_event_time").diff().over("symbol").dt.total_milliseconds().alias("gap")
    ).filter(pl.col("gap") > 0)["gap"]
    if gaps.is_empty():
        raise FileFormatError(
            f"{path}: one bar per symbol, so the bar length is unknown; pass --bar (e.g. 1m, 1d)"
        )
    return float(gaps.mode().sort()[0]) / 1000


def merged_by_time(
    sources: list[tuple[str, SortedRows, Callable[[dict[str, Any]], str | None]]],
) -> Iterator[SourceRecord]:
    """The rows of several files as records of their topics, merged in event-time order.

    ``sources`` are (topic, rows, key function); at equal times the earlier source comes first.
    """

    def tagged(
        order: int, topic: str, rows: SortedRows, key_of: Callable[..., str | None]
    ) -> Iterator[Any]:
        for sequence, (number, event_time, row) in enumerate(rows):
            sort_time = event_time.timestamp() if event_time is not None else math.inf
            yield sort_time, order, sequence, number, topic, key_of(row), row, event_time

    streams = [tagged(order, *source) for order, source in enumerate(sources)]
    # The offset is the row's place in its file, so that a rejected row can be found there.
    for _, _, _, offset, topic, key, row, event_time in heapq.merge(*streams):
        yield SourceRecord(
            topic=topic,
            partition=0,
            offset=offset,
            key=key.encode() if key is not None else None,
            value=json.dumps(row, default=str).encode(),
            timestamp_ms=int(event_time.timestamp() * 1000) if event_time is not None else None,
        )
