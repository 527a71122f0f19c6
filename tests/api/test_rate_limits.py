"""Rate limits (per principal and route class, shared by every API process through Redis) and
the request body limit, against real servers.

Every test uses a user or a loopback client address of its own: the session's Redis is shared
with the other modules, and so are its budgets.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from connectors.embedded import StackUrls
from tests.api.conftest import ApiServer, _free_port, api_settings, running_api
from tests.api.test_profile import api_key
from tests.fakes.identity import IdentityProvider

READ, WRITE, STREAM = 5, 3, 2
MAX_BODY = 2048


@pytest.fixture(scope="module")
def servers(
    stack: StackUrls, database_url: str, identity: IdentityProvider
) -> Iterator[tuple[ApiServer, ApiServer]]:
    """Two API servers on one Redis, as two processes of one deployment."""
    settings = api_settings(
        stack,
        database_url,
        identity,
        rate_limit_read_per_minute=READ,
        rate_limit_write_per_minute=WRITE,
        rate_limit_stream_per_minute=STREAM,
        max_body_bytes=MAX_BODY,
    )
    other = settings.model_copy(
        update={"api": settings.api.model_copy(update={"port": _free_port()})}
    )
    with running_api(settings, identity) as first, running_api(other, identity) as second:
        yield first, second


@pytest.fixture
def fresh_window(stack: StackUrls) -> None:
    """Start at least 15 s before the window (a minute of Redis's clock) ends, so that no
    test sees its budget renewed half-way."""
    seconds, _ = redis.Redis.from_url(stack.redis_url).time()
    left = 60 - seconds % 60
    if left < 15:
        time.sleep(left + 0.5)


def user() -> str:
    return f"rl-{uuid.uuid4().hex[:8]}"


def from_address(server: ApiServer) -> httpx.Client:
    """An anonymous client from a loopback address of its own."""
    address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.url, transport=transport, timeout=30)


def budget(response: httpx.Response) -> tuple[int, int, int]:
    h = response.headers
    return int(h["ratelimit-limit"]), int(h["ratelimit-remaining"]), int(h["ratelimit-reset"])


@pytest.mark.usefixtures("fresh_window")
def test_reads_are_counted_down_then_refused_with_retry_after(
    servers: tuple[ApiServer, ApiServer],
) -> None:
    api, _ = servers
    with api.as_user(user()) as client:
        for n in range(READ):
            response = client.get("/v1/me")
            assert response.status_code == 200
            limit, remaining, reset = budget(response)
            assert (limit, remaining) == (READ, READ - n - 1)
            assert 0 < reset <= 60
        refused = client.get("/v1/me")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert budget(refused)[:2] == (READ, 0)
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert refused.json()["detail"].startswith(f"more than {READ} read requests in a minute")


@pytest.mark.usefixtures("fresh_window")
def test_two_servers_on_one_redis_share_one_budget(
    servers: tuple[ApiServer, ApiServer],
) -> None:
    first, second = servers
    name = user()
    with first.as_user(name) as a, second.as_user(name) as b:
        statuses = [client.get("/v1/me").status_code for client in (a, b, a, b, a)]
        assert statuses == [200] * READ
        assert b.get("/v1/me").status_code == 429
        assert a.get("/v1/me").status_code == 429
    with second.as_user(user()) as someone_else:
        assert someone_else.get("/v1/me").status_code == 200


@pytest.mark.usefixtures("fresh_window")
def test_route_classes_have_budgets_of_their_own(
    servers: tuple[ApiServer, ApiServer],
) -> None:
    api, _ = servers
    with api.as_user(user()) as client:
        for _ in range(READ):
            client.get("/v1/me")
        assert client.get("/v1/me").status_code == 429
        write = client.post("/v1/me", json={})  # no such write: 405, but counted as one
        assert write.status_code == 405
        assert budget(write)[:2] == (WRITE, WRITE - 1)
        for _ in range(WRITE - 1):
            client.delete("/v1/me")
        assert client.put("/v1/me").status_code == 429


@pytest.mark.usefixtures("fresh_window")
def test_the_live_inbox_is_the_stream_class(servers: tuple[ApiServer, ApiServer]) -> None:
    api, _ = servers
    with from_address(api) as client:
        for n in range(STREAM):
            response = client.get("/v1/inbox/events")
            assert response.status_code != 429
            assert budget(response)[:2] == (STREAM, STREAM - n - 1)
        assert client.get("/v1/inbox/events").status_code == 429
        assert budget(client.get("/v1/me"))[:2] == (READ, READ - 1)


@pytest.mark.usefixtures("fresh_window")
def test_anonymous_callers_are_limited_by_address(servers: tuple[ApiServer, ApiServer]) -> None:
    api, _ = servers
    with from_address(api) as client:
        for _ in range(READ):
            response = client.get("/v1/me")
            assert response.status_code == 401
            assert "ratelimit-remaining" in response.headers
        assert client.get("/v1/me").status_code == 429
        # Bad credentials count against the address too (no guessing at full speed).
        bad = client.get("/v1/me", headers={"Authorization": "Bearer sa_x_y"})
        assert bad.status_code == 429
    with from_address(api) as elsewhere:
        assert elsewhere.get("/v1/me").status_code == 401


def test_health_is_not_limited(servers: tuple[ApiServer, ApiServer]) -> None:
    api, _ = servers
    with from_address(api) as client:
        for _ in range(READ + 3):
            response = client.get("/healthz")
            assert response.status_code == 200
            assert "ratelimit-limit" not in response.headers


def test_a_body_over_the_limit_is_413_with_or_without_content_length(
    servers: tuple[ApiServer, ApiServer],
) -> None:
    api, _ = servers
    with api.as_user(user()) as client:
        declared = client.post("/v1/me", content=b"x" * (MAX_BODY + 1))
        assert declared.status_code == 413
        assert declared.headers["content-type"] == "application/problem+json"
        assert declared.json()["detail"] == (
            f"the request body is larger than {MAX_BODY} bytes: send a smaller one"
        )

        def chunks() -> Iterator[bytes]:
            for _ in range(8):
                yield b"y" * 512

        chunked = client.post("/v1/me", content=chunks())
        assert chunked.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413
        small = client.post("/v1/me", content=iter([b"z" * 512, b"z" * 512]))
        assert small.status_code == 405  # under the limit: it reaches the router


@pytest.mark.usefixtures("fresh_window")
def test_a_token_in_the_query_of_the_live_inbox_counts_for_its_user(
    servers: tuple[ApiServer, ApiServer],
) -> None:
    api, _ = servers
    key = api_key(api, user(), [])  # valid, but without the inbox scope: refused at once
    for _ in range(STREAM):
        with from_address(api) as client:
            response = client.get("/v1/inbox/events", params={"access_token": key})
            assert response.status_code == 403
    with from_address(api) as elsewhere:
        refused = elsewhere.get("/v1/inbox/events", params={"access_token": key})
        assert refused.status_code == 429


@pytest.mark.usefixtures("fresh_window")
def test_a_websocket_over_the_stream_limit_is_refused_with_429(
    servers: tuple[ApiServer, ApiServer],
) -> None:
    api, _ = servers
    key = api_key(api, user(), [])
    url = api.url.replace("http://", "ws://") + f"/v1/inbox/ws?access_token={key}"
    for _ in range(STREAM):
        with connect(url, open_timeout=10) as socket, pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=10)
    assert refused.value.response.status_code == 429
    assert refused.value.response.headers["Retry-After"]
    assert b"more than 2 stream requests" in refused.value.response.body
