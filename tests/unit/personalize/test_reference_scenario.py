"""The consolidation reference scenario (docs/consolidation.md) keeps its promises: run as its
benchmark runs it, it loses no alert, notifies none twice and cuts notifications by 70 % or
more. (Its speed is measured by bench/, not here.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench" / "consolidation.py"


def test_the_reference_scenario_loses_nothing_and_consolidates() -> None:
    printed = subprocess.run(
        [sys.executable, str(BENCH)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    rows = dict(re.findall(r"^ {2}(\S.*?)\s{2,}(\S.*)$", printed, flags=re.M))
    assert rows["alerts lost"] == "0"
    assert rows["alerts in two notifications"] == "0"
    assert int(rows["reduction"].split("%")[0]) >= 70
    assert rows["CRITICAL alerts"].split("worst delay ")[1].startswith("0 s")
