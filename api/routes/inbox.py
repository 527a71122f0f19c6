"""The in-app inbox: the feed, unread count, marks, and live delivery (WebSocket, SSE).

The feed is the job's Redis stream ``sa:inapp:{user_id}`` (sinks/redis_store.py); an item is
a stream entry, paged newest first by its entry id. States (``seen``, ``read``, ``archived``)
live in ``sa:inapp:state:{user_id}`` and move forward only (``InAppFeed.mark``).

Live delivery reads the stream with ``XREAD BLOCK`` from the last entry id the client saw, so
a client that reconnects with that id gets every entry published meanwhile, in order, none
twice. State changes come from the user's pub/sub channel (not kept: a client that was away
reads states from the feed). The inbox is personal: no route here acts for another user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, Literal

import redis
import redis.asyncio as aioredis
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, WebSocket
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api.auth import (
    Principal,
    authenticate_token,
    current_principal,
    require,
    services,
    unauthorized,
)
from api.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page, decode_cursor, page_of
from api.problems import Problem
from api.services import Services
from pipeline.messages import Notification, format_timestamp
from sinks.redis_store import (
    FEED_STATES,
    RedisUnavailableError,
    feed_key,
    live_channel,
    seen_key,
    state_key,
)

log = logging.getLogger("smart_alerts.api.inbox")

router = APIRouter(tags=["inbox"])

# Proxies and load balancers drop idle connections (often after 30-60 s); a heartbeat well
# inside that keeps a quiet live connection open and tells the client it is still alive.
HEARTBEAT_SECONDS = 15.0
# How long one XREAD blocks before it is issued again: bounds how long a dead Redis
# connection goes unnoticed. It must stay well below the client's socket timeout
# ([dependencies] redis_timeout_seconds), or the read of a stream quiet that long times out and
# ends the live connection: half of it, at most this.
MAX_BLOCK_MS = 2_500


def _block_ms(svc: Services) -> int:
    return max(1, min(MAX_BLOCK_MS, int(svc.settings.dependencies.redis_timeout_seconds * 500)))


# Events waiting for a slow client; when full, the stream reader waits (no event is dropped).
QUEUE_SIZE = 256
# A browser sends its token as the first WebSocket message within this time.
AUTH_MESSAGE_SECONDS = 10.0
SSE_RETRY_MS = 3000
MARK_MANY_MAX = 1000

ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")

FeedState = Literal["seen", "read", "archived"]
StateFilter = Literal["unread", "read", "archived"]
RANK: dict[str | None, int] = {None: 0, **{s: rank for rank, s in enumerate(FEED_STATES, 1)}}

Inbox = Annotated[Principal, Depends(require("inbox"))]
Svc = Annotated[Services, Depends(services)]


# ---------------------------------------------------------------- models


class InboxItem(BaseModel):
    entry_id: str = Field(description="the feed stream's entry id, e.g. 1767623400000-0")
    state: FeedState | None = Field(description="null until the notification is first marked")
    notification: Notification


class UnreadCount(BaseModel):
    unread: int = Field(description="feed entries neither read nor archived")


class Mark(BaseModel):
    state: FeedState


class MarkMany(Mark):
    notification_ids: Annotated[list[str], Field(min_length=1, max_length=MARK_MANY_MAX)]


class MarkAll(Mark):
    up_to: str | None = Field(
        None,
        description="mark only entries up to this entry id (inclusive), e.g. the newest the "
        "user has seen; omitted: every entry in the feed now",
        pattern=ENTRY_ID.pattern,
    )


class Marked(BaseModel):
    state: FeedState
    changed: list[str] = Field(description="notification ids that moved to the state")
    unchanged: list[str] = Field(description="notification ids already at or past the state")
    unread: int = Field(description="the unread count afterwards")


class NotificationEvent(BaseModel):
    """A feed entry, live: sent for each entry after the client's ``after`` id, in order."""

    type: Literal["notification"] = "notification"
    entry_id: str
    state: FeedState | None
    notification: Notification


class StateEvent(BaseModel):
    """A notification moved to a state (on any device)."""

    type: Literal["state"] = "state"
    notification_id: str
    state: FeedState


class HeartbeatEvent(BaseModel):
    type: Literal["heartbeat"] = "heartbeat"
    at: str = Field(description="the server's time, RFC 3339 UTC")


class ReadyEvent(BaseModel):
    """The first message: the live stream is subscribed; entries after ``after`` follow."""

    type: Literal["ready"] = "ready"
    after: str = Field(description="the entry id the stream follows from")


Entries = list[tuple[str, dict[str, str]]]  # stream entries, as redis-py reads them
LiveEvent = NotificationEvent | StateEvent | HeartbeatEvent | ReadyEvent


# ---------------------------------------------------------------- helpers


def _redis_down(exc: Exception) -> Problem:
    return Problem(
        503,
        f"Redis failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}",
        kind="dependency-unavailable",
    )


def _entry_id(value: str, where: str) -> str:
    if not ENTRY_ID.match(value):
        raise Problem(
            422,
            f"{where}: {value!r} is not a stream entry id (<milliseconds>-<sequence>, as in the "
            "entry_id of an inbox item)",
        )
    return value


def _item(entry_id: str, fields: dict[str, str], state: str | None) -> InboxItem:
    return InboxItem(
        entry_id=entry_id,
        state=state,  # type: ignore[arg-type]
        notification=Notification.model_validate_json(fields["json"]),
    )


def _matches(state: str | None, wanted: StateFilter | None) -> bool:
    if wanted is None:
        return True
    if wanted == "unread":
        return state not in ("read", "archived")
    return state == wanted


def _unread(svc: Services, user_id: str) -> int:
    try:
        return svc.feed.unread(user_id)
    except RedisUnavailableError as exc:
        raise _redis_down(exc) from exc


def _require_known(svc: Services, user_id: str, ids: list[str]) -> None:
    """404 naming the first id the user's feed never held (nothing is marked then)."""
    try:
        known = svc.redis.smismember(seen_key(user_id), ids)
    except redis.RedisError as exc:
        raise _redis_down(exc) from exc
    for notification_id, present in zip(ids, known, strict=True):
        if not present:
            raise Problem(
                404, f"no notification {notification_id!r} in your inbox", kind="not-found"
            )


def _mark(svc: Services, user_id: str, ids: list[str], state: FeedState) -> Marked:
    now = datetime.now(UTC)
    changed: list[str] = []
    unchanged: list[str] = []
    try:
        current = svc.feed.states(user_id)
        for notification_id in dict.fromkeys(ids):
            # Skipping what is already there saves a round trip; mark() is forward-only anyway.
            if RANK[current.get(notification_id)] < RANK[state] and svc.feed.mark(
                user_id, notification_id, state, now
            ):
                changed.append(notification_id)
            else:
                unchanged.append(notification_id)
    except RedisUnavailableError as exc:
        raise _redis_down(exc) from exc
    return Marked(state=state, changed=changed, unchanged=unchanged, unread=_unread(svc, user_id))


Responses = dict[int | str, dict[str, Any]]
NOT_AUTHENTICATED: Responses = {401: {"description": "no valid credentials"}}
FORBIDDEN: Responses = {
    403: {"description": "the credentials lack the inbox scope (analysts have none)"}
}
REDIS_DOWN: Responses = {503: {"description": "Redis is unavailable"}}
INVALID: Responses = {422: {"description": "a malformed parameter or body"}}


# ---------------------------------------------------------------- the feed


@router.get(
    "/v1/inbox",
    response_model=Page[InboxItem],
    summary="Your in-app feed, newest first",
    responses={**INVALID, **NOT_AUTHENTICATED, **FORBIDDEN, **REDIS_DOWN},
)
def list_feed(
    principal: Inbox,
    svc: Svc,
    state: Annotated[
        StateFilter | None,
        Query(description="unread: neither read nor archived; read: read, not archived"),
    ] = None,
    cursor: CursorParam = None,
    limit: LimitParam = DEFAULT_LIMIT,
) -> Page[InboxItem]:
    position = decode_cursor(cursor, length=1)
    start = "+" if position is None else "(" + _entry_id(str(position[0]), "cursor")
    key = feed_key(principal.user_id)
    # A filter may skip many entries: read more per call then (the feed holds ~1000 at most).
    chunk = limit + 1 if state is None else max(limit + 1, 200)
    items: list[InboxItem] = []
    try:
        states = svc.feed.states(principal.user_id)
        while len(items) <= limit:
            batch: Entries = svc.redis.xrevrange(  # type: ignore[assignment]
                key, max=start, min="-", count=chunk
            )
            for entry_id, fields in batch:
                entry_state = states.get(fields["notification_id"])
                if _matches(entry_state, state):
                    items.append(_item(entry_id, fields, entry_state))
            if len(batch) < chunk:
                break
            start = "(" + batch[-1][0]
    except (redis.RedisError, RedisUnavailableError) as exc:
        raise _redis_down(exc) from exc
    return page_of(items, limit, lambda item: [item.entry_id])


@router.get(
    "/v1/inbox/unread-count",
    response_model=UnreadCount,
    summary="How many feed entries are neither read nor archived",
    responses={**NOT_AUTHENTICATED, **FORBIDDEN, **REDIS_DOWN},
)
def unread_count(principal: Inbox, svc: Svc) -> UnreadCount:
    return UnreadCount(unread=_unread(svc, principal.user_id))


@router.post(
    "/v1/inbox/mark",
    response_model=Marked,
    summary="Mark many notifications seen, read or archived",
    responses={
        **INVALID,
        **NOT_AUTHENTICATED,
        **FORBIDDEN,
        404: {"description": "an id is not in your inbox; nothing was marked"},
        **REDIS_DOWN,
    },
)
def mark_many(principal: Inbox, svc: Svc, body: MarkMany) -> Marked:
    _require_known(svc, principal.user_id, body.notification_ids)
    return _mark(svc, principal.user_id, body.notification_ids, body.state)


@router.post(
    "/v1/inbox/mark-all",
    response_model=Marked,
    summary="Mark every notification in the feed (up to an entry id) seen, read or archived",
    responses={**INVALID, **NOT_AUTHENTICATED, **FORBIDDEN, **REDIS_DOWN},
)
def mark_all(principal: Inbox, svc: Svc, body: MarkAll) -> Marked:
    try:
        entries: Entries = svc.redis.xrange(  # type: ignore[assignment]
            feed_key(principal.user_id), "-", body.up_to or "+"
        )
    except redis.RedisError as exc:
        raise _redis_down(exc) from exc
    ids = [fields["notification_id"] for _entry, fields in entries]
    return _mark(svc, principal.user_id, ids, body.state)


@router.post(
    "/v1/inbox/{notification_id}/mark",
    response_model=Marked,
    summary="Mark one notification seen, read or archived",
    responses={
        **INVALID,
        **NOT_AUTHENTICATED,
        **FORBIDDEN,
        404: {"description": "the notification is not in your inbox"},
        **REDIS_DOWN,
    },
)
def mark_one(
    principal: Inbox,
    svc: Svc,
    notification_id: Annotated[str, Path(min_length=1, max_length=256)],
    body: Annotated[Mark, Body()],
) -> Marked:
    _require_known(svc, principal.user_id, [notification_id])
    return _mark(svc, principal.user_id, [notification_id], body.state)


# ---------------------------------------------------------------- live delivery


async def _last_entry_id(r: aioredis.Redis, key: str) -> str:
    newest = await r.xrevrange(key, max="+", min="-", count=1)
    return str(newest[0][0]) if newest else "0-0"


async def _follow_stream(
    r: aioredis.Redis, user_id: str, after: str, queue: asyncio.Queue[LiveEvent], block_ms: int
) -> None:
    key, states = feed_key(user_id), state_key(user_id)
    last = after
    while True:
        answer: list[tuple[str, Entries]] = await r.xread(  # type: ignore[assignment]
            {key: last}, count=100, block=block_ms
        )
        for _stream, entries in answer or ():
            current: list[str | None] = await r.hmget(  # type: ignore[assignment]
                states, [fields["notification_id"] for _, fields in entries]
            )
            for (entry_id, fields), state in zip(entries, current, strict=True):
                await queue.put(NotificationEvent(**dict(_item(entry_id, fields, state))))
                last = entry_id


async def _follow_states(pubsub: aioredis.client.PubSub, queue: asyncio.Queue[LiveEvent]) -> None:
    async for message in pubsub.listen():
        if message.get("type") != "message":
            continue
        try:
            data = json.loads(message["data"])
        except ValueError:
            continue
        # The channel also carries each new entry's notification JSON; those come from the
        # stream (in order, resumable), so only state changes are taken here.
        if isinstance(data, dict) and set(data) == {"notification_id", "state"}:
            await queue.put(StateEvent(**data))


async def _heartbeats(queue: asyncio.Queue[LiveEvent]) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        await queue.put(HeartbeatEvent(at=format_timestamp(datetime.now(UTC))))


async def live_events(
    svc: Services, user_id: str, after: str | None
) -> AsyncGenerator[LiveEvent, None]:
    """The user's live events: ``ready``, then notifications after ``after`` (None: after the
    newest entry now), state changes and heartbeats. Every task and the subscription end with
    the generator (closed, cancelled, or failed)."""
    r = svc.aioredis
    queue: asyncio.Queue[LiveEvent] = asyncio.Queue(QUEUE_SIZE)
    pubsub = r.pubsub()
    tasks: list[asyncio.Future[Any]] = []
    try:
        # Subscribed before the first read, so no state change after "ready" is missed.
        await pubsub.subscribe(live_channel(user_id))
        start = after or await _last_entry_id(r, feed_key(user_id))
        name = f"inbox-live:{user_id}"
        readers = [
            asyncio.create_task(
                _follow_stream(r, user_id, start, queue, _block_ms(svc)), name=f"{name}:stream"
            ),
            asyncio.create_task(_follow_states(pubsub, queue), name=f"{name}:states"),
            asyncio.create_task(_heartbeats(queue), name=f"{name}:heartbeat"),
        ]
        tasks.extend(readers)
        yield ReadyEvent(after=start)
        while True:
            getter = asyncio.create_task(queue.get(), name=f"{name}:next")
            tasks.append(getter)
            done, _pending = await asyncio.wait([getter, *readers], return_when="FIRST_COMPLETED")
            tasks.remove(getter)
            if getter not in done:
                getter.cancel()
                for reader in done:  # a reader ends only by failing: say why
                    reader.result()
                raise RuntimeError("a live reader stopped")
            yield getter.result()
    finally:
        # Shielded: a cancelled request (the client went away) still ends every task and
        # closes the subscription; the cancellation itself propagates.
        await asyncio.shield(_stop(tasks, pubsub))


async def _stop(tasks: list[asyncio.Future[Any]], pubsub: aioredis.client.PubSub) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):  # a dead connection is closed either way
        await pubsub.aclose()


# WebSocket close codes (4000-4999 are the application's): documented in docs/api.md.
WS_UNAUTHORIZED = 4401
WS_FORBIDDEN = 4403
WS_BAD_REQUEST = 4400
WS_UNAVAILABLE = 1011


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    # A close reason is at most 123 bytes.
    encoded = reason.encode()[:123].decode(errors="ignore")
    with contextlib.suppress(Exception):  # the client may be gone already
        await websocket.close(code, encoded)


async def _ws_token(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    query = websocket.query_params.get("access_token")
    if query:
        return query
    try:
        first = await asyncio.wait_for(websocket.receive_text(), AUTH_MESSAGE_SECONDS)
        message = json.loads(first)
    except (TimeoutError, ValueError, KeyError, WebSocketDisconnect):
        return None
    if isinstance(message, dict) and message.get("type") == "auth":
        sent = message.get("access_token")
        return sent if isinstance(sent, str) and sent else None
    return None


async def _ws_principal(websocket: WebSocket) -> Principal | None:
    """The principal of the socket's token, or None after closing it with the reason. The
    rate limiter (api/rate_limits.py) has already checked a token in a header or the query."""
    checked: dict[str, Any] = websocket.scope.get("state", {})
    try:
        if "auth_problem" in checked:
            raise checked["auth_problem"]
        principal: Principal | None = checked.get("principal")
        if principal is None:
            token = await _ws_token(websocket)
            if token is None:
                raise unauthorized(
                    "no credentials: send ?access_token=, an Authorization header or an auth "
                    "message first"
                )
            principal = await asyncio.to_thread(authenticate_token, websocket.app.state, token)
    except Problem as problem:
        code = WS_UNAUTHORIZED if problem.status == 401 else WS_UNAVAILABLE
        await _close(websocket, code, problem.detail)
        return None
    if "inbox" not in principal.scopes:
        await _close(websocket, WS_FORBIDDEN, "this needs the 'inbox' scope")
        return None
    return principal


async def _until_disconnect(websocket: WebSocket) -> None:
    """Reads (and ignores) client messages until the client goes away."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


async def _send_events(websocket: WebSocket, events: AsyncGenerator[LiveEvent, None]) -> None:
    async for event in events:
        await websocket.send_text(event.model_dump_json())


@router.websocket("/v1/inbox/ws", name="inbox_ws")
async def inbox_ws(websocket: WebSocket) -> None:
    """Live inbox over a WebSocket; the protocol is in docs/api.md ("The live inbox")."""
    await websocket.accept()
    principal = await _ws_principal(websocket)
    if principal is None:
        return
    after = websocket.query_params.get("after")
    if after is not None and not ENTRY_ID.match(after):
        await _close(websocket, WS_BAD_REQUEST, f"after: {after[:40]!r} is not a stream entry id")
        return
    svc: Services = websocket.app.state.services
    events = live_events(svc, principal.user_id, after)
    sender = asyncio.create_task(_send_events(websocket, events))
    watcher = asyncio.create_task(_until_disconnect(websocket))
    try:
        done, _pending = await asyncio.wait([sender, watcher], return_when="FIRST_COMPLETED")
    finally:
        for task in (sender, watcher):
            task.cancel()
        await asyncio.gather(sender, watcher, return_exceptions=True)
        await events.aclose()
    if sender in done and sender.exception() is not None:
        log.warning("live inbox of %s ended: %r", principal.user_id, sender.exception())
        if websocket.client_state is WebSocketState.CONNECTED:
            await _close(
                websocket, WS_UNAVAILABLE, "the feed is unavailable: reconnect with after=<id>"
            )


def _stream_principal(
    request: Request,
    access_token: Annotated[
        str | None,
        Query(description="the token, for clients that cannot set headers (EventSource)"),
    ] = None,
) -> Principal:
    checked: dict[str, Any] = request.scope.get("state", {})
    in_header = "authorization" in request.headers or "x-api-key" in request.headers
    if not in_header and "principal" not in checked and "auth_problem" not in checked:
        if not access_token:
            raise unauthorized(
                "no credentials: send 'Authorization: Bearer <token>' or ?access_token=<token>"
            )
        request.state.principal = authenticate_token(request.app.state, access_token)
    principal = current_principal(request)
    if "inbox" not in principal.scopes:
        raise Problem(
            403,
            f"this needs the 'inbox' scope, which {principal.role} {principal.user_id!r} "
            "does not have",
            kind="forbidden",
        )
    return principal


def _sse(event: LiveEvent) -> str:
    lines = []
    if isinstance(event, NotificationEvent):
        lines.append(f"id: {event.entry_id}")
    lines.append(f"event: {event.type}")
    lines.append(f"data: {event.model_dump_json()}")
    return "\n".join(lines) + "\n\n"


async def _sse_stream(events: AsyncGenerator[LiveEvent, None]) -> AsyncIterator[str]:
    try:
        yield f"retry: {SSE_RETRY_MS}\n\n"
        async for event in events:
            yield _sse(event)
    except Exception as exc:  # the stream already started: end it, the client reconnects
        log.warning("live inbox events ended: %r", exc)
    finally:
        await events.aclose()


@router.get(
    "/v1/inbox/events",
    summary="Your inbox live, as Server-Sent Events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "events notification (id: the entry id), state, heartbeat, ready; "
            "each data line is the JSON of the WebSocket message",
        },
        **INVALID,
        **NOT_AUTHENTICATED,
        **FORBIDDEN,
    },
)
async def inbox_events(
    request: Request,
    principal: Annotated[Principal, Depends(_stream_principal)],
    after: Annotated[
        str | None, Query(description="follow from after this entry id; default: the newest")
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(description="sent by EventSource on reconnect; wins over ?after="),
    ] = None,
) -> StreamingResponse:
    resume = last_event_id or after
    if resume is not None:
        _entry_id(resume, "Last-Event-ID" if last_event_id else "after")
    svc: Services = request.app.state.services
    events = live_events(svc, principal.user_id, resume)
    return StreamingResponse(
        _sse_stream(events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# ---------------------------------------------------------------- the page


def _asset(name: str) -> bytes:
    return resources.files("api").joinpath("static", name).read_bytes()


@router.get("/inbox", include_in_schema=False)
def inbox_page() -> HTMLResponse:
    return HTMLResponse(_asset("inbox.html"), headers={"Cache-Control": "no-cache"})


ASSETS = {"inbox.js": "text/javascript", "inbox.css": "text/css"}


@router.get("/inbox/{asset}", include_in_schema=False)
def inbox_asset(asset: str) -> Response:
    if asset not in ASSETS:
        raise Problem(404, f"no file {asset!r} of the inbox page", kind="not-found")
    return Response(_asset(asset), media_type=ASSETS[asset], headers={"Cache-Control": "no-cache"})
