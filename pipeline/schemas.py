"""JSON Schemas of the wire messages, generated from the models into docs/schemas/."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from pipeline.messages import (
    DeadLetter,
    Feedback,
    Notification,
    OptionsFlow,
    Position,
    Profile,
    Rule,
    Tick,
    TriggeredAlert,
)

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"

# File stem (the default topic name) -> the model of its values.
TOPIC_MODELS: dict[str, type[BaseModel]] = {
    "market.ticks": Tick,
    "market.options_flow": OptionsFlow,
    "alerts.rules": Rule,
    "portfolio.positions": Position,
    "alerts.feedback": Feedback,
    "users.profiles": Profile,
    "alerts.triggered": TriggeredAlert,
    "alerts.notifications": Notification,
    "alerts.dlq": DeadLetter,
}


def render(model: type[BaseModel], topic: str) -> str:
    schema = model.model_json_schema(mode="validation")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://vs9.example/schemas/{topic}.schema.json",
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for topic, model in TOPIC_MODELS.items():
        path = directory / f"{topic}.schema.json"
        path.write_text(render(model, topic))
        written.append(path)
    return written


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Topics whose schema file is missing or differs from the model."""
    out = []
    for topic, model in TOPIC_MODELS.items():
        path = directory / f"{topic}.schema.json"
        if not path.exists() or path.read_text() != render(model, topic):
            out.append(topic)
    return out
