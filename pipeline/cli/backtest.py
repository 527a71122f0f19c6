"""``smart-alerts backtest``: the same dataflow over files, alerts to a file.

Rules come from a JSON or YAML list; ticks, flow and positions from Parquet or CSV files with the
message fields as columns. Market rows are merged in event-time order and fed to the very
dataflow the live job runs (parsing, dead letters, evaluation, personalization), so a backtest's
alert ids equal the live job's for the same input. Only the outputs differ: alerts are
collected and written to OUT instead of Kafka and the stores.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from connectors.archive import ArchivedRows, ArchiveStore
from connectors.files import FileFormatError, InputOptions, SortedRows, merged_by_time
from connectors.kafka import SourceRecord
from pipeline.cli.commands import CommandError, Echo, Summary
from pipeline.cli.report import alerts_per_day, alerts_per_rule, write_report
from pipeline.cli.rules import load_rules
from pipeline.config import Settings, Topics
from pipeline.messages import DeadLetter, OptionsFlow, Position, Rule, Tick, TriggeredAlert
from sinks.files import FORMATS, UnsupportedOutput, write_alerts
from sinks.kafka import OutgoingRecord

PROGRESS_WIDTH = 30
DEFAULT_MAX_REJECTED = "1%"
ROWS_NAMED = 5  # row numbers named for each reason of rejection


@dataclass(frozen=True)
class TickInput:
    """How to read the ticks file when it is not exactly the tick fields (docs/operations.md,
    Backtest input); flow and positions files get the time zone and the symbol clean-up."""

    tz: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    symbol: str | None = None
    bar_seconds: float | None = None


@dataclass(frozen=True)
class ArchiveInput:
    """Ticks and flow from the Parquet archive (connectors/archive.py) for the UTC dates
    ``start`` to ``end``, instead of files."""

    store: ArchiveStore
    start: date
    end: date

    def rows(self, key: str, required: tuple[str, ...], options: InputOptions) -> SortedRows:
        return ArchivedRows(self.store, key, self.start, self.end, required, options)


def from_archive(
    settings: Settings, root: str | None, start: date | None, end: date | None
) -> ArchiveInput | None:
    """The backtest's --archive, --from and --to, checked."""
    if root is None:
        if start is not None or end is not None:
            raise CommandError("--from and --to choose the dates of --archive; add --archive ROOT")
        return None
    if start is None or end is None:
        raise CommandError("--archive needs the dates to read: --from YYYY-MM-DD --to YYYY-MM-DD")
    if start > end:
        raise CommandError(f"--from {start} is after --to {end}")
    from pipeline.cli.archive import archive_store

    return ArchiveInput(archive_store(settings, root), start, end)


def parse_max_rejected(text: str) -> tuple[float, bool]:
    """``"10"`` (rows) or ``"1%"`` (a share of the rows read) as (limit, is_share)."""
    value = text.strip()
    share = value.endswith("%")
    try:
        limit = float(value[:-1] if share else value)
    except ValueError:
        limit = -1.0
    if not (limit >= 0 and (share or limit.is_integer())) or (share and limit > 100):
        raise FileFormatError(
            f"--max-rejected: {text!r} is not a row count or a percentage (e.g. 10 or 1%)"
        )
    return limit, share


def rejected_allowed(text: str, rows: int) -> int:
    """How many rejected rows a run of ``rows`` rows tolerates: a share is rounded up to whole
    rows, so that one bad row in a small file does not end its run."""
    limit, share = parse_max_rejected(text)
    return math.ceil(limit * rows / 100 - 1e-9) if share else int(limit)


@dataclass
class BacktestResult:
    alerts: list[TriggeredAlert]
    dead_letters: list[DeadLetter]
    rows: int
    seconds: float
    rules: list[Rule] = field(default_factory=list)
    # The accepted ticks' symbol, ts and price, for the report; kept only when asked for.
    prices: pl.DataFrame | None = None


@dataclass
class _PriceTap:
    """Keeps each tick record's symbol, time and price as it enters the dataflow, so the
    report draws what the dataflow read, after every input option the backtest applies."""

    topic: str
    offsets: list[int] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    prices: list[float] = field(default_factory=list)

    def __call__(self, records: Iterator[SourceRecord]) -> Iterator[SourceRecord]:
        for record in records:
            if record.topic == self.topic and record.value and record.timestamp_ms is not None:
                row = json.loads(record.value)
                price = row.get("price")
                if isinstance(price, int | float | str) and "symbol" in row:
                    try:
                        self.prices.append(float(price))
                    except ValueError:
                        pass  # a dead letter: the dataflow says why
                    else:
                        self.offsets.append(record.offset)
                        self.symbols.append(str(row["symbol"]))
                        self.times.append(record.timestamp_ms)
            yield record

    def frame(self, rejected: set[int]) -> pl.DataFrame:
        frame = pl.DataFrame(
            {
                "offset": self.offsets,
                "symbol": self.symbols,
                "ts": self.times,
                "price": self.prices,
            },
            schema={"offset": pl.Int64, "symbol": pl.String, "ts": pl.Int64, "price": pl.Float64},
        )
        return frame.filter(~pl.col("offset").is_in(list(rejected))).select(
            "symbol", pl.col("ts").cast(pl.Datetime("ms", "UTC")), "price"
        )


@dataclass
class _Collector:
    """Stands where the Kafka producer stands in the live job, keeping alerts and dead letters."""

    topics: tuple[str, str]
    alerts: list[TriggeredAlert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def write_batch(self, records: list[OutgoingRecord]) -> None:
        triggered, dlq = self.topics
        for record in records:
            if record.topic == triggered and record.value:
                self.alerts.append(TriggeredAlert.model_validate_json(record.value))
            elif record.topic == dlq and record.value:
                self.dead_letters.append(DeadLetter.model_validate_json(record.value))

    def close(self) -> None:
        pass


class Progress:
    """A one-line progress bar on stderr, redrawn at most every half second."""

    def __init__(self, total: int | None, echo_stream: object = sys.stderr) -> None:
        self.total = total
        self.stream = echo_stream
        self.started = time.monotonic()
        self.shown_at = 0.0

    def __call__(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.shown_at < 0.5:
            return
        self.shown_at = now
        rate = done / max(now - self.started, 1e-9)
        if self.total:
            filled = int(PROGRESS_WIDTH * min(done / self.total, 1.0))
            bar = "#" * filled + "-" * (PROGRESS_WIDTH - filled)
            line = f"\r[{bar}] {done / self.total:4.0%} {done:,}/{self.total:,} rows {rate:,.0f}/s"
        else:
            line = f"\r{done:,} rows {rate:,.0f}/s"
        print(line, end="\n" if final else "", file=self.stream, flush=True)  # type: ignore[call-overload]


def run_backtest(
    settings: Settings,
    *,
    rules: Path,
    ticks: Path | None,
    flow: Path | None = None,
    positions: Path | None = None,
    archive: ArchiveInput | None = None,
    progress: bool = True,
    user_id: str | None = None,
    keep_prices: bool = False,
    tick_input: TickInput | None = None,
    echo: Echo | None = None,
) -> BacktestResult:
    from pipeline.dataflow import Writers, file_inputs, run_in_this_thread

    topics = settings.topics
    rule_list = load_rules(rules, user_id=user_id)
    how = tick_input or TickInput()
    ticks_options = InputOptions(
        fields=frozenset(Tick.model_fields),
        symbol_fields=("symbol", "underlying"),
        tz=how.tz,
        columns=how.columns,
        symbol=how.symbol,
        bars=True,
        bar_seconds=how.bar_seconds,
    )
    # (topic, file or archive, the columns it cannot do without: ts and the message key's, key
    # function, how to read it)
    sources: list[tuple[str, Path | ArchiveInput | None, tuple[str, ...], Any, InputOptions]] = [
        (
            topics.positions,
            positions,
            ("user_id", "symbol"),
            _position_key,
            InputOptions(
                fields=frozenset(Position.model_fields),
                symbol_fields=("symbol", "underlying"),
                tz=how.tz,
            ),
        ),
        (topics.ticks, archive or ticks, ("symbol",), _field("symbol"), ticks_options),
        (
            topics.options_flow,
            archive or flow,
            ("underlying",),
            _field("underlying"),
            InputOptions(
                fields=frozenset(OptionsFlow.model_fields),
                symbol_fields=("underlying", "contract"),
                tz=how.tz,
            ),
        ),
    ]
    # Every file is read and checked here, before the dataflow: an error raised inside it
    # reaches the operator as a Rust panic.
    present = [
        (topic, _input_rows(topic, path, topics, required, options), key)
        for topic, path, required, key, options in sources
        if path is not None
    ]
    if archive is not None and not any(len(rows) for topic, rows, _ in present):
        raise CommandError(
            f"the archive at {archive.store.root} has no ticks or flow dated {archive.start} "
            f"to {archive.end}"
        )
    for _, source, _ in present:
        for notice in source.notices:
            (echo or _quiet)(notice)
    total = sum(len(source) for _, source, _ in present)
    bar = Progress(total) if progress else None
    collector = _Collector((topics.triggered, topics.dlq))

    def reference() -> Iterator[SourceRecord]:
        return iter(_rule_records(topics.rules, rule_list))

    tap = _PriceTap(topics.ticks) if keep_prices else None

    def market() -> Iterator[SourceRecord]:
        records = merged_by_time(present)
        return tap(records) if tap is not None else records

    inputs = file_inputs(settings, reference, market, progress=bar)
    started = time.monotonic()
    run_in_this_thread(settings, Writers(records=lambda: collector), inputs)
    seconds = time.monotonic() - started
    rows = total
    if bar is not None:
        bar(rows, final=True)
    alerts = sorted(collector.alerts, key=lambda a: (a.triggered_at, a.alert_id))
    prices = None
    if tap is not None:
        rejected = {d.offset for d in collector.dead_letters if d.source_topic == topics.ticks}
        prices = tap.frame(rejected)
    return BacktestResult(alerts, collector.dead_letters, rows, seconds, rule_list, prices)


def _quiet(text: str) -> None:
    pass


def _input_rows(
    topic: str,
    source: Path | ArchiveInput,
    topics: Topics,
    required: tuple[str, ...],
    options: InputOptions,
) -> SortedRows:
    if isinstance(source, Path):
        return SortedRows(source, required, options)
    key = "ticks" if topic == topics.ticks else "options_flow"
    return source.rows(key, required, options)


def _rule_records(topic: str, rules: list[Rule]) -> list[SourceRecord]:
    return [
        SourceRecord(topic, 0, offset, rule.id.encode(), rule.model_dump_json().encode(), None)
        for offset, rule in enumerate(rules)
    ]


def _field(name: str):  # type: ignore[no-untyped-def]
    return lambda row: str(row[name]) if name in row else None


def _position_key(row: dict[str, object]) -> str | None:
    if "user_id" in row and "symbol" in row:
        return f"{row['user_id']}:{row['symbol']}"
    return None


def summarize(result: BacktestResult, out: Path) -> Summary:
    summary = Summary()
    summary.add("rows read", f"{result.rows:,}", f"{result.seconds:.1f} s")
    summary.add(
        "rows rejected", len(result.dead_letters), "see below" if result.dead_letters else ""
    )
    for rule_id, count in alerts_per_rule(result.alerts):
        summary.add(f"alerts: {rule_id}", count, "")
    for day, count in alerts_per_day(result.alerts):
        summary.add(f"alerts on {day}", count, "")
    summary.add("alerts", len(result.alerts), str(out))
    return summary


def backtest_command(
    settings: Settings,
    *,
    rules: Path,
    ticks: Path | None,
    flow: Path | None,
    positions: Path | None,
    out: Path,
    archive: ArchiveInput | None = None,
    echo: Echo = print,
    user_id: str | None = None,
    report: Path | None = None,
    tick_input: TickInput | None = None,
    max_rejected: str = DEFAULT_MAX_REJECTED,
) -> BacktestResult:
    if out.suffix.lower() not in FORMATS:
        raise UnsupportedOutput(f"{out}: write .parquet, .csv or .jsonl")
    if archive is not None and (ticks is not None or flow is not None):
        raise CommandError("--archive reads the ticks and the flow: leave out --ticks and --flow")
    if archive is None and ticks is None:
        raise CommandError("name the ticks: --ticks FILE, or --archive ROOT --from D --to D")
    parse_max_rejected(max_rejected)  # a bad value is refused before the run, not after it
    if report is not None and report.suffix.lower() not in (".html", ".htm"):
        raise UnsupportedOutput(f"{report}: the report is an HTML page; name it .html")
    result = run_backtest(
        settings,
        rules=rules,
        ticks=ticks,
        flow=flow,
        positions=positions,
        archive=archive,
        user_id=user_id,
        keep_prices=report is not None,
        tick_input=tick_input,
        echo=echo,
    )
    write_alerts(result.alerts, out)
    summary = summarize(result, out)
    if report is not None and result.prices is not None:
        write_report(
            report,
            alerts=result.alerts,
            rules=result.rules,
            prices=result.prices,
            rows=result.rows,
            seconds=result.seconds,
        )
        summary.add("report", len(result.alerts), str(report))
    echo(summary.render())
    for line in rejection_reasons(result.dead_letters):
        echo(line)
    allowed = rejected_allowed(max_rejected, result.rows)
    rejected = len(result.dead_letters)
    if rejected and (rejected > allowed or rejected >= result.rows):
        raise CommandError(
            f"{rejected:,} of {result.rows:,} rows rejected, more than --max-rejected "
            f"{max_rejected} allows ({allowed:,}); the reasons are listed above"
        )
    return result


def rejection_reasons(letters: list[DeadLetter]) -> list[str]:
    """One line per file and reason: how many rows, and the first few row numbers."""
    groups: dict[tuple[str, str], list[int]] = {}
    for letter in letters:
        groups.setdefault((letter.source_topic, letter.error), []).append(letter.offset)
    lines = []
    for (topic, error), offsets in sorted(groups.items(), key=lambda item: -len(item[1])):
        offsets.sort()
        named = ", ".join(str(o) for o in offsets[:ROWS_NAMED])
        more = f" and {len(offsets) - ROWS_NAMED:,} more" if len(offsets) > ROWS_NAMED else ""
        where = f"row {named}" if len(offsets) == 1 else f"{len(offsets):,} rows ({named}{more})"
        lines.append(f"rejected {topic} {where}: {error}")
    return lines
