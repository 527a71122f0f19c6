"""Alert files written by ``backtest``: Parquet, CSV or JSON Lines, chosen by the extension.

One row per alert, columns per ARCHITECTURE.md §6: ``alert_id, rule_id, user_id, symbol,
priority, triggered_at, condition_types, values``. In Parquet ``triggered_at`` is a UTC
timestamp and ``condition_types`` a list; in CSV both are text (RFC 3339; a JSON list).
``values`` is a JSON object (text in Parquet and CSV).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline.messages import TriggeredAlert, format_timestamp

FORMATS = (".parquet", ".csv", ".jsonl")
SCHEMA: dict[str, pl.DataType] = {
    "alert_id": pl.String(),
    "rule_id": pl.String(),
    "user_id": pl.String(),
    "symbol": pl.String(),
    "priority": pl.String(),
    "triggered_at": pl.Datetime("ms", "UTC"),
    "condition_types": pl.List(pl.String),
    "values": pl.String(),
}


class UnsupportedOutput(ValueError):
    pass


def write_alerts(alerts: list[TriggeredAlert], path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UnsupportedOutput(
            f"{path}: write .parquet, .csv or .jsonl, not {suffix or 'no extension'}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as handle:
            for alert in alerts:
                row = {
                    "alert_id": alert.alert_id,
                    "rule_id": alert.rule_id,
                    "user_id": alert.user_id,
                    "symbol": alert.symbol,
                    "priority": alert.priority.value,
                    "triggered_at": format_timestamp(alert.triggered_at),
                    "condition_types": alert.condition_types,
                    "values": alert.values,
                }
                handle.write(json.dumps(row) + "\n")
        return
    frame = pl.DataFrame(
        {
            "alert_id": [a.alert_id for a in alerts],
            "rule_id": [a.rule_id for a in alerts],
            "user_id": [a.user_id for a in alerts],
            "symbol": [a.symbol for a in alerts],
            "priority": [a.priority.value for a in alerts],
            "triggered_at": [a.triggered_at for a in alerts],
            "condition_types": [a.condition_types for a in alerts],
            "values": [json.dumps(a.values, sort_keys=True) for a in alerts],
        },
        schema=SCHEMA,
    )
    if suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.with_columns(
            pl.col("triggered_at").map_elements(format_timestamp, return_dtype=pl.String),
            pl.col("condition_types").map_elements(
                lambda v: json.dumps(list(v)), return_dtype=pl.String
            ),
        ).write_csv(path)
