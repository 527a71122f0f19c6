"""Rate limits per principal and route class, kept in Redis so that every API process shares
one budget.

The principal is the user id when the request carries valid credentials (a JWT or an API key:
they share the user's budget), else the client address. The class is ``stream`` for the live
inbox (/v1/inbox/ws, /v1/inbox/events), ``read`` for GET and HEAD, ``write`` for the other
methods; each has its limit per minute (``api.rate_limit_*_per_minute``). Windows are fixed
minutes of Redis's clock, counted by one Lua script (atomic, one round trip). Every answer says
where the caller stands (``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset``:
seconds until the window ends); over the limit it is a 429 problem with ``Retry-After``.

Authentication happens here, first: its principal, or the problem that refused the
credentials, is kept in the request state for ``current_principal`` (api/auth.py).
/healthz and /readyz are not limited. If Redis fails, requests pass unlimited (logged): the
limiter must not take the API down with it.
"""

from __future__ import annotations

import logging
from typing import Literal

from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from api.auth import Principal, authenticate_token, bearer_token
from api.problems import Problem, problem_response
from pipeline.config import Api

log = logging.getLogger("smart_alerts.api.rate_limits")

RouteClass = Literal["read", "write", "stream"]
WINDOW_S = 60
KEY_PREFIX = "sa:api:rate"
UNLIMITED = frozenset({"/healthz", "/readyz"})
STREAM_PATHS = ("/v1/inbox/ws", "/v1/inbox/events")

# KEYS[1]: the budget's key; ARGV[1]: the window in seconds. The value is "<window start>:
# <count>"; a new window starts the count again. Returns the count (this request included)
# and the seconds until the window ends.
COUNT = """
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[1])
local start = now - (now % window)
local count = 1
local current = redis.call('GET', KEYS[1])
if current then
  local s, c = string.match(current, '^(%d+):(%d+)$')
  if tonumber(s) == start then count = tonumber(c) + 1 end
end
redis.call('SET', KEYS[1], start .. ':' .. count, 'EX', window + 1)
return {count, start + window - now}
"""


def route_class(scope: Scope) -> RouteClass:
    path: str = scope["path"]
    if scope["type"] == "websocket" or path.startswith(STREAM_PATHS):
        return "stream"
    return "read" if scope["method"] in ("GET", "HEAD") else "write"


def limit_of(config: Api, kind: RouteClass) -> int:
    return {
        "read": config.rate_limit_read_per_minute,
        "write": config.rate_limit_write_per_minute,
        "stream": config.rate_limit_stream_per_minute,
    }[kind]


async def authenticate(scope: Scope) -> Principal | None:
    """The principal of the request's credentials, if it has valid ones; a refusal is kept
    for the route to answer (health and docs need no credentials)."""
    state = scope.setdefault("state", {})
    connection = HTTPConnection(scope)
    headers = dict(scope["headers"])
    in_header = b"authorization" in headers or b"x-api-key" in headers
    # Browsers cannot set headers on a WebSocket or an EventSource: without the query's token,
    # all of them would share the budget of their address (often one proxy's).
    in_query = scope["path"].startswith(STREAM_PATHS) and "access_token" in connection.query_params
    if not in_header and not in_query:
        return None
    app_state = scope["app"].state
    try:
        token = bearer_token(connection) if in_header else connection.query_params["access_token"]
        principal = await run_in_threadpool(authenticate_token, app_state, token)
    except Problem as problem:
        state["auth_problem"] = problem
        return None
    state["principal"] = principal
    return principal


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, config: Api) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in UNLIMITED:
            await self.app(scope, receive, send)
            return
        principal = await authenticate(scope)
        if principal is not None:
            who = f"user:{principal.user_id}"
        else:
            client = scope.get("client")
            who = f"addr:{client[0] if client else 'unknown'}"
        kind = route_class(scope)
        limit = limit_of(self.config, kind)
        try:
            redis = scope["app"].state.services.aioredis
            count, reset = await redis.eval(COUNT, 1, f"{KEY_PREFIX}:{kind}:{who}", WINDOW_S)
        except RedisError as exc:
            log.warning("rate limit not checked (Redis failed: %s)", exc)
            await self.app(scope, receive, send)
            return
        headers = {
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(max(0, limit - int(count))),
            "RateLimit-Reset": str(int(reset)),
        }
        if int(count) > limit:
            await self._refuse(scope, receive, send, kind, limit, headers)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        kind: RouteClass,
        limit: int,
        headers: dict[str, str],
    ) -> None:
        response = problem_response(
            429,
            f"more than {limit} {kind} requests in a minute: wait "
            f"{headers['RateLimit-Reset']} s (Retry-After) and slow down",
            kind="rate-limited",
            instance=scope["path"],
            headers={**headers, "Retry-After": headers["RateLimit-Reset"]},
        )
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await websocket.send_denial_response(response)
        else:
            await websocket.close(code=1008, reason="rate limited")
