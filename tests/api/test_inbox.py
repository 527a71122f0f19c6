"""The inbox's REST routes: the feed (newest first, cursor pages, state filter), the unread
count, and marks (one, many, all), over a real server and the session's Redis. Feed entries
are added by the job's own sink (InAppFeed.publish)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from pipeline.messages import Channel, Notification, Priority
from sinks.redis_store import InAppFeed
from tests.api.conftest import ApiServer


@pytest.fixture(scope="module")
def feed(api: ApiServer) -> Iterator[InAppFeed]:
    store = InAppFeed(api.settings.redis_url or "")
    yield store
    store.close()


def new_user(label: str = "u") -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def note(user_id: str, n: int, priority: Priority = Priority.HIGH) -> Notification:
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=n)
    return Notification(
        notification_id=f"n-{user_id}-{n}",
        user_id=user_id,
        alert_ids=[f"a-{user_id}-{n}"],
        title=f"alert {n}",
        message=f"AAPL price crossed {200 + n}",
        highest_priority=priority,
        channels=[Channel.IN_APP],
        window_start=at,
        window_end=at,
    )


def fill(feed: InAppFeed, user_id: str, count: int) -> list[str]:
    """``count`` notifications in the user's feed; their entry ids, oldest first."""
    ids = [feed.publish(note(user_id, n)) for n in range(count)]
    assert all(ids)
    return [i for i in ids if i]


def titles(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["notification"]["title"] for item in response.json()["items"]]


def test_the_feed_lists_newest_first_in_cursor_pages(api: ApiServer, feed: InAppFeed) -> None:
    user = new_user()
    entry_ids = fill(feed, user, 5)
    with api.as_user(user) as client:
        first = client.get("/v1/inbox", params={"limit": 2})
        assert titles(first) == ["alert 4", "alert 3"]
        item = first.json()["items"][0]
        assert item["entry_id"] == entry_ids[4]
        assert item["state"] is None
        assert item["notification"]["notification_id"] == f"n-{user}-4"
        assert item["notification"]["highest_priority"] == "HIGH"
        cursor = first.json()["next_cursor"]
        second = client.get("/v1/inbox", params={"limit": 2, "cursor": cursor})
        assert titles(second) == ["alert 2", "alert 1"]
        # A new entry does not shift later pages: the cursor names the last entry returned.
        feed.publish(note(user, 5))
        last = client.get("/v1/inbox", params={"limit": 2, "cursor": second.json()["next_cursor"]})
        assert titles(last) == ["alert 0"]
        assert last.json()["next_cursor"] is None
        assert titles(client.get("/v1/inbox"))[0] == "alert 5"


def test_an_empty_feed_is_an_empty_page(api: ApiServer) -> None:
    with api.as_user(new_user()) as client:
        response = client.get("/v1/inbox")
        assert response.json() == {"items": [], "next_cursor": None}
        assert client.get("/v1/inbox/unread-count").json() == {"unread": 0}


def test_marks_move_forward_and_filter_the_feed(api: ApiServer, feed: InAppFeed) -> None:
    user = new_user()
    fill(feed, user, 4)
    ids = [f"n-{user}-{n}" for n in range(4)]
    with api.as_user(user) as client:
        assert client.get("/v1/inbox/unread-count").json() == {"unread": 4}
        seen = client.post(f"/v1/inbox/{ids[0]}/mark", json={"state": "seen"})
        assert seen.status_code == 200, seen.text
        assert seen.json() == {"state": "seen", "changed": [ids[0]], "unchanged": [], "unread": 4}
        read = client.post(f"/v1/inbox/{ids[1]}/mark", json={"state": "read"}).json()
        assert read == {"state": "read", "changed": [ids[1]], "unchanged": [], "unread": 3}
        archived = client.post(f"/v1/inbox/{ids[2]}/mark", json={"state": "archived"}).json()
        assert archived["unread"] == 2
        # Forward only: a read notification cannot become merely seen again.
        back = client.post(f"/v1/inbox/{ids[1]}/mark", json={"state": "seen"}).json()
        assert back == {"state": "seen", "changed": [], "unchanged": [ids[1]], "unread": 2}

        assert titles(client.get("/v1/inbox", params={"state": "unread"})) == [
            "alert 3",
            "alert 0",
        ]
        assert titles(client.get("/v1/inbox", params={"state": "read"})) == ["alert 1"]
        assert titles(client.get("/v1/inbox", params={"state": "archived"})) == ["alert 2"]
        states = {
            item["notification"]["notification_id"]: item["state"]
            for item in client.get("/v1/inbox").json()["items"]
        }
        assert states == {ids[0]: "seen", ids[1]: "read", ids[2]: "archived", ids[3]: None}
    assert feed.states(user) == {ids[0]: "seen", ids[1]: "read", ids[2]: "archived"}


def test_a_filtered_feed_pages_past_entries_it_skips(api: ApiServer, feed: InAppFeed) -> None:
    user = new_user()
    fill(feed, user, 7)
    with api.as_user(user) as client:
        client.post(
            "/v1/inbox/mark",
            json={"state": "read", "notification_ids": [f"n-{user}-{n}" for n in (1, 3, 5)]},
        ).raise_for_status()
        first = client.get("/v1/inbox", params={"state": "unread", "limit": 2})
        assert titles(first) == ["alert 6", "alert 4"]
        rest = client.get(
            "/v1/inbox",
            params={"state": "unread", "limit": 2, "cursor": first.json()["next_cursor"]},
        )
        assert titles(rest) == ["alert 2", "alert 0"]
        assert rest.json()["next_cursor"] is None


def test_mark_many_marks_a_list_or_nothing(api: ApiServer, feed: InAppFeed) -> None:
    user = new_user()
    fill(feed, user, 3)
    ids = [f"n-{user}-{n}" for n in range(3)]
    with api.as_user(user) as client:
        unknown = client.post(
            "/v1/inbox/mark", json={"state": "read", "notification_ids": [ids[0], "n-nope"]}
        )
        assert unknown.status_code == 404
        assert unknown.json()["detail"] == "no notification 'n-nope' in your inbox"
        assert feed.states(user) == {}  # nothing marked
        marked = client.post(
            "/v1/inbox/mark", json={"state": "read", "notification_ids": [ids[0], ids[2], ids[0]]}
        ).json()
        assert marked == {
            "state": "read",
            "changed": [ids[0], ids[2]],
            "unchanged": [],
            "unread": 1,
        }


def test_mark_all_marks_everything_up_to_now_or_up_to_an_entry(
    api: ApiServer, feed: InAppFeed
) -> None:
    user = new_user()
    entry_ids = fill(feed, user, 4)
    ids = [f"n-{user}-{n}" for n in range(4)]
    with api.as_user(user) as client:
        upto = client.post("/v1/inbox/mark-all", json={"state": "read", "up_to": entry_ids[1]})
        assert upto.status_code == 200, upto.text
        assert upto.json() == {"state": "read", "changed": ids[:2], "unchanged": [], "unread": 2}
        everything = client.post("/v1/inbox/mark-all", json={"state": "archived"}).json()
        assert everything == {"state": "archived", "changed": ids, "unchanged": [], "unread": 0}
        again = client.post("/v1/inbox/mark-all", json={"state": "read"}).json()
        assert again["changed"] == [] and again["unchanged"] == ids


def test_unknown_and_other_users_notifications_are_404(api: ApiServer, feed: InAppFeed) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    fill(feed, alice, 1)
    secret = f"n-{alice}-0"
    with api.as_user(bob) as client:
        missing = client.post("/v1/inbox/n-missing/mark", json={"state": "read"})
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        others = client.post(f"/v1/inbox/{secret}/mark", json={"state": "read"})
        assert others.status_code == 404
        assert others.json()["detail"] == f"no notification {secret!r} in your inbox"
        assert "alert 0" not in others.text and "AAPL" not in others.text
        assert client.get("/v1/inbox").json()["items"] == []
        many = client.post("/v1/inbox/mark", json={"state": "read", "notification_ids": [secret]})
        assert many.status_code == 404
        # mark-all acts on bob's own feed only.
        assert client.post("/v1/inbox/mark-all", json={"state": "read"}).json()["changed"] == []
    assert feed.states(alice) == {}


@pytest.mark.parametrize(
    ("method", "path", "payload", "pointer"),
    [
        ("GET", "/v1/inbox?state=new", None, "query.state"),
        ("GET", "/v1/inbox?limit=0", None, "query.limit"),
        ("GET", "/v1/inbox?cursor=bm9wZQ", None, "cursor"),
        ("POST", "/v1/inbox/n-1/mark", {"state": "unread"}, "state"),
        ("POST", "/v1/inbox/n-1/mark", {}, "state"),
        ("POST", "/v1/inbox/mark", {"state": "read", "notification_ids": []}, "notification_ids"),
        ("POST", "/v1/inbox/mark", {"state": "read"}, "notification_ids"),
        ("POST", "/v1/inbox/mark-all", {"state": "read", "up_to": "yesterday"}, "up_to"),
    ],
)
def test_bad_input_is_a_422_problem(
    api: ApiServer, method: str, path: str, payload: dict | None, pointer: str
) -> None:
    with api.as_user(new_user()) as client:
        response = client.request(method, path, json=payload)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"].startswith(pointer)


def test_a_cursor_not_naming_an_entry_is_a_422(api: ApiServer) -> None:
    from api.pagination import encode_cursor

    with api.as_user(new_user()) as client:
        response = client.get("/v1/inbox", params={"cursor": encode_cursor(["DROP"])})
    assert response.status_code == 422
    assert "is not a stream entry id" in response.json()["detail"]


ROUTES = [
    ("GET", "/v1/inbox", None),
    ("GET", "/v1/inbox/unread-count", None),
    ("POST", "/v1/inbox/n-1/mark", {"state": "read"}),
    ("POST", "/v1/inbox/mark", {"state": "read", "notification_ids": ["n-1"]}),
    ("POST", "/v1/inbox/mark-all", {"state": "read"}),
    ("GET", "/v1/inbox/events", None),
]


@pytest.mark.parametrize(("method", "path", "payload"), ROUTES)
def test_without_credentials_every_route_is_401(
    api: ApiServer, method: str, path: str, payload: dict | None
) -> None:
    with api.client() as client:
        response = client.request(method, path, json=payload)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    with api.client("not-a-token") as client:
        assert client.request(method, path, json=payload).status_code == 401


@pytest.mark.parametrize(("method", "path", "payload"), ROUTES)
def test_analysts_have_no_inbox(
    api: ApiServer, feed: InAppFeed, method: str, path: str, payload: dict | None
) -> None:
    analyst = new_user("ann")
    fill(feed, analyst, 1)
    with api.as_user(analyst, ["analyst"]) as client:
        response = client.request(method, path, json=payload)
    assert response.status_code == 403
    assert "'inbox' scope" in response.json()["detail"]
    assert feed.states(analyst) == {}


def test_the_page_and_its_assets_are_served(api: ApiServer) -> None:
    with api.client() as client:
        page = client.get("/inbox")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert 'id="unread-count"' in page.text
        script = client.get("/inbox/inbox.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "/v1/inbox/ws" in script.text
        assert client.get("/inbox/inbox.css").headers["content-type"].startswith("text/css")
        assert client.get("/inbox/secrets.txt").status_code == 404
