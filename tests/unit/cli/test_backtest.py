"""Backtests over files: a real daily series against TA-Lib, and the output formats."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from pipeline.cli.backtest import backtest_command, run_backtest
from pipeline.config import load_settings

talib = pytest.importorskip("talib")


def goog() -> pl.DataFrame:
    """Daily GOOG 2004-2013, a real series shipped inside the `backtesting` package."""
    path = files("backtesting").joinpath("test/GOOG.csv")
    frame = pl.read_csv(str(path)).rename({"": "date"})
    return frame.with_columns(pl.col("date").str.to_date())


def write_daily_ticks(frame: pl.DataFrame, path: Path) -> None:
    pl.DataFrame(
        {
            "symbol": ["GOOG"] * frame.height,
            "ts": [datetime.combine(d, datetime.min.time(), UTC) for d in frame["date"]],
            "price": frame["Close"],
            "size": frame["Volume"].cast(pl.Float64),
        }
    ).write_parquet(path)


def rule(rule_id: str, conditions: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rule_id,
        "user_id": "u-quant",
        "name": rule_id,
        "symbol": "GOOG",
        "cooldown_seconds": 0,
        "conditions": conditions,
    }


def edges(condition: np.ndarray) -> set[int]:
    """Bars where a level condition goes from false (or undefined) to true."""
    previous = False
    out = set()
    for index, value in enumerate(condition):
        value = bool(value)
        if value and not previous:
            out.add(index)
        previous = value
    return out


def crosses(a: np.ndarray, b: np.ndarray, *, up: bool) -> set[int]:
    out = set()
    for i in range(1, len(a)):
        values = (a[i - 1], a[i], b[i - 1], b[i])
        if any(np.isnan(v) for v in values):
            continue
        if (up and a[i - 1] <= b[i - 1] and a[i] > b[i]) or (
            not up and a[i - 1] >= b[i - 1] and a[i] < b[i]
        ):
            out.add(i)
    return out


def test_indicator_alerts_on_a_real_daily_series_match_ta_lib(tmp_path: Path) -> None:
    frame = goog()
    ticks, rules_path = tmp_path / "goog.parquet", tmp_path / "rules.json"
    write_daily_ticks(frame, ticks)
    rules = [
        rule("rsi-over", {"type": "rsi_above", "threshold": 70, "period": 14, "timeframe": "1d"}),
        rule("rsi-under", {"type": "rsi_below", "threshold": 30, "period": 14, "timeframe": "1d"}),
        rule("sma-up", {"type": "price_crosses_above_sma", "period": 20, "timeframe": "1d"}),
        rule("sma-down", {"type": "price_crosses_below_sma", "period": 20, "timeframe": "1d"}),
        rule("golden", {"type": "sma_cross_up", "fast": 10, "slow": 30, "timeframe": "1d"}),
        rule(
            "bb-up", {"type": "bollinger_break_upper", "period": 20, "stddev": 2, "timeframe": "1d"}
        ),
        rule(
            "bb-down",
            {"type": "bollinger_break_lower", "period": 20, "stddev": 2, "timeframe": "1d"},
        ),
    ]
    rules_path.write_text(json.dumps(rules))

    result = run_backtest(load_settings(None), rules=rules_path, ticks=ticks, progress=False)

    close = frame["Close"].to_numpy().astype(float)
    rsi = talib.RSI(close, timeperiod=14)
    sma20 = talib.SMA(close, timeperiod=20)
    upper, _, lower = talib.BBANDS(close, timeperiod=20, nbdevup=2, nbdevdn=2, matype=0)
    expected_bars = {
        "rsi-over": edges(np.nan_to_num(rsi, nan=0) > 70),
        "rsi-under": edges(np.nan_to_num(rsi, nan=100) < 30),
        "sma-up": crosses(close, sma20, up=True),
        "sma-down": crosses(close, sma20, up=False),
        "golden": crosses(talib.SMA(close, 10), talib.SMA(close, 30), up=True),
        "bb-up": edges(close > np.nan_to_num(upper, nan=np.inf)),
        "bb-down": edges(close < np.nan_to_num(lower, nan=-np.inf)),
    }
    days = list(frame["date"])

    def bar_end(index: int) -> datetime:
        return datetime.combine(days[index], datetime.min.time(), UTC) + timedelta(days=1)

    expected = {(rule_id, bar_end(i)) for rule_id, bars in expected_bars.items() for i in bars}
    got = {(a.rule_id, a.triggered_at) for a in result.alerts}
    assert all(len(bars) >= 3 for bars in expected_bars.values()), expected_bars
    assert got == expected
    assert len(got) > 100


def test_outputs_in_every_format_with_rejected_rows(tmp_path: Path) -> None:
    ticks = tmp_path / "ticks.csv"
    ticks.write_text(
        "symbol,ts,price\n"
        "AAPL,2026-01-05T14:30:00Z,199\n"
        "AAPL,2026-01-05T14:30:01Z,-1\n"  # rejected: negative price
        "AAPL,2026-01-05T14:30:02Z,201\n"
    )
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            [rule("r-1", {"type": "price_crosses_above", "threshold": 200}) | {"symbol": "AAPL"}]
        )
    )
    printed: list[str] = []
    for name in ("out.parquet", "out.csv", "out.jsonl"):
        result = backtest_command(
            load_settings(None),
            rules=rules,
            ticks=ticks,
            flow=None,
            positions=None,
            out=tmp_path / name,
            echo=printed.append,
        )
        assert len(result.alerts) == 1 and len(result.dead_letters) == 1
    parquet = pl.read_parquet(tmp_path / "out.parquet")
    assert parquet.columns == [
        "alert_id",
        "rule_id",
        "user_id",
        "symbol",
        "priority",
        "triggered_at",
        "condition_types",
        "values",
    ]
    row = parquet.row(0, named=True)
    assert row["triggered_at"] == datetime(2026, 1, 5, 14, 30, 2, tzinfo=UTC)
    assert row["condition_types"] == ["price_crosses_above"]
    assert json.loads(row["values"]) == {
        "previous_price": 199.0,
        "price": 201.0,
        "threshold": 200.0,
    }
    csv = pl.read_csv(tmp_path / "out.csv").row(0, named=True)
    assert csv["triggered_at"] == "2026-01-05T14:30:02.000Z"
    assert json.loads(csv["condition_types"]) == ["price_crosses_above"]
    jsonl = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert jsonl["alert_id"] == row["alert_id"] == csv["alert_id"]
    assert jsonl["values"]["price"] == 201.0
    assert any("rejected market.ticks row 1: invalid Tick: price" in line for line in printed)
    assert any("| alerts on 2026-01-05" in line for line in printed)


def test_flow_and_positions_files_join_the_time_order(tmp_path: Path) -> None:
    ticks = tmp_path / "ticks.csv"
    ticks.write_text(
        "symbol,ts,price\nAAPL,2026-01-05T14:30:00Z,100\nAAPL,2026-01-05T14:31:00Z,112\n"
    )
    positions = tmp_path / "positions.csv"
    positions.write_text(
        "user_id,symbol,quantity,avg_price,ts\nu-quant,AAPL,10,100,2026-01-05T14:00:00Z\n"
    )
    flow = tmp_path / "flow.parquet"
    pl.DataFrame(
        {
            "id": ["f1"],
            "ts": ["2026-01-05T14:30:30Z"],
            "underlying": ["AAPL"],
            "contract": ["AAPL  260116C00200000"],
            "right": ["C"],
            "strike": [200.0],
            "expiry": ["2026-01-16"],
            "price": [2.5],
            "size": [1000],
            "side": ["ask"],
            "trade_type": ["sweep"],
        }
    ).write_parquet(flow)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "- {id: take-profit, user_id: u-quant, name: tp, symbol: AAPL, cooldown_seconds: 0,\n"
        "   conditions: {type: position_pnl_pct_above, threshold: 10}}\n"
        "- {id: sweeps, user_id: u-quant, name: sw, symbol: AAPL,\n"
        "   conditions: {type: flow_sweep, min_premium: 100000}}\n"
    )
    result = run_backtest(
        load_settings(None),
        rules=rules,
        ticks=ticks,
        flow=flow,
        positions=positions,
        progress=False,
    )
    assert [(a.rule_id, a.triggered_at.minute, a.triggered_at.second) for a in result.alerts] == [
        ("sweeps", 30, 30),
        ("take-profit", 31, 0),
    ]


def test_backtest_verb_reads_rule_text_and_writes_jsonl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli.main import main

    ticks = tmp_path / "ticks.csv"
    ticks.write_text(
        "symbol,ts,price\nAAPL,2026-01-05T14:30:00Z,199\nAAPL,2026-01-05T14:30:02Z,201\n"
    )
    rules = tmp_path / "rules.txt"
    rules.write_text("# one rule per line\nAAPL price crosses above 200 id r-text\n")
    out = tmp_path / "alerts.jsonl"
    code = main(
        [
            "backtest",
            "--rules",
            str(rules),
            "--ticks",
            str(ticks),
            "--out",
            str(out),
            "--user",
            "u-1",
        ]
    )
    assert code == 0
    (line,) = out.read_text().splitlines()
    assert json.loads(line)["rule_id"] == "r-text"
    assert "| alerts: r-text" in capsys.readouterr().out
    assert (
        main(
            [
                "backtest",
                "--rules",
                str(rules),
                "--ticks",
                str(ticks),
                "--out",
                str(tmp_path / "a.xlsx"),
            ]
        )
        == 2
    )
