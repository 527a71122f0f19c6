"""Serving the app on uvicorn, and writing its OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import uvicorn

from api.app import create_app
from pipeline.config import Settings

OPENAPI_FILE = Path(__file__).resolve().parents[1] / "docs" / "api" / "openapi.json"


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> int:
    settings.require_servers()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host or settings.api.host,
        port=settings.api.port if port is None else port,
        log_level="info",
        proxy_headers=False,
    )
    return 0


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI document the app serves at /openapi.json (independent of the settings)."""
    return create_app(settings or Settings()).openapi()


def openapi_text(settings: Settings | None = None) -> str:
    return json.dumps(openapi_document(settings), indent=2, sort_keys=False) + "\n"


def openapi_command(settings: Settings, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(openapi_text(settings))
    print(path)


if __name__ == "__main__":
    openapi_command(Settings(), OPENAPI_FILE)
