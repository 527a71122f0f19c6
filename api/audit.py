"""The audit log: every write (POST, PUT, PATCH, DELETE) by an authenticated caller is a row of
``api_audit_log`` (sql/006_api_core.sql): who, with which role and credential, what, the
status it got, from where, and the request id.

The row is inserted when the response status is known and before the response is sent, so a
client that has its answer finds its row. A request refused before authentication (401) has no
actor and no row; the server's access log has it.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Principal
from api.request_id import request_id_of
from api.services import Services

log = logging.getLogger("smart_alerts.api.audit")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
USER_AGENT_MAX = 512


def record(services: Services, row: dict[str, Any]) -> None:
    with services.transaction() as conn:
        conn.execute(
            "INSERT INTO api_audit_log (actor, actor_role, via, api_key_id, method, path, "
            "status, client_address, user_agent, request_id) VALUES (%(actor)s, %(actor_role)s,"
            " %(via)s, %(api_key_id)s, %(method)s, %(path)s, %(status)s, %(client_address)s, "
            "%(user_agent)s, %(request_id)s)",
            row,
        )


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        recorded = False

        async def write(status: int) -> None:
            nonlocal recorded
            recorded = True
            principal = (scope.get("state") or {}).get("principal")
            if not isinstance(principal, Principal):
                return
            user_agent = dict(scope["headers"]).get(b"user-agent", b"").decode("latin-1")
            client = scope.get("client")
            row = {
                "actor": principal.user_id,
                "actor_role": principal.role,
                "via": principal.via,
                "api_key_id": principal.key_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "client_address": client[0] if client else None,
                "user_agent": user_agent[:USER_AGENT_MAX] or None,
                "request_id": request_id_of(scope),
            }
            try:
                await run_in_threadpool(record, scope["app"].state.services, row)
            except Exception:  # the write is done; a lost audit row must not turn it into a 5xx
                log.exception("audit row not written: %s", row)

        async def send_after_audit(message: Message) -> None:
            if message["type"] == "http.response.start":
                await write(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_after_audit)
        except Exception:
            if not recorded:
                await write(500)  # the answer ServerErrorMiddleware is about to send
            raise
