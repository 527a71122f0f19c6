"""Serving the app on uvicorn, and writing its OpenAPI document."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import uvicorn

from api.app import create_app
from pipeline.config import Settings
from pipeline.logs import lifetime, server_summary
from pipeline.masking import mask_url

log = logging.getLogger("smart_alerts.api")

OPENAPI_FILE = Path(__file__).resolve().parents[1] / "docs" / "api" / "openapi.json"


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> int:
    settings.require_servers()
    app = create_app(settings)
    host = host or settings.api.host
    port = settings.api.port if port is None else port
    summary = {
        **server_summary(
            settings.kafka_bootstrap_servers, settings.database_url, settings.redis_url
        ),
        "host": host,
        "port": port,
        "identity_provider": mask_url(settings.api.jwks_url) if settings.api.jwks_url else None,
        "jwt_hs256": settings.api.jwt_hs256,
    }
    # uvicorn stops on SIGINT/SIGTERM, then raises the signal again to the handlers it found:
    # these note it, so that the stop line is written and SIGTERM ends with 0, SIGINT with 130.
    received: list[signal.Signals] = []
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {
        sig: signal.signal(sig, lambda n, _f: received.append(signal.Signals(n))) for sig in handled
    }
    try:
        with lifetime(log, "api", summary) as life:
            # log_config=None: uvicorn's lines go through the log set-up of pipeline/logs.py,
            # in the same format as every other line.
            uvicorn.run(
                app, host=host, port=port, log_level="info", log_config=None, proxy_headers=False
            )
            life.reason = f"{received[0].name} received" if received else "server stopped"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 130 if signal.SIGINT in received else 0


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
