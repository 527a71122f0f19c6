"""Backtest input as traders have it: bar files, naive timestamps, extra and renamed columns,
one-symbol files, lower-case symbols, and a run whose rows are rejected beyond a threshold.
Each case runs the real `smart-alerts backtest` and reads the alerts file it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

SMART_ALERTS = Path(sys.executable).with_name("smart-alerts")
RULE = {
    "id": "r-200",
    "user_id": "u-1",
    "name": "over 200",
    "symbol": "MSFT",
    "cooldown_seconds": 0,
    "conditions": {"type": "price_crosses_above", "threshold": 200},
}


def backtest(tmp_path: Path, ticks: Path, *options: str) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([RULE]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMART_ALERTS_", "RUST_"))}
    return subprocess.run(
        [SMART_ALERTS, "backtest", "--rules", str(rules), "--ticks", str(ticks)]
        + ["--out", str(tmp_path / "out.jsonl"), *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def alerts(tmp_path: Path) -> list[tuple[str, str, float]]:
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    return [(a["symbol"], a["triggered_at"], a["values"]["price"]) for a in map(json.loads, lines)]


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line an input error is, with no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "panicked" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("smart-alerts:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


BARS = (
    "2026-01-05 09:30:00,199,199.5,198,199.2,1000\n"
    "2026-01-05 09:31:00,199.2,201,199,200.5,800\n"  # rising: open, low, high, close
    "2026-01-05 09:32:00,200.5,200.6,199,199.1,500\n"  # falling: open, high, low, close
    "2026-01-05 09:33:00,199.1,202,198.5,199,400\n"  # falling: the high comes first
)


@pytest.mark.parametrize("header", ["timestamp,o,h,l,c,v", "date,open,high,low,close,volume"])
def test_ohlcv_bars_expand_to_four_ticks_in_the_bars_direction(tmp_path: Path, header: str) -> None:
    ticks = tmp_path / "bars.csv"
    ticks.write_text(header + "\n" + BARS)
    result = backtest(tmp_path, ticks, "--tz", "America/New_York", "--symbol", "msft")
    assert result.returncode == 0, result.stderr
    assert "OHLCV bars, expanded to 4 ticks a bar" in result.stdout
    # 09:31 ET bar rises, so its high (201) is its third tick, at two thirds of the minute;
    # 09:33 ET falls, so its high (202) is its second tick, at a third (the 199.0 low before
    # it came from 09:32's close at 09:32:59.999 ET).
    assert alerts(tmp_path) == [
        ("MSFT", "2026-01-05T14:31:40.000Z", 201.0),
        ("MSFT", "2026-01-05T14:33:20.000Z", 202.0),
    ]


def test_naive_timestamps_need_tz_in_csv_and_parquet(tmp_path: Path) -> None:
    csv = tmp_path / "ticks.csv"
    csv.write_text("symbol,ts,price\nMSFT,2026-01-05 09:30:00,199\nMSFT,2026-01-05 09:31:00,201\n")
    parquet = tmp_path / "ticks.parquet"
    pl.DataFrame(
        {
            "symbol": ["MSFT", "MSFT"],
            "ts": [datetime(2026, 1, 5, 9, 30), datetime(2026, 1, 5, 9, 31)],
            "price": [199.0, 201.0],
        }
    ).write_parquet(parquet)
    for ticks in (csv, parquet):
        line = error_line(backtest(tmp_path, ticks))
        assert str(ticks) in line and "without a zone" in line and "--tz" in line
        assert not (tmp_path / "out.jsonl").exists()
        result = backtest(tmp_path, ticks, "--tz", "America/New_York")
        assert result.returncode == 0, result.stderr
        # 09:31 in New York in January is 14:31 UTC, not 09:31 UTC.
        assert alerts(tmp_path) == [("MSFT", "2026-01-05T14:31:00.000Z", 201.0)]
        (tmp_path / "out.jsonl").unlink()
    assert "is not a time zone" in error_line(backtest(tmp_path, csv, "--tz", "Mars/Olympus"))


def test_extra_columns_mapping_and_symbol_normalisation(tmp_path: Path) -> None:
    ticks = tmp_path / "ticks.csv"
    ticks.write_text(
        "when,sym,c,exchange,note\n"
        "2026-01-05T14:30:00Z, msft ,199,XNAS,a\n"
        "2026-01-05T14:31:00Z,msft,201,XNAS,b\n"
    )
    result = backtest(tmp_path, ticks, "--columns", "ts=when,symbol=sym,price=c")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ignoring columns that are not message fields") == 1
    assert "exchange, note" in result.stdout
    assert alerts(tmp_path) == [("MSFT", "2026-01-05T14:31:00.000Z", 201.0)]

    line = error_line(backtest(tmp_path, ticks, "--columns", "price=close"))
    assert "no column 'close' for --columns price=close" in line
    assert "FIELD=COLUMN" in error_line(backtest(tmp_path, ticks, "--columns", "price"))

    bad = tmp_path / "bad.csv"
    bad.write_text("ts,symbol,price\n2026-01-05T14:30:00Z,MSFT,199\n2026-01-05T14:31:00Z,$ms!,1\n")
    line = error_line(backtest(tmp_path, bad))
    assert "row 1: '$ms!' in 'symbol' is not a symbol" in line


def test_a_run_with_rows_rejected_beyond_the_threshold_fails_with_the_reasons(
    tmp_path: Path,
) -> None:
    ticks = tmp_path / "ticks.csv"
    rows = [f"MSFT,2026-01-05T14:{m:02d}:00Z,{199 + m}" for m in range(10)]
    rows[3] = "MSFT,2026-01-05T14:03:00Z,-1"
    rows[7] = "MSFT,2026-01-05T14:07:00Z,0"
    rows[8] = "MSFT,not a time,205"
    ticks.write_text("symbol,ts,price\n" + "\n".join(rows) + "\n")

    result = backtest(tmp_path, ticks)  # 3 of 10 rejected: more than 1% (1 row)
    line = error_line(result)
    assert "3 of 10 rows rejected, more than --max-rejected 1% allows (1)" in line
    assert "rejected market.ticks 2 rows (3, 7): invalid Tick: price" in result.stdout
    assert "rejected market.ticks row 8: invalid Tick: ts" in result.stdout
    assert len(alerts(tmp_path)) == 1  # the alerts are written all the same

    assert backtest(tmp_path, ticks, "--max-rejected", "3").returncode == 0
    assert backtest(tmp_path, ticks, "--max-rejected", "30%").returncode == 0
    assert "not a row count" in error_line(backtest(tmp_path, ticks, "--max-rejected", "x"))

    every = tmp_path / "every.csv"
    every.write_text("symbol,ts,price\nMSFT,2026-01-05T14:00:00Z,-1\n")
    line = error_line(backtest(tmp_path, every, "--max-rejected", "100%"))
    assert "1 of 1 rows rejected" in line
