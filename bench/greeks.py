"""What deriving IV and greeks costs per batch, against parsing the same messages.

    python bench/greeks.py [--rounds 7]

Option ticks with a price and an underlying price but no IV or greeks (strikes, expiries and
rights spread over a realistic chain) are parsed from their JSON with ``decode(Tick, ...)``, as
the job's ingest does: that is the baseline (a). Then ``GreeksDeriver.derive`` fills the batch
(one call, as the dataflow's ``derive_greeks`` step makes per batch), and, for the step's cost
on a feed that needs nothing, the same call on ticks that already carry every field. Each line
is the median of ``--rounds`` passes, the three taking turns within each pass. A subprocess
measures the import of the module and its first call, which a job pays once at start-up.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluate.greeks import GreeksConfig, GreeksDeriver  # noqa: E402
from pipeline.messages import Tick, decode  # noqa: E402

SIZES = (1, 100, 10_000)
T0 = datetime(2026, 7, 1, 14, 0, tzinfo=UTC)
# The messages and the calendar are imported by every job anyway: only the rest is timed.
FIRST_CALL = """
import time
from pipeline.market_calendar import parse_occ
from pipeline.messages import Tick
started = time.perf_counter()
from pipeline.evaluate.greeks import GreeksConfig, GreeksDeriver
imported = time.perf_counter()
tick = Tick(symbol="AAPL  260731C00200000", ts="2026-07-01T14:00:00Z", price=6.0,
            underlying_price=198.0)
GreeksDeriver(GreeksConfig()).derive([("AAPL", tick)])
print(imported - started, time.perf_counter() - imported)
"""


def chain(count: int, *, complete: bool) -> list[bytes]:
    """``count`` option ticks over 8 expiries and strikes 60 %-140 % of a 200 spot."""
    ticks = []
    for i in range(count):
        expiry = date(2026, 7, 3) + timedelta(days=7 * (i % 8))
        strike = 120 + (i * 7) % 161  # 120..280
        right = "C" if i % 2 else "P"
        spot = 200.0
        # Above the European intrinsic value (strike discounted at the default 4 %), which an
        # American option's price can be below: such a price has no BSM volatility.
        discounted = strike * math.exp(-0.04 * (expiry - T0.date()).days / 365)
        intrinsic = max(0.0, (spot - discounted) if right == "C" else (discounted - spot))
        row = {
            "symbol": f"AAPL  {expiry:%y%m%d}{right}{strike * 1000:08d}",
            "ts": (T0 + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
            "price": round(intrinsic + 0.5 + (i % 13) * 0.3, 2),
            "underlying_price": spot,
        }
        if complete:
            row |= {"iv": 30.0, "delta": 0.5, "gamma": 0.01, "theta": -0.1, "vega": 0.2}
        ticks.append(json.dumps(row).encode())
    return ticks


def per_message(works: list[Callable[[], object]], count: int, rounds: int) -> list[float]:
    """Seconds per message of each work: the median of ``rounds`` passes, the works taking
    turns within a pass, so that a busy machine slows them alike."""
    passes: list[list[float]] = [[] for _ in works]
    for _ in range(rounds):
        for timings, work in zip(passes, works, strict=True):
            started = time.perf_counter()
            work()
            timings.append((time.perf_counter() - started) / count)
    return [statistics.median(timings) for timings in passes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    deriver = GreeksDeriver(GreeksConfig())

    imported, first = map(
        float,
        subprocess.run(
            [sys.executable, "-c", FIRST_CALL],
            cwd=Path(__file__).resolve().parents[1],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split(),
    )
    print(
        f"import of pipeline.evaluate.greeks (numpy, scipy, vollib): {imported * 1000:.0f} ms; "
        f"first call: {first * 1000:.1f} ms (once per process)"
    )
    header = (
        f"{'batch':>6} | {'parse (a) µs/msg':>16} | {'derive µs/msg':>13} | {'vs (a)':>6} | "
        f"{'nothing to derive µs/msg':>24} | {'vs (a)':>6}"
    )
    print(header)
    print("-" * len(header))
    for size in SIZES:
        raw = chain(size, complete=False)
        full = chain(size, complete=True)
        keyed = [("AAPL", decode(Tick, value)) for value in raw]
        keyed_full = [("AAPL", decode(Tick, value)) for value in full]
        derived = deriver.derive(keyed)
        solved = sum(1 for _, tick in derived if isinstance(tick, Tick) and tick.iv is not None)
        assert solved == size, f"{size - solved} of {size} ticks got no IV"
        repeat = max(1, 1000 // size)  # a batch of 1 is timed over 1000 calls

        def parse(values: list[bytes] = raw, repeat: int = repeat) -> None:
            for _ in range(repeat):
                for value in values:
                    decode(Tick, value)

        def derive(items: list[tuple[str, Tick]] = keyed, repeat: int = repeat) -> None:
            for _ in range(repeat):
                deriver.derive(items)

        def untouched(items: list[tuple[str, Tick]] = keyed_full, repeat: int = repeat) -> None:
            for _ in range(repeat):
                deriver.derive(items)

        base, cost, idle = per_message([parse, derive, untouched], size * repeat, args.rounds)
        print(
            f"{size:>6} | {base * 1e6:>16.1f} | {cost * 1e6:>13.1f} | {cost / base:>5.1f}x | "
            f"{idle * 1e6:>24.2f} | {idle / base:>5.2f}x"
        )


if __name__ == "__main__":
    main()
