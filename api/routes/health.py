"""Liveness and readiness: ``/healthz`` answers while the process serves requests;
``/readyz`` checks the broker, PostgreSQL and Redis, each with a bounded wait."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.auth import services
from api.services import Services

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 2.0


class Alive(BaseModel):
    status: Literal["ok"] = "ok"


class Check(BaseModel):
    status: Literal["ok", "unavailable"]
    latency_ms: float
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, Check]


@router.get("/healthz", response_model=Alive, summary="The process is alive")
def healthz() -> Alive:
    return Alive()


def _check(probe: Any) -> Check:
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:  # any failure of a dependency is "unavailable", with its reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check(
            status="unavailable",
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            error=reason[:300],
        )
    return Check(status="ok", latency_ms=round((time.perf_counter() - started) * 1000, 1))


def _kafka(svc: Services) -> None:
    metadata = svc.producer._require_open().list_topics(timeout=CHECK_TIMEOUT_S)
    if not metadata.brokers:
        raise ConnectionError("no broker answered")


def _postgres(svc: Services) -> None:
    with svc.pool.connection(timeout=CHECK_TIMEOUT_S) as conn:
        conn.execute("SELECT 1")


def _redis(svc: Services) -> None:
    svc.redis.ping()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The broker, PostgreSQL and Redis are reachable",
    responses={503: {"model": Readiness, "description": "a dependency is unavailable"}},
)
def readyz(svc: Annotated[Services, Depends(services)]) -> JSONResponse:
    checks = {
        "kafka": _check(lambda: _kafka(svc)),
        "postgres": _check(lambda: _postgres(svc)),
        "redis": _check(lambda: _redis(svc)),
    }
    ready = all(check.status == "ok" for check in checks.values())
    body = Readiness(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)
