"""EVALUATE throughput and memory with 1k to 1M active rules over 1,000 symbols.

    python bench/evaluate.py                      # 1k, 10k, 100k, 1M rules
    python bench/evaluate.py --rules 1000 10000   # some sizes only
    python bench/evaluate.py --flow               # windowed flow rules on one underlying

Each size runs in its own process (clean memory numbers) and measures, on the same events:
- baseline (a) parse: the events' JSON bytes validated into messages, no evaluation;
- EVALUATE: parse + the rule engine as the job runs it (ShardEngine per shard, events grouped
  by shard in batches as Bytewax hands them over);
- baseline (b) naive: parse + the same engine checking every rule of the symbol at every event
  (no threshold index, no per-kind dispatch).
Rules are a realistic mix: single price levels and crosses (the bulk), indicator conditions on
1m/5m bars, percent moves, IV and spread levels, flow scanners, and nested all/any trees.
Memory: resident set growth while loading the rules, per rule, and the process's peak RSS.

``--flow`` measures the windowed flow conditions instead: 100 ``put_call_premium_ratio`` and
``flow_repeated_hits`` rules (windows 1m to 1h, every kind of flow filter) on one underlying,
prints every 100 ms over 80 contracts with a tick of the underlying every 20th event, through
one ShardEngine, beside the parse baseline of the same prints.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluate.engine import ExhaustiveShardEngine, ShardEngine  # noqa: E402
from pipeline.evaluate.routing import shard_of  # noqa: E402
from pipeline.messages import OptionsFlow, Rule, Tick, decode  # noqa: E402

SYMBOLS = [f"S{index:04d}" for index in range(1000)]
SHARDS = 64
BATCH = 2000
T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def base_prices(rng: random.Random) -> dict[str, float]:
    return {symbol: round(rng.uniform(20, 500), 2) for symbol in SYMBOLS}


def make_rule(index: int, rng: random.Random, prices: dict[str, float]) -> dict[str, Any]:
    symbol = SYMBOLS[index % len(SYMBOLS)]
    price = prices[symbol]
    level = round(price * rng.uniform(0.95, 1.05), 2)
    roll = rng.random()
    if roll < 0.60:
        kind = rng.choice(
            ["price_above", "price_below", "price_crosses_above", "price_crosses_below"]
        )
        conditions: dict[str, Any] = {"type": kind, "threshold": level}
    elif roll < 0.72:
        tf = rng.choice(["1m", "5m"])
        conditions = rng.choice(
            [
                {"type": "rsi_below", "threshold": 30, "period": 14, "timeframe": tf},
                {"type": "rsi_above", "threshold": 70, "period": 14, "timeframe": tf},
                {"type": "price_crosses_above_sma", "period": 20, "timeframe": tf},
                {"type": "bollinger_break_upper", "period": 20, "stddev": 2, "timeframe": tf},
                {"type": "volume_spike", "multiple": 3, "period": 20, "timeframe": tf},
                {"type": "new_high", "period": 20, "timeframe": tf},
            ]
        )
    elif roll < 0.80:
        conditions = rng.choice(
            [
                {"type": "percent_move_up", "percent": 2, "window_seconds": 900},
                {"type": "percent_move_down", "percent": 2, "window_seconds": 900},
                {"type": "iv_above", "threshold": round(rng.uniform(0.3, 0.9), 2)},
                {"type": "spread_pct_above", "threshold": 1},
            ]
        )
    elif roll < 0.88:
        conditions = rng.choice(
            [
                {"type": "flow_sweep", "right": "C", "min_premium": 100_000},
                {"type": "flow_premium_above", "threshold": 250_000},
                {"type": "flow_repeated_hits", "count": 3, "window_seconds": 300},
            ]
        )
    else:
        conditions = {
            "all": [
                {"type": "price_above", "threshold": level},
                {
                    "any": [
                        {"type": "rsi_below", "threshold": 40, "period": 14, "timeframe": "5m"},
                        {"type": "iv_above", "threshold": 0.5},
                    ]
                },
            ]
        }
    return {
        "id": f"r-{index}",
        "user_id": f"u-{index % 50_000}",
        "name": f"rule {index}",
        "symbol": symbol,
        "priority": rng.choice(["LOW", "MEDIUM", "HIGH"]),
        "cooldown_seconds": rng.choice([300, 900, 1800]),
        "conditions": conditions,
    }


def make_events(
    count: int, rng: random.Random, prices: dict[str, float]
) -> list[tuple[str, bytes]]:
    """JSON bytes of ticks (95 %) and flow prints (5 %), in time order, as read from Kafka."""
    current = dict(prices)
    iv = {symbol: rng.uniform(0.2, 0.8) for symbol in SYMBOLS}
    events = []
    for index in range(count):
        symbol = rng.choice(SYMBOLS)
        ts = (T0 + timedelta(milliseconds=20 * index)).isoformat().replace("+00:00", "Z")
        if rng.random() < 0.05:
            body = {
                "id": f"f{index}",
                "ts": ts,
                "underlying": symbol,
                "contract": f"{symbol[:4]}  260116C00200000",
                "right": rng.choice("CP"),
                "strike": 200.0,
                "expiry": "2026-01-16",
                "price": 2.5,
                "size": rng.choice([10, 100, 1000]),
                "side": "ask",
                "trade_type": rng.choice(["sweep", "block", "single"]),
            }
            events.append(("flow", json.dumps(body).encode()))
            continue
        current[symbol] = max(0.01, round(current[symbol] * (1 + rng.gauss(0, 0.0005)), 2))
        iv[symbol] = min(2.0, max(0.05, iv[symbol] + rng.gauss(0, 0.002)))
        body = {
            "symbol": symbol,
            "ts": ts,
            "price": current[symbol],
            "size": rng.choice([0, 100, 200]),
            "bid": round(current[symbol] * 0.999, 2),
            "ask": round(current[symbol] * 1.001, 2),
            "iv": round(iv[symbol], 3),
        }
        events.append(("tick", json.dumps(body).encode()))
    return events


def parse(events: list[tuple[str, bytes]]) -> list[Tick | OptionsFlow]:
    return [
        decode(Tick, raw) if kind == "tick" else decode(OptionsFlow, raw) for kind, raw in events
    ]


def evaluate(engines: dict[str, ShardEngine], events: list[tuple[str, bytes]]) -> int:
    """Parse, group by shard per batch and evaluate; returns the number of alerts."""
    alerts = 0
    for start in range(0, len(events), BATCH):
        by_shard: dict[str, list[Any]] = defaultdict(list)
        for item in parse(events[start : start + BATCH]):
            symbol = item.symbol if isinstance(item, Tick) else item.underlying
            by_shard[shard_of(symbol, SHARDS)].append(item)
        for shard, items in by_shard.items():
            alerts += len(engines[shard].process(items))
    return alerts


def rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() // 1024


def load(
    engine_type: type[ShardEngine], n_rules: int, prices: dict[str, float]
) -> dict[str, ShardEngine]:
    engines = {f"shard-{i:04d}": engine_type() for i in range(SHARDS)}
    rng = random.Random(1)
    for index in range(n_rules):
        rule = Rule.model_validate(make_rule(index, rng, prices))
        engines[shard_of(rule.symbol or "", SHARDS)].upsert(rule)
    return engines


def timed(function: Any, *args: Any) -> tuple[float, Any]:
    gc.collect()
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def child(n_rules: int, n_events: int) -> dict[str, Any]:
    rng = random.Random(0)
    prices = base_prices(rng)
    events = make_events(n_events, rng, prices)
    warmup = make_events(2000, random.Random(99), prices)

    gc.collect()
    before = rss_kib()
    load_seconds, engines = timed(load, ShardEngine, n_rules, prices)
    gc.collect()
    per_rule = (rss_kib() - before) * 1024 / n_rules

    evaluate(engines, warmup)  # first prices, fresh rules, bars opened
    parse_seconds, _ = timed(parse, events)
    eval_seconds, alerts = timed(evaluate, engines, events)
    del engines
    gc.collect()

    naive = load(ExhaustiveShardEngine, n_rules, prices)
    evaluate(naive, warmup)
    naive_events = events[: max(500, min(len(events), 20_000_000 // n_rules))]
    naive_seconds, _ = timed(evaluate, naive, naive_events)
    return {
        "rules": n_rules,
        "events": len(events),
        "load_s": load_seconds,
        "parse_eps": len(events) / parse_seconds,
        "evaluate_eps": len(events) / eval_seconds,
        "naive_eps": len(naive_events) / naive_seconds,
        "alerts": alerts,
        "bytes_per_rule": per_rule,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


FLOW_SYMBOL = "SPX"
FLOW_WINDOWS = [60, 300, 900, 1800, 3600]
FLOW_FILTERS: list[dict[str, Any]] = [
    {},
    {"right": "C"},
    {"right": "P"},
    {"sides": ["ask", "above_ask"]},
    {"sides": ["bid", "below_bid"]},
    {"min_size": 50},
    {"min_days_to_expiry": 1, "max_days_to_expiry": 30},
    {"moneyness": "otm"},
    {"moneyness": "atm", "atm_band_pct": 0.5},
    {"moneyness": "itm", "right": "P", "min_size": 10},
]


def flow_rules(rng: random.Random) -> list[Rule]:
    rules = []
    for index in range(100):
        window, filters = rng.choice(FLOW_WINDOWS), rng.choice(FLOW_FILTERS)
        if index % 2:
            conditions: dict[str, Any] = {
                "type": "flow_repeated_hits",
                "count": rng.choice([10, 25, 50]),
                "window_seconds": window,
            }
        else:
            conditions = {
                "type": "put_call_premium_ratio",
                "threshold": rng.choice([0.5, 2]),
                "comparison": rng.choice(["above", "below"]),
                "window_seconds": window,
            }
        body = {
            "id": f"flow-{index}",
            "user_id": f"u-{index}",
            "name": f"flow rule {index}",
            "symbol": FLOW_SYMBOL,
            "cooldown_seconds": rng.choice([300, 900]),
            "conditions": conditions | filters,
        }
        rules.append(Rule.model_validate(body))
    return rules


def flow_events(count: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """JSON bytes of SPX prints every 100 ms (1 event in 20 a tick of the index)."""
    spot = 5000.0
    contracts = [
        (right, strike, expiry)
        for right in "CP"
        for strike in range(4900, 5100, 10)
        for expiry in ("2026-01-05", "2026-01-16")
    ]
    events = []
    for index in range(count):
        ts = (T0 + timedelta(milliseconds=100 * index)).isoformat().replace("+00:00", "Z")
        if index % 20 == 19:
            spot = round(spot * (1 + rng.gauss(0, 0.0005)), 2)
            body: dict[str, Any] = {"symbol": FLOW_SYMBOL, "ts": ts, "price": spot}
            events.append(("tick", json.dumps(body).encode()))
            continue
        right, strike, expiry = rng.choice(contracts)
        price = round(rng.uniform(0.5, 40), 2)
        size = rng.choice([1, 1, 2, 5, 10, 25, 100, 500])
        body = {
            "id": f"p{index}",
            "ts": ts,
            "underlying": FLOW_SYMBOL,
            "contract": f"SPXW  {expiry[2:4]}{expiry[5:7]}{expiry[8:]}{right}0{strike}000",
            "right": right,
            "strike": float(strike),
            "expiry": expiry,
            "price": price,
            "size": size,
            "side": rng.choice(["ask", "bid", "mid", "above_ask", "below_bid"]),
            "trade_type": rng.choice(["sweep", "block", "split", "single"]),
        }
        if rng.random() < 0.8:  # the rest rely on the last tick for their moneyness
            body["underlying_price"] = spot
        events.append(("flow", json.dumps(body).encode()))
    return events


def flow_child(n_events: int) -> dict[str, Any]:
    rng = random.Random(0)
    events = flow_events(n_events, rng)
    engine = ShardEngine()
    for rule in flow_rules(rng):
        engine.upsert(rule)
    parsed = parse(events)
    parse_seconds, _ = timed(parse, events)
    cpu = time.process_time()  # beside the wall clock: shared machines slow it down
    eval_seconds, alerts = timed(lambda: sum(len(engine.process([e])) for e in parsed))
    cpu = time.process_time() - cpu
    prints = sum(1 for kind, _ in events if kind == "flow")
    return {
        "events": len(events),
        "prints": prints,
        "parse_pps": prints / parse_seconds,
        "evaluate_pps": prints / (parse_seconds + eval_seconds),
        "engine_cpu_pps": prints / cpu,
        "alerts": alerts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rules", type=int, nargs="*", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--flow", action="store_true", help="windowed flow rules instead")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.events)))
        return
    if args.flow:
        r = flow_child(args.events)
        print(
            f"{'prints':>9} | {'parse (a) prints/s':>18} | {'EVALUATE prints/s':>17} | "
            f"{'engine only, CPU prints/s':>25} | alerts"
        )
        print(
            f"{r['prints']:>9,} | {r['parse_pps']:>18,.0f} | {r['evaluate_pps']:>17,.0f} | "
            f"{r['engine_cpu_pps']:>25,.0f} | {r['alerts']:,}"
        )
        return
    header = (
        f"{'rules':>9} | {'parse (a) ev/s':>14} | {'EVALUATE ev/s':>13} | {'naive (b) ev/s':>14} | "
        f"{'vs (a)':>6} | {'vs (b)':>7} | {'B/rule':>6} | {'peak RSS MiB':>12} | {'load s':>6} | "
        "alerts/event"
    )
    print(header)
    print("-" * len(header))
    for n_rules in args.rules:
        output = subprocess.run(
            [sys.executable, __file__, "--child", str(n_rules), "--events", str(args.events)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(output.strip().splitlines()[-1])
        print(
            f"{r['rules']:>9,} | {r['parse_eps']:>14,.0f} | {r['evaluate_eps']:>13,.0f} | "
            f"{r['naive_eps']:>14,.0f} | {r['evaluate_eps'] / r['parse_eps']:>6.0%} | "
            f"{r['evaluate_eps'] / r['naive_eps']:>6.1f}x | {r['bytes_per_rule']:>6.0f} | "
            f"{r['peak_rss_mib']:>12,.0f} | {r['load_s']:>6.1f} | {r['alerts'] / r['events']:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
