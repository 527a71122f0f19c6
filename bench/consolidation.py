"""The consolidation reference scenario (docs/consolidation.md): notifications versus alerts.

    python bench/consolidation.py

One user, 30 rules on 10 symbols, a volatile regular session (2026-01-06, 09:30-16:00 New York)
with a tick every 5 seconds per symbol. The rules and the profile are the ones a active trader
would set; everything is seeded, so every run gives the same alerts and notifications. The
alerts come from the rule engine and go through the user desk exactly as in the dataflow.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cli.learning_scenario import SYMBOLS  # noqa: E402 (the scenario's symbols, prices)
from pipeline.evaluate.engine import ShardEngine  # noqa: E402
from pipeline.messages import Priority, Profile, Rule, Tick, TriggeredAlert  # noqa: E402
from pipeline.personalize.desk import (  # noqa: E402
    AlertOutcome,
    Dispatch,
    PersonalizationConfig,
    UserDesk,
)

OPEN = datetime(2026, 1, 6, 14, 30, tzinfo=UTC)
CLOSE = datetime(2026, 1, 6, 21, 0, tzinfo=UTC)
STEP = timedelta(seconds=5)
PROFILE = {
    "user_id": "u-trader",
    "timezone": "America/New_York",
    "channels": {
        "LOW": ["in_app"],
        "MEDIUM": ["in_app", "push"],
        "HIGH": ["in_app", "push"],
        "CRITICAL": ["in_app", "push", "sms"],
    },
    "digest_seconds": 600,
    "max_per_hour": 10,
}


def rules() -> list[Rule]:
    out: list[dict[str, Any]] = []
    for index, price in enumerate(SYMBOLS.values()):
        out += [
            {
                "conditions": {"type": "price_crosses_above", "threshold": round(price * 1.01, 2)},
                "priority": "HIGH",
                "cooldown_seconds": 600,
            },
            {
                "conditions": {"type": "percent_move_down", "percent": 1.0, "window_seconds": 900},
                "priority": "MEDIUM",
                "cooldown_seconds": 900,
            },
            {
                "conditions": {
                    "any": [
                        {"type": "rsi_above", "threshold": 70, "period": 14, "timeframe": "5m"},
                        {"type": "rsi_below", "threshold": 30, "period": 14, "timeframe": "5m"},
                    ]
                },
                "priority": "LOW",
                "cooldown_seconds": 1800,
            },
        ]
        if index < 3:  # stop losses on the three positions the trader holds
            out[-1] = {
                "conditions": {"type": "price_below", "threshold": round(price * 0.985, 2)},
                "priority": "CRITICAL",
                "cooldown_seconds": 3600,
            }
    return [
        Rule.model_validate(
            {
                "id": f"r-{i:02d}",
                "user_id": "u-trader",
                "name": f"rule {i}",
                "symbol": list(SYMBOLS)[i // 3],
                **body,
            }
        )
        for i, body in enumerate(out)
    ]


def ticks(seed: int = 6) -> list[Tick]:
    rng = random.Random(seed)
    prices = dict(SYMBOLS)
    out = []
    ts = OPEN
    while ts < CLOSE:
        for symbol in SYMBOLS:
            shock = rng.gauss(0, 0.0009) + (rng.random() < 0.002) * rng.choice([-1, 1]) * 0.008
            prices[symbol] = round(prices[symbol] * (1 + shock), 2)
            out.append(
                Tick(symbol=symbol, ts=ts, price=prices[symbol], size=rng.choice([100, 200, 500]))
            )
        ts += STEP
    return out


def main() -> None:
    engine, desk = ShardEngine(), UserDesk()
    engine.process(rules())
    outputs: list[Any] = desk.process([Profile.model_validate(PROFILE)])
    alerts: list[TriggeredAlert] = []
    lateness = PersonalizationConfig().lateness
    for tick in ticks():
        fired = engine.process([tick])
        alerts += fired
        outputs += desk.process(list(fired))
        # One market partition: the watermark follows the ticks, less the allowed lateness.
        outputs += desk.advance(tick.ts - lateness)
    alerts += engine.close_bars()
    outputs += desk.close_all()

    notifications = [o.notification for o in outputs if isinstance(o, Dispatch)]
    outcomes: dict[str, AlertOutcome] = {}
    for item in outputs:
        if isinstance(item, AlertOutcome):
            outcomes[item.alert_id] = item
    in_notifications = Counter(
        i for n in notifications if "digest" not in n.notification_id for i in n.alert_ids
    )
    status = Counter(o.status for o in outcomes.values())
    lost = [a.alert_id for a in alerts if a.alert_id not in outcomes]
    twice = [i for i, count in in_notifications.items() if count > 1]
    critical = [a for a in alerts if a.priority is Priority.CRITICAL]
    by_id = {n.notification_id: n for n in notifications}
    latency = [
        (
            by_id[outcomes[a.alert_id].notification_id or ""].window_end - a.triggered_at
        ).total_seconds()
        for a in critical
    ]
    reduction = 1 - len(notifications) / len(alerts)
    rows = [
        ("alerts triggered", f"{len(alerts)}"),
        (
            "  by priority",
            ", ".join(
                f"{p.value} {n}"
                for p, n in sorted(
                    Counter(a.priority for a in alerts).items(), key=lambda x: x[0].rank
                )
            ),
        ),
        ("notifications sent", f"{len(notifications)}"),
        ("reduction", f"{reduction:.0%}  (target >= 70%)"),
        (
            "CRITICAL alerts",
            f"{len(critical)}, worst delay {max(latency, default=0):.0f} s event time "
            "(target <= 1 s)",
        ),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(status.items()))),
        ("alerts lost", f"{len(lost)}"),
        ("alerts in two notifications", f"{len(twice)}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(
        f"consolidation reference scenario: 1 user, {len(rules())} rules, "
        f"{len(SYMBOLS)} symbols, one session"
    )
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
