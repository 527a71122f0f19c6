"""``smart-alerts backtest --report``: the page, opened in real headless Chromium, draws one
marker per alert the backtest wrote (time, symbol, rule), the indicators its rules read, a long
series thinned with its spike kept, and loads nothing from the network."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.cli.report import CHART_ID, MAX_POINTS
from tests.conftest import needs_chromium

SMART_ALERTS = str(Path(sys.executable).with_name("smart-alerts"))
TIMEOUT = 30
T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
AAPL_TICKS = 9000  # more than MAX_POINTS: the page thins the line
SPIKE_AT = 4321
SPIKE_PRICE = 250.0

pytestmark = needs_chromium

RULES = [
    {
        "id": "r-spike",
        "user_id": "u-rep",
        "name": "AAPL spike over 240",
        "symbol": "AAPL",
        "priority": "CRITICAL",
        "cooldown_seconds": 0,
        "conditions": {"type": "price_crosses_above", "threshold": 240},
    },
    {
        "id": "r-aapl-bands",
        "user_id": "u-rep",
        "name": "AAPL leaves its bands",
        "symbol": "AAPL",
        "cooldown_seconds": 0,
        "conditions": {
            "any": [
                {"type": "bollinger_break_upper", "period": 20, "timeframe": "1m"},
                {"type": "bollinger_break_lower", "period": 20, "timeframe": "1m"},
            ]
        },
    },
    {
        "id": "r-msft-sma",
        "user_id": "u-rep",
        "name": "MSFT over its SMA",
        "symbol": "MSFT",
        "priority": "HIGH",
        "cooldown_seconds": 0,
        "conditions": {"type": "price_crosses_above_sma", "period": 5, "timeframe": "1m"},
    },
    {
        "id": "r-msft-rsi",
        "user_id": "u-rep",
        "name": "MSFT overbought",
        "symbol": "MSFT",
        "cooldown_seconds": 0,
        "conditions": {"type": "rsi_above", "threshold": 60, "period": 5, "timeframe": "1m"},
    },
    {
        "id": "r-msft-floor",
        "user_id": "u-rep",
        "name": "MSFT under 409",
        "symbol": "MSFT",
        "priority": "LOW",
        "cooldown_seconds": 120,
        "conditions": {"type": "price_below", "threshold": 409},
    },
]


def _ticks(path: Path) -> None:
    """Two symbols a second apart: AAPL long enough to be thinned, with one spike; MSFT a
    slow wave through 409."""
    lines = ["symbol,ts,price"]
    for i in range(AAPL_TICKS):
        ts = (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        aapl = SPIKE_PRICE if i == SPIKE_AT else 200 + 3 * math.sin(i / 300) + 0.2 * math.sin(i)
        lines.append(f"AAPL,{ts},{aapl:.2f}")
        if i % 5 == 0:
            msft = 410 + 2 * math.sin(i / 700) + 0.3 * math.sin(i / 7)
            lines.append(f"MSFT,{ts},{msft:.2f}")
    path.write_text("\n".join(lines) + "\n")


# Plotly keeps the traces it drew on the graph div; the test reads them as the browser has them.
READ_TRACES = f"""
const chart = document.getElementById({json.dumps(CHART_ID)});
if (!chart || !chart._fullLayout || !chart.data) return null;
return chart.data.map(t => ({{
  meta: t.meta || null, name: t.name, mode: t.mode,
  x: Array.from(t.x || []), y: Array.from(t.y || []), customdata: t.customdata || null,
  hovertemplate: t.hovertemplate || ""
}}));
"""


def test_the_report_draws_every_alert_and_loads_nothing(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rules, ticks = tmp_path / "rules.json", tmp_path / "ticks.csv"
    rules.write_text(json.dumps(RULES))
    _ticks(ticks)
    alerts_path, report = tmp_path / "alerts.jsonl", tmp_path / "report.html"
    done = subprocess.run(
        [SMART_ALERTS, "backtest", "--rules", str(rules), "--ticks", str(ticks)]
        + ["--out", str(alerts_path), "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in alerts_path.read_text().splitlines()]
    expected = Counter((a["triggered_at"], a["symbol"], a["rule_id"]) for a in alerts)
    assert {rule for _, _, rule in expected} >= {"r-spike", "r-msft-sma", "r-msft-floor"}

    page = report.read_text()
    # Nothing to fetch: no element names an outside address, and plotly.js is inline.
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", page, re.I)
    assert "Plotly" in page

    browser.get(report.as_uri())
    traces = WebDriverWait(browser, TIMEOUT).until(lambda d: d.execute_script(READ_TRACES))
    # Every resource the page loaded besides itself (scripts, styles, fonts, XHR, fetch).
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    drawn: Counter[tuple[str, str, str]] = Counter()
    for trace in traces:
        if (trace["meta"] or {}).get("kind") != "alerts":
            continue
        assert len(trace["x"]) == len(trace["customdata"])
        assert "customdata[1]" in trace["hovertemplate"]  # rule id
        assert "customdata[3]" in trace["hovertemplate"]  # priority
        for alert_id, rule_id, name, priority, symbol, when in trace["customdata"]:
            drawn[(when, symbol, rule_id)] += 1
            assert name == next(r["name"] for r in RULES if r["id"] == rule_id)
            assert priority == next(a["priority"] for a in alerts if a["alert_id"] == alert_id)
    assert drawn == expected

    # The spike alert sits at the spike, which the thinned AAPL line keeps.
    spike = next(t for t in traces if (t["meta"] or {}).get("rule_id") == "r-spike")
    assert spike["y"] == [SPIKE_PRICE]
    aapl = next(t for t in traces if t["meta"] == {"kind": "price", "symbol": "AAPL"})
    assert len(aapl["y"]) <= MAX_POINTS < AAPL_TICKS
    assert max(aapl["y"]) == SPIKE_PRICE

    indicators = {t["name"] for t in traces if (t["meta"] or {}).get("kind") == "indicator"}
    assert {"level 240", "level 409", "SMA 5 (1m)"} <= indicators
    assert {"Bollinger 20, 2 sd (1m) upper", "Bollinger 20, 2 sd (1m) lower"} <= indicators

    text = browser.find_element(By.TAG_NAME, "body").text
    assert f"{AAPL_TICKS:,} ticks drawn as {len(aapl['y']):,} points" in text
    assert "rsi_above (r-msft-rsi) is not drawn" in text
    rows = browser.find_elements(By.CSS_SELECTOR, "table:first-of-type tbody tr")
    per_rule = {
        cells[0].text: int(cells[4].text)
        for cells in (row.find_elements(By.TAG_NAME, "td") for row in rows)
    }
    assert per_rule == dict(Counter(a["rule_id"] for a in alerts))
