"""``Idempotency-Key`` on POST: a retried request gets the first one's answer instead of doing
the work again.

Per principal and key, Redis holds first a claim (while the first request runs) and then the
answer: status, headers (Location, ETag, ...) and body, for ``api.idempotency_ttl_seconds``. A
request with a key already answered gets that answer again (``Idempotent-Replayed: true``) if
its method, path and body are the same, a 422 problem if they differ; one that arrives while
the first is still running waits up to WAIT_S for its answer, then gets a 409 problem. A 5xx
answer is not kept (the work may not have happened), so a retry does the work again; neither
is a claim whose request died (it lapses after CLAIM_TTL_S).

Answers may hold secrets shown once (a new API key, a webhook signing secret), so the stored
answer is sealed (AES-GCM) with a key derived from the Idempotency-Key, which only the client
has: Redis holds neither the key (its entry is named by another hash of it) nor the answer in
the clear.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Principal
from api.body_limit import read_body, replay
from api.problems import problem_response

HEADER = b"idempotency-key"
KEY_PREFIX = "sa:api:idempotency"
CLAIM_TTL_S = 60
WAIT_S = 10.0
POLL_S = 0.05
_KEY = re.compile(r"[\x21-\x7e]{1,255}")

# KEYS[1]: the entry; ARGV: the claim's token, the answer (JSON), its TTL. The answer replaces
# the claim only if the claim is still this request's.
FINISH = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if cjson.decode(current)['token'] ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
end
return 1
"""


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, ttl_seconds: int) -> None:
        self.app = app
        self.ttl_seconds = ttl_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = dict(scope["headers"]).get(HEADER) if scope["type"] == "http" else None
        principal = (scope.get("state") or {}).get("principal")
        if given is None or scope["method"] != "POST" or not isinstance(principal, Principal):
            # Without a principal the route refuses the request anyway.
            await self.app(scope, receive, send)
            return
        key = given.decode("latin-1")
        if not _KEY.fullmatch(key):
            await self._problem(
                scope,
                receive,
                send,
                400,
                "the Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is best)",
            )
            return
        body = await read_body(receive)
        fingerprint = hashlib.sha256(
            b"\n".join([scope["method"].encode(), scope["path"].encode(), body])
        ).hexdigest()
        entry = f"{KEY_PREFIX}:{principal.user_id}:{hashlib.sha256(b'entry:' + given).hexdigest()}"
        sealing = hashlib.sha256(b"seal:" + given).digest()
        redis = scope["app"].state.services.aioredis
        token = uuid.uuid4().hex
        claim = json.dumps({"token": token, "fingerprint": fingerprint})
        try:
            claimed = await redis.set(entry, claim, nx=True, ex=CLAIM_TTL_S)
            stored = None if claimed else await self._answer_of(redis, entry, fingerprint)
        except RedisError as exc:
            await self._problem(
                scope,
                receive,
                send,
                503,
                f"Redis, which keeps idempotency keys, failed: {exc}; retry",
                kind="dependency-unavailable",
            )
            return
        if not claimed:
            if stored is None:
                await self._problem(
                    scope,
                    receive,
                    send,
                    409,
                    f"a request with Idempotency-Key {key!r} is still being processed: retry it "
                    "in a moment to get its answer",
                    headers={"Retry-After": "1"},
                )
            elif stored.get("fingerprint") != fingerprint:
                await self._problem(
                    scope,
                    receive,
                    send,
                    422,
                    f"Idempotency-Key {key!r} was used for a different request (method, path or "
                    "body differ): use a new key for a new request",
                    kind="idempotency-key-reused",
                )
            else:
                await _replay(_open(sealing, stored["sealed"]), send)
            return
        await self._first(
            scope, replay(body, receive), send, redis, entry, token, fingerprint, sealing
        )

    async def _answer_of(self, redis: Any, entry: str, fingerprint: str) -> dict[str, Any] | None:
        """The stored answer once there is one (or a fingerprint that differs); None if the
        first request still runs after WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while True:
            raw = await redis.get(entry)
            if raw is None:
                return None  # the first request failed (5xx) or lapsed: the client retries
            value: dict[str, Any] = json.loads(raw)
            if "sealed" in value or value.get("fingerprint") != fingerprint:
                return value
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(POLL_S)

    async def _first(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        redis: Any,
        entry: str,
        token: str,
        fingerprint: str,
        sealing: bytes,
    ) -> None:
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        answer = ""
        try:
            await self.app(scope, receive, capture)
            if start is not None and start["status"] < 500:
                sealed = _seal(
                    sealing,
                    {
                        "status": start["status"],
                        "headers": [
                            [name.decode("latin-1"), value.decode("latin-1")]
                            for name, value in start.get("headers", [])
                        ],
                        "body": base64.b64encode(b"".join(chunks)).decode(),
                    },
                )
                answer = json.dumps({"token": token, "fingerprint": fingerprint, "sealed": sealed})
        finally:
            # If Redis fails here the claim lapses after CLAIM_TTL_S; a retry then does the work.
            with contextlib.suppress(RedisError):
                await redis.eval(FINISH, 1, entry, token, answer, self.ttl_seconds)

    async def _problem(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        response = problem_response(
            status, detail, kind=kind, instance=scope["path"], headers=headers
        )
        await response(scope, receive, send)


async def _replay(stored: dict[str, Any], send: Send) -> None:
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in stored["headers"]]
    headers.append((b"idempotent-replayed", b"true"))
    await send({"type": "http.response.start", "status": stored["status"], "headers": headers})
    await send({"type": "http.response.body", "body": base64.b64decode(stored["body"])})


def _seal(key: bytes, answer: dict[str, Any]) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, json.dumps(answer).encode(), None)
    return base64.b64encode(nonce + sealed).decode()


def _open(key: bytes, sealed: str) -> dict[str, Any]:
    raw = base64.b64decode(sealed)
    answer: dict[str, Any] = json.loads(AESGCM(key).decrypt(raw[:12], raw[12:], None))
    return answer
