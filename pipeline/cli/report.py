"""``backtest --report``: one self-contained HTML page of where a backtest's alerts fell.

A plotly chart with one panel per symbol: the tick price, every alert as a marker at its time
and price (hover: rule id, name, priority), and the indicators the rules read where the ticks
give them cheaply (threshold levels, SMA lines, Bollinger bands, the highest/lowest of the
previous closes); then the per-rule and per-day tables whose counts the backtest's summary
prints. plotly.js is inlined, so the page loads nothing from the network. docs/operations.md,
"Backtest report", says what is drawn.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from pipeline.evaluate.specs import (
    BollingerBreakLower,
    BollingerBreakUpper,
    NewHigh,
    NewLow,
    PriceAbove,
    PriceBelow,
    PriceCrossesAbove,
    PriceCrossesAboveSma,
    PriceCrossesBelow,
    PriceCrossesBelowSma,
    SmaCrossDown,
    SmaCrossUp,
    iter_conditions,
)
from pipeline.messages import Rule, TriggeredAlert, format_timestamp

# A browser draws a few thousand points per line smoothly; a day of ticks is far more.
MAX_POINTS = 4000
# Beyond this many panels the page is too long to read; symbols with alerts always get one.
MAX_PANELS = 30
# A level further than this factor outside a symbol's price range would flatten its panel.
LEVEL_MARGIN = 1.25
PANEL_HEIGHT = 320
CHART_ID = "backtest-chart"
PRIORITY_COLORS = {"LOW": "#7f7f7f", "MEDIUM": "#1f77b4", "HIGH": "#ff7f0e", "CRITICAL": "#d62728"}
_LEVELS = (PriceAbove, PriceBelow, PriceCrossesAbove, PriceCrossesBelow)


def alerts_per_rule(alerts: list[TriggeredAlert]) -> list[tuple[str, int]]:
    """Alerts per rule id, sorted by id: the summary's and the report's table."""
    return sorted(Counter(a.rule_id for a in alerts).items())


def alerts_per_day(alerts: list[TriggeredAlert]) -> list[tuple[str, int]]:
    """Alerts per UTC day of ``triggered_at``, oldest first."""
    return sorted(Counter(a.triggered_at.date().isoformat() for a in alerts).items())


@dataclass
class _Panel:
    """What one symbol's panel draws: traces and the notes that explain them."""

    traces: list[go.Scatter] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_report(
    path: Path,
    *,
    alerts: list[TriggeredAlert],
    rules: list[Rule],
    prices: pl.DataFrame,
    rows: int,
    seconds: float,
) -> None:
    """Writes the page. ``prices`` has the accepted ticks: ``symbol``, ``ts`` (UTC), ``price``."""
    prices = prices.sort("symbol", "ts", maintain_order=True)
    alert_symbols = {a.symbol for a in alerts}
    tick_symbols = sorted(set(prices["symbol"].unique().to_list()))
    others = [s for s in tick_symbols if s not in alert_symbols]
    room = max(MAX_PANELS - len(alert_symbols), 0)
    symbols = sorted(alert_symbols | set(others[:room]))
    notes = ["Times are UTC."]
    if len(others) > room:
        notes.append(
            f"{len(others) - room} symbols with ticks but no alerts are not drawn "
            f"(at most {MAX_PANELS} panels)."
        )
    rules_by_id = {rule.id: rule for rule in rules}
    marker_prices = _alert_prices(alerts, prices)
    panels = [
        _panel(
            symbol,
            prices.filter(pl.col("symbol") == symbol),
            [r for r in rules if r.is_wildcard or symbol in r.scope],
            [a for a in alerts if a.symbol == symbol],
            marker_prices,
            rules_by_id,
        )
        for symbol in symbols
    ]
    figure = _figure(symbols, panels)
    for symbol, panel in zip(symbols, panels, strict=True):
        notes.extend(f"{symbol}: {note}" for note in panel.notes)
    page = _page(figure, notes, alerts, rules_by_id, rows, seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")


def _alert_prices(alerts: list[TriggeredAlert], prices: pl.DataFrame) -> dict[str, float]:
    """Each alert's marker height: the symbol's last tick price at or before the alert, else
    its first after it, else the price the alert carries (a flow alert on a symbol without
    ticks)."""
    if not alerts:
        return {}
    wanted = pl.DataFrame(
        {
            "alert_id": [a.alert_id for a in alerts],
            "symbol": [a.symbol for a in alerts],
            "ts": [a.triggered_at for a in alerts],
        },
        schema={"alert_id": pl.String, "symbol": pl.String, "ts": pl.Datetime("ms", "UTC")},
    ).sort("ts")
    found: dict[str, float | None] = {}
    later: dict[str, float | None] = {}
    # One join per symbol: with ``by`` polars cannot check that ``ts`` is sorted, and warns.
    for symbol in sorted({a.symbol for a in alerts}):
        mine = wanted.filter(pl.col("symbol") == symbol).drop("symbol")
        ticks = prices.filter(pl.col("symbol") == symbol).select("ts", "price").sort("ts")
        before = mine.join_asof(ticks, on="ts", strategy="backward")
        after = mine.join_asof(ticks, on="ts", strategy="forward")
        found.update(zip(before["alert_id"], before["price"], strict=True))
        later.update(zip(after["alert_id"], after["price"], strict=True))
    heights: dict[str, float] = {}
    for alert in alerts:
        height = found.get(alert.alert_id)
        if height is None:
            height = later.get(alert.alert_id)
        if height is None:
            carried = alert.values.get("underlying_price", alert.values.get("price"))
            height = float(carried) if isinstance(carried, int | float) else None
        if height is not None:
            heights[alert.alert_id] = height
    return heights


def _decimated(series: pl.DataFrame) -> pl.DataFrame:
    """At most MAX_POINTS rows: the lowest and highest tick of each of MAX_POINTS / 2 equal
    runs of ticks, in time order, so spikes survive the thinning."""
    if series.height <= MAX_POINTS:
        return series
    buckets = MAX_POINTS // 2
    indexed = series.with_row_index("i").with_columns(
        (pl.col("i") * buckets // series.height).alias("bucket")
    )
    ends = indexed.group_by("bucket").agg(
        pl.col("i").sort_by("price").first().alias("low"),
        pl.col("i").sort_by("price").last().alias("high"),
    )
    keep = sorted(set(ends["low"].to_list()) | set(ends["high"].to_list()))
    return series[keep]


def _closes(series: pl.DataFrame, timeframe: str) -> pl.DataFrame:
    """Bar closes (the last price of each UTC bar with ticks), placed at the bar's end."""
    return (
        series.with_columns(pl.col("ts").dt.truncate(timeframe).alias("bar"))
        .group_by("bar", maintain_order=True)
        .agg(pl.col("price").last().alias("close"))
        .with_columns((pl.col("bar").dt.offset_by(timeframe)).alias("end"))
    )


def _naive(column: pl.Series) -> list[Any]:
    """UTC times without their zone: plotly.js reads a zone suffix as local time."""
    return column.dt.convert_time_zone("UTC").dt.replace_time_zone(None).to_list()


def _panel(
    symbol: str,
    series: pl.DataFrame,
    rules: list[Rule],
    alerts: list[TriggeredAlert],
    marker_prices: dict[str, float],
    rules_by_id: dict[str, Rule],
) -> _Panel:
    panel = _Panel()
    if series.height:
        drawn = _decimated(series)
        if drawn.height < series.height:
            panel.notes.append(
                f"{series.height:,} ticks drawn as {drawn.height:,} points (the lowest and "
                f"highest tick of each of {MAX_POINTS // 2:,} equal runs of ticks)."
            )
        panel.traces.append(
            go.Scatter(
                x=_naive(drawn["ts"]),
                y=drawn["price"].to_list(),
                mode="lines",
                name=f"{symbol} price",
                line={"color": "#333333", "width": 1},
                meta={"kind": "price", "symbol": symbol},
                hovertemplate="%{x}<br>%{y}<extra>" + html.escape(symbol) + "</extra>",
            )
        )
        _indicators(panel, symbol, series, rules)
    else:
        panel.notes.append("no ticks; alerts drawn at the price they carry.")
    _markers(panel, symbol, alerts, marker_prices, rules_by_id)
    return panel


def _indicators(panel: _Panel, symbol: str, series: pl.DataFrame, rules: list[Rule]) -> None:
    """Adds a line per distinct indicator the rules read, naming the rules that read it."""
    lines: dict[tuple[Any, ...], list[str]] = {}
    skipped: dict[str, set[str]] = {}
    for rule in rules:
        for leaf in iter_conditions(rule.conditions):
            keys: list[tuple[Any, ...]]
            if isinstance(leaf, _LEVELS):
                keys = [("level", leaf.threshold)]
            elif isinstance(leaf, PriceCrossesAboveSma | PriceCrossesBelowSma):
                keys = [("sma", leaf.timeframe, leaf.period)]
            elif isinstance(leaf, SmaCrossUp | SmaCrossDown):
                keys = [("sma", leaf.timeframe, leaf.fast), ("sma", leaf.timeframe, leaf.slow)]
            elif isinstance(leaf, BollingerBreakUpper | BollingerBreakLower):
                keys = [("bollinger", leaf.timeframe, leaf.period, leaf.stddev)]
            elif isinstance(leaf, NewHigh | NewLow):
                keys = [("extreme", leaf.timeframe, leaf.period, isinstance(leaf, NewHigh))]
            else:
                skipped.setdefault(leaf.type, set()).add(rule.id)
                keys = []
            for key in keys:
                readers = lines.setdefault(key, [])
                if rule.id not in readers:
                    readers.append(rule.id)
    low, high = float(series["price"].min()), float(series["price"].max())  # type: ignore[arg-type]
    first, last = _naive(series["ts"][0:1])[0], _naive(series["ts"][-1:])[0]
    for key, readers in lines.items():
        who = ", ".join(readers)
        if key[0] == "level":
            level = float(key[1])
            if not low / LEVEL_MARGIN <= level <= high * LEVEL_MARGIN:
                panel.notes.append(
                    f"level {level:g} ({who}) is far outside the price range "
                    f"{low:g}-{high:g} and is not drawn."
                )
                continue
            _line(panel, [first, last], [level, level], f"level {level:g}", who, "dash")
            continue
        closes = _closes(series, key[1])
        x = _naive(closes["end"])
        if key[0] == "sma":
            y = closes["close"].rolling_mean(key[2]).to_list()
            _line(panel, x, y, f"SMA {key[2]} ({key[1]})", who, "solid")
        elif key[0] == "bollinger":
            mean = closes["close"].rolling_mean(key[2])
            width = closes["close"].rolling_std(key[2], ddof=0) * key[3]
            name = f"Bollinger {key[2]}, {key[3]:g} sd ({key[1]})"
            _line(panel, x, (mean + width).to_list(), f"{name} upper", who, "dot")
            _line(panel, x, (mean - width).to_list(), f"{name} lower", who, "dot")
        else:
            previous = closes["close"].shift(1)
            extreme = previous.rolling_max(key[2]) if key[3] else previous.rolling_min(key[2])
            word = "highest" if key[3] else "lowest"
            _line(panel, x, extreme.to_list(), f"{word} of {key[2]} closes ({key[1]})", who, "dot")
    for kind, ids in sorted(skipped.items()):
        panel.notes.append(f"{kind} ({', '.join(sorted(ids))}) is not drawn.")


def _line(panel: _Panel, x: list[Any], y: list[Any], name: str, rules: str, dash: str) -> None:
    panel.traces.append(
        go.Scatter(
            x=x,
            y=y,
            mode="lines",
            name=name,
            line={"width": 1, "dash": dash},
            meta={"kind": "indicator", "name": name, "rules": rules},
            hovertemplate="%{x}<br>%{y:.4f}<extra>" + html.escape(f"{name}: {rules}") + "</extra>",
        )
    )


def _markers(
    panel: _Panel,
    symbol: str,
    alerts: list[TriggeredAlert],
    marker_prices: dict[str, float],
    rules_by_id: dict[str, Rule],
) -> None:
    """One marker trace per rule, its points carrying the alert's identity in ``customdata``."""
    by_rule: dict[str, list[TriggeredAlert]] = {}
    for alert in alerts:
        by_rule.setdefault(alert.rule_id, []).append(alert)
    unplaced = 0
    for rule_id, fired in sorted(by_rule.items()):
        placed = [a for a in fired if a.alert_id in marker_prices]
        unplaced += len(fired) - len(placed)
        if not placed:
            continue
        rule = rules_by_id.get(rule_id)
        name = rule.name if rule is not None else rule_id
        priority = fired[0].priority.value
        panel.traces.append(
            go.Scatter(
                x=[a.triggered_at.replace(tzinfo=None) for a in placed],
                y=[marker_prices[a.alert_id] for a in placed],
                mode="markers",
                name=f"{rule_id} ({priority})",
                marker={
                    "size": 10,
                    "symbol": "triangle-down",
                    "color": PRIORITY_COLORS.get(priority, "#000000"),
                    "line": {"width": 1, "color": "#000000"},
                },
                meta={"kind": "alerts", "symbol": symbol, "rule_id": rule_id},
                customdata=[
                    [
                        a.alert_id,
                        a.rule_id,
                        name,
                        a.priority.value,
                        a.symbol,
                        format_timestamp(a.triggered_at),
                    ]
                    for a in placed
                ],
                hovertemplate="<b>%{customdata[1]}</b>: %{customdata[2]}<br>"
                "priority %{customdata[3]}<br>%{customdata[5]}<br>price %{y}<extra></extra>",
            )
        )
    if unplaced:
        panel.notes.append(f"{unplaced} alerts have no price to place them at and are not drawn.")


def _figure(symbols: list[str], panels: list[_Panel]) -> go.Figure:
    rows = max(len(symbols), 1)
    figure = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        subplot_titles=symbols or ["no ticks and no alerts"],
        vertical_spacing=min(0.08, 0.5 / rows),
    )
    for row, (symbol, panel) in enumerate(zip(symbols, panels, strict=True), start=1):
        for trace in panel.traces:
            trace.update(legendgroup=symbol, legendgrouptitle_text=symbol)
            figure.add_trace(trace, row=row, col=1)
    figure.update_layout(
        height=PANEL_HEIGHT * rows + 120,
        hovermode="closest",
        legend={"groupclick": "toggleitem"},
        margin={"l": 60, "r": 20, "t": 60, "b": 40},
    )
    return figure


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _page(
    figure: go.Figure,
    notes: list[str],
    alerts: list[TriggeredAlert],
    rules_by_id: dict[str, Rule],
    rows: int,
    seconds: float,
) -> str:
    per_rule_rows = []
    for rule_id, count in alerts_per_rule(alerts):
        fired = [a for a in alerts if a.rule_id == rule_id]
        rule = rules_by_id.get(rule_id)
        per_rule_rows.append(
            [
                rule_id,
                rule.name if rule is not None else "",
                fired[0].priority.value,
                ", ".join(sorted({a.symbol for a in fired})),
                str(count),
                format_timestamp(min(a.triggered_at for a in fired)),
                format_timestamp(max(a.triggered_at for a in fired)),
            ]
        )
    per_day_rows = [[day, str(count)] for day, count in alerts_per_day(alerts)]
    chart = figure.to_html(
        full_html=False, include_plotlyjs=True, div_id=CHART_ID, config={"responsive": True}
    )
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Backtest report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
</style></head>
<body>
<h1>Backtest report</h1>
<p>{rows:,} rows read in {seconds:.1f} s; {len(alerts):,} alerts from {len(rules_by_id):,} rules.
Markers are alerts at the symbol's price (hover for the rule and priority); lines are the price
and the indicators the rules read. Click a legend entry to hide or show it.</p>
<ul>{items}</ul>
{chart}
<h2>Alerts per rule</h2>
{_table(["rule", "name", "priority", "symbols", "alerts", "first", "last"], per_rule_rows)}
<h2>Alerts per day (UTC)</h2>
{_table(["day", "alerts"], per_day_rows)}
</body></html>
"""
