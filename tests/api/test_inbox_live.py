"""The live inbox: /v1/inbox/ws (WebSocket) and /v1/inbox/events (Server-Sent Events) fed by
the per-user Redis stream and the live pub/sub channel, on a real server. Entries are added by
the job's sink (InAppFeed.publish)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from api.routes import inbox
from sinks.redis_store import InAppFeed, live_channel
from tests.api.conftest import ApiServer
from tests.api.test_inbox import new_user, note
from tests.conftest import wait_for

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def feed(api: ApiServer) -> Iterator[InAppFeed]:
    store = InAppFeed(api.settings.redis_url or "")
    yield store
    store.close()


def ws_url(api: ApiServer, **query: str) -> str:
    url = api.url.replace("http://", "ws://") + "/v1/inbox/ws"
    return url + ("?" + str(httpx.QueryParams(query)) if query else "")


@contextmanager
def socket(api: ApiServer, user: str, **query: str) -> Iterator[ClientConnection]:
    """A WebSocket of ``user`` (token in the query) whose ``ready`` message was received."""
    with connect(ws_url(api, access_token=api.identity.token(user), **query)) as ws:
        ready = receive(ws)
        assert ready["type"] == "ready"
        yield ws


def receive(ws: ClientConnection, skip_heartbeats: bool = True) -> dict[str, Any]:
    while True:
        message = json.loads(ws.recv(timeout=TIMEOUT))
        if not (skip_heartbeats and message["type"] == "heartbeat"):
            return message


def refused(url: str, first: str | None = None, **kwargs: Any) -> tuple[int, str]:
    """The close code and reason of a socket the server refuses."""
    with connect(url, **kwargs) as ws:
        if first is not None:
            ws.send(first)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_new_entries_arrive_in_order_with_their_entry_ids(api: ApiServer, feed: InAppFeed) -> None:
    user = new_user()
    with socket(api, user) as ws:
        entry_ids = [feed.publish(note(user, n)) for n in range(3)]
        messages = [receive(ws) for _ in range(3)]
    assert [m["type"] for m in messages] == ["notification"] * 3
    assert [m["entry_id"] for m in messages] == entry_ids
    assert [m["notification"]["title"] for m in messages] == ["alert 0", "alert 1", "alert 2"]
    assert messages[0]["state"] is None
    assert messages[0]["notification"]["user_id"] == user
    assert set(messages[0]) == {"type", "entry_id", "state", "notification"}


def test_the_ready_message_names_the_newest_entry_when_no_after_is_given(
    api: ApiServer, feed: InAppFeed
) -> None:
    user = new_user()
    old = feed.publish(note(user, 0))
    with connect(ws_url(api, access_token=api.identity.token(user))) as ws:
        assert receive(ws) == {"type": "ready", "after": old}
        new = feed.publish(note(user, 1))
        message = receive(ws)
    assert (message["type"], message["entry_id"]) == ("notification", new)


def test_a_reconnect_with_the_last_entry_id_loses_nothing_and_repeats_nothing(
    api: ApiServer, feed: InAppFeed
) -> None:
    user = new_user()
    with socket(api, user, after="0-0") as ws:
        feed.publish(note(user, 0))
        first = receive(ws)
    last_seen = first["entry_id"]
    # Published while the client is away; one is read on another device meanwhile.
    missed = [feed.publish(note(user, n)) for n in (1, 2, 3)]
    with api.as_user(user) as client:
        client.post(f"/v1/inbox/n-{user}-2/mark", json={"state": "read"}).raise_for_status()
    with socket(api, user, after=last_seen) as ws:
        replayed = [receive(ws) for _ in range(3)]
        later = feed.publish(note(user, 4))
        # The next message is the new entry: nothing replayed twice came before it.
        following = receive(ws)
    assert [m["entry_id"] for m in replayed] == missed
    assert [m["notification"]["title"] for m in replayed] == ["alert 1", "alert 2", "alert 3"]
    assert [m["state"] for m in replayed] == [None, "read", None]
    assert (following["type"], following["entry_id"]) == ("notification", later)


def test_state_changes_reach_every_connected_device(api: ApiServer, feed: InAppFeed) -> None:
    user = new_user()
    feed.publish(note(user, 0))
    with socket(api, user) as phone, socket(api, user) as laptop:
        with api.as_user(user) as client:
            client.post(f"/v1/inbox/n-{user}-0/mark", json={"state": "read"}).raise_for_status()
            client.post("/v1/inbox/mark-all", json={"state": "archived"}).raise_for_status()
        for device in (phone, laptop):
            assert receive(device) == {
                "type": "state",
                "notification_id": f"n-{user}-0",
                "state": "read",
            }
            assert receive(device)["state"] == "archived"


def test_heartbeats_keep_a_quiet_connection_alive(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox, "HEARTBEAT_SECONDS", 0.2)
    with socket(api, new_user()) as ws:
        beats = [receive(ws, skip_heartbeats=False) for _ in range(2)]
    assert [b["type"] for b in beats] == ["heartbeat", "heartbeat"]
    assert beats[0]["at"].endswith("Z") and set(beats[0]) == {"type", "at"}


def test_credentials_in_a_header_or_the_first_message(api: ApiServer, feed: InAppFeed) -> None:
    user = new_user()
    token = api.identity.token(user)
    with connect(ws_url(api), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert receive(ws)["type"] == "ready"
    with connect(ws_url(api, after="0-0")) as ws:
        ws.send(json.dumps({"type": "auth", "access_token": token}))
        assert receive(ws) == {"type": "ready", "after": "0-0"}
        entry = feed.publish(note(user, 0))
        assert receive(ws)["entry_id"] == entry


def test_bad_credentials_close_with_4401_and_no_inbox_scope_with_4403(api: ApiServer) -> None:
    code, reason = refused(ws_url(api, access_token="not-a-jwt"))
    assert code == 4401 and "not a JWT" in reason
    expired = api.identity.token(new_user(), lifetime_s=-120)
    assert refused(ws_url(api, access_token=expired))[0] == 4401
    assert refused(ws_url(api), first=json.dumps({"type": "auth", "access_token": "x"}))[0] == 4401
    assert refused(ws_url(api), first="hello")[0] == 4401
    analyst = api.identity.token(new_user("ann"), ["analyst"])
    code, reason = refused(ws_url(api, access_token=analyst))
    assert code == 4403 and "'inbox' scope" in reason


def test_a_token_in_the_query_counts_against_its_users_stream_budget(api: ApiServer) -> None:
    from api.rate_limits import KEY_PREFIX

    user = new_user()
    with socket(api, user):
        pass
    with redis.Redis.from_url(api.settings.redis_url or "", decode_responses=True) as client:
        budget = client.get(f"{KEY_PREFIX}:stream:user:{user}")
    assert budget is not None and budget.endswith(":1")  # not the address's budget


def test_a_malformed_after_closes_with_4400(api: ApiServer) -> None:
    code, reason = refused(ws_url(api, access_token=api.identity.token(new_user()), after="x"))
    assert code == 4400 and "after" in reason


def _live_tasks(api: ApiServer, user: str) -> list[str]:
    """Names of the server's tasks serving ``user``'s live inbox."""
    loop = api.server.servers[0].get_loop()

    async def names() -> list[str]:
        return [t.get_name() for t in asyncio.all_tasks() if f"inbox-live:{user}:" in t.get_name()]

    return asyncio.run_coroutine_threadsafe(names(), loop).result(timeout=TIMEOUT)


def _subscribers(api: ApiServer, user: str) -> int:
    with redis.Redis.from_url(api.settings.redis_url or "", decode_responses=True) as client:
        return int(dict(client.pubsub_numsub(live_channel(user)))[live_channel(user)])


def test_a_client_that_goes_away_leaves_no_task_or_subscription(api: ApiServer) -> None:
    user = new_user()
    with socket(api, user):
        assert len(_live_tasks(api, user)) >= 3  # stream, states, heartbeat
        assert _subscribers(api, user) == 1
    wait_for(lambda: _live_tasks(api, user) == [], TIMEOUT, "the live tasks to end")
    wait_for(lambda: _subscribers(api, user) == 0, TIMEOUT, "the subscription to end")


# ---------------------------------------------------------------- Server-Sent Events


@contextmanager
def sse(api: ApiServer, user: str, **kwargs: Any) -> Iterator[Iterator[dict[str, Any]]]:
    """The events of /v1/inbox/events as dicts of their fields (``data`` parsed)."""
    headers = {"Authorization": f"Bearer {api.identity.token(user)}", **kwargs.pop("headers", {})}
    with (
        httpx.Client(base_url=api.url, timeout=TIMEOUT) as client,
        client.stream("GET", "/v1/inbox/events", headers=headers, **kwargs) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield _events(response)


def _events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    fields: dict[str, Any] = {}
    for line in response.iter_lines():
        if line:
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value
        elif fields:
            yield fields
            fields = {}


def next_event(events: Iterator[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e.get("event") not in ("heartbeat", None))


def test_sse_sends_entries_with_their_entry_ids_as_event_ids(
    api: ApiServer, feed: InAppFeed
) -> None:
    user = new_user()
    with sse(api, user) as events:
        first = next(events)
        assert first == {"retry": "3000"}
        ready = next_event(events)
        assert ready["event"] == "ready" and ready["data"]["type"] == "ready"
        entry = feed.publish(note(user, 0))
        event = next_event(events)
        assert (event["event"], event["id"]) == ("notification", entry)
        assert event["data"]["entry_id"] == entry
        assert event["data"]["notification"]["title"] == "alert 0"
        with api.as_user(user) as client:
            client.post(f"/v1/inbox/n-{user}-0/mark", json={"state": "read"}).raise_for_status()
        state = next_event(events)
        assert state == {
            "event": "state",
            "data": {"type": "state", "notification_id": f"n-{user}-0", "state": "read"},
        }


def test_sse_resumes_after_last_event_id_which_wins_over_after(
    api: ApiServer, feed: InAppFeed
) -> None:
    user = new_user()
    entries = [feed.publish(note(user, n)) for n in range(4)]
    headers = {"Last-Event-ID": entries[1] or ""}
    with sse(api, user, headers=headers, params={"after": "0-0"}) as events:
        assert next_event(events)["data"] == {"type": "ready", "after": entries[1]}
        assert [next_event(events)["id"] for _ in range(2)] == entries[2:]
    with sse(api, user, params={"after": entries[2] or ""}) as events:
        next_event(events)
        assert next_event(events)["id"] == entries[3]


def test_sse_takes_the_token_from_the_query(api: ApiServer, feed: InAppFeed) -> None:
    user = new_user()
    token = api.identity.token(user)
    with (
        httpx.Client(base_url=api.url, timeout=TIMEOUT) as client,
        client.stream(
            "GET", "/v1/inbox/events", params={"access_token": token, "after": "0-0"}
        ) as response,
    ):
        assert response.status_code == 200
        events = _events(response)
        assert next_event(events)["event"] == "ready"
        entry = feed.publish(note(user, 0))
        assert next_event(events)["id"] == entry


def test_sse_refuses_bad_tokens_and_bad_ids_with_problems(api: ApiServer) -> None:
    with api.client() as client:
        bad = client.get("/v1/inbox/events", params={"access_token": "nope"})
        assert bad.status_code == 401
        assert bad.headers["content-type"] == "application/problem+json"
        assert "not a JWT" in bad.json()["detail"]
    with api.as_user(new_user()) as client:
        malformed = client.get("/v1/inbox/events", headers={"Last-Event-ID": "yesterday"})
        assert malformed.status_code == 422
        assert malformed.json()["detail"].startswith("Last-Event-ID: 'yesterday'")
        assert client.get("/v1/inbox/events", params={"after": "1-x"}).status_code == 422


def test_an_sse_client_that_goes_away_leaves_no_task_or_subscription(api: ApiServer) -> None:
    user = new_user()
    with sse(api, user) as events:
        next_event(events)
        assert len(_live_tasks(api, user)) >= 3
        assert _subscribers(api, user) == 1
    wait_for(lambda: _live_tasks(api, user) == [], TIMEOUT, "the SSE tasks to end")
    wait_for(lambda: _subscribers(api, user) == 0, TIMEOUT, "the SSE subscription to end")
