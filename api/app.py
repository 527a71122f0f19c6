"""The ASGI application: ``create_app(settings)``; ``smart-alerts api`` serves it on uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import problems
from api.audit import AuditMiddleware
from api.auth import TokenVerifier
from api.body_limit import BodyLimitMiddleware
from api.idempotency import IdempotencyMiddleware
from api.rate_limits import RateLimitMiddleware
from api.request_id import RequestIdMiddleware
from api.routes import (
    alerts,
    api_keys,
    feedback,
    health,
    inbox,
    me,
    profile,
    rules,
    templates,
    webhooks,
)
from api.services import Services
from pipeline.config import Settings

DESCRIPTION = """\
The HTTP API of VS-9 Smart Alerts: rules, templates, alert history, the in-app inbox (live
over a WebSocket or Server-Sent Events), feedback, profiles, webhook endpoints and API keys.

Authenticate with `Authorization: Bearer <JWT or API key>`. Errors are
`application/problem+json` (RFC 9457). docs/api.md is the guide.
"""

VERSION = "1.0.0"


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The API over the configured stores; ``services`` may be given (tests), else they are
    opened at start-up and closed at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = services or Services.open(settings)
        app.state.services = opened
        try:
            yield
        finally:
            await opened.aclose()
            if services is None:
                opened.close()

    app = FastAPI(
        title="VS-9 Smart Alerts API",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.verifier = TokenVerifier(settings.api)
    problems.install(app)
    for module in (
        health,
        me,
        rules,
        templates,
        alerts,
        inbox,
        feedback,
        profile,
        webhooks,
        api_keys,
    ):
        app.include_router(module.router)
    # The last added runs first: a request id for every answer, then the audit (which sees the
    # final status of every write), the rate limit (which authenticates: its principal is the
    # one the audit and the routes see), the body limit before anything reads the body, and
    # the idempotency check right before the route.
    app.add_middleware(IdempotencyMiddleware, ttl_seconds=settings.api.idempotency_ttl_seconds)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(RateLimitMiddleware, config=settings.api)
    app.add_middleware(AuditMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
