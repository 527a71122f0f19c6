"""Writes the bundled demo market data: ``python -m pipeline.samples.generate``.

A seeded random walk per symbol, one tick every two seconds for an hour of a regular session,
shaped so the example rules have something to find. Same seed, same file.
"""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).parent
START = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
STEP = timedelta(seconds=2)
TICKS_PER_SYMBOL = 1800

# symbol: (start price, drift per tick, volatility per tick)
WALKS = {
    "AAPL": (198.80, 0.0009, 0.045),
    "MSFT": (415.00, 0.0, 0.09),
    "NVDA": (182.00, -0.0012, 0.05),
    "TSLA": (404.00, -0.0025, 0.12),
    "SPY": (598.50, 0.0012, 0.05),
}


def ticks(seed: int = 20260105) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    prices = {symbol: walk[0] for symbol, walk in WALKS.items()}
    for index in range(TICKS_PER_SYMBOL):
        ts = START + index * STEP
        for symbol, (_, drift, vol) in WALKS.items():
            prices[symbol] = max(0.01, prices[symbol] * (1 + drift / 100) + rng.gauss(0, vol))
            price = round(prices[symbol], 2)
            spread = round(max(0.01, price * 0.0001), 2)
            rows.append(
                {
                    "symbol": symbol,
                    "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "price": price,
                    "size": rng.choice([0, 100, 200, 300, 500, 1000]),
                    "bid": round(price - spread, 2),
                    "ask": round(price + spread, 2),
                }
            )
    return rows


def main() -> None:
    rows = ticks()
    with (HERE / "ticks.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} ticks to {HERE / 'ticks.csv'}")


if __name__ == "__main__":
    main()
