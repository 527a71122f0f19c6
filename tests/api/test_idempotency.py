"""Idempotency-Key on POST, against a real server: a route of this module records every call
it does (and can be made slow), so "the work was done once" is observable."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from fastapi import APIRouter, FastAPI, Response
from pydantic import BaseModel

import tests.api.conftest as api_conftest
from api import idempotency
from api.app import create_app
from api.auth import CurrentPrincipal
from connectors.embedded import StackUrls
from pipeline.config import Settings
from tests.api.conftest import ApiServer, api_settings, running_api
from tests.conftest import wait_for
from tests.fakes.identity import IdentityProvider


class Order(BaseModel):
    item: str
    slow: float = 0.0
    fail_once: bool = False


CALLS: list[tuple[str, str]] = []
FAILED: set[str] = set()
_lock = threading.Lock()
router = APIRouter()


@router.post("/v1/test-orders", status_code=201)
def place(order: Order, response: Response, principal: CurrentPrincipal) -> dict[str, str]:
    time.sleep(order.slow)
    if order.fail_once and order.item not in FAILED:
        FAILED.add(order.item)
        raise RuntimeError("the work failed")  # a 500, and nothing placed
    with _lock:
        CALLS.append((principal.user_id, order.item))
        number = str(len(CALLS))
    response.headers["Location"] = f"/v1/test-orders/{number}"
    response.headers["ETag"] = f'"{number}"'
    return {"order": number, "item": order.item}


@pytest.fixture(scope="module")
def api(stack: StackUrls, database_url: str, identity: IdentityProvider) -> Iterator[ApiServer]:
    def with_orders(settings: Settings) -> FastAPI:
        app = create_app(settings)
        app.include_router(router)
        return app

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api_conftest, "create_app", with_orders)
        with running_api(api_settings(stack, database_url, identity), identity) as server:
            yield server


def calls_of(item: str) -> int:
    return sum(1 for _, placed in CALLS if placed == item)


def post(client: httpx.Client, key: str, **order: object) -> httpx.Response:
    return client.post("/v1/test-orders", json=order, headers={"Idempotency-Key": key})


def test_a_retry_gets_the_first_answer_without_doing_the_work_again(api: ApiServer) -> None:
    key, item = str(uuid.uuid4()), f"i-{uuid.uuid4().hex[:6]}"
    with api.as_user("ida") as client:
        first = post(client, key, item=item)
        again = post(client, key, item=item)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    for header in ("location", "etag", "content-type"):
        assert again.headers[header] == first.headers[header]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert calls_of(item) == 1


def test_without_a_key_every_post_does_the_work(api: ApiServer) -> None:
    item = f"i-{uuid.uuid4().hex[:6]}"
    with api.as_user("ida") as client:
        client.post("/v1/test-orders", json={"item": item})
        client.post("/v1/test-orders", json={"item": item})
    assert calls_of(item) == 2


def test_the_same_key_with_another_body_is_422(api: ApiServer) -> None:
    key = str(uuid.uuid4())
    with api.as_user("ida") as client:
        assert post(client, key, item="a").status_code == 201
        other = post(client, key, item="b")
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert "was used for a different request" in other.json()["detail"]
    assert calls_of("b") == 0


def test_keys_belong_to_their_principal(api: ApiServer) -> None:
    key, item = str(uuid.uuid4()), f"i-{uuid.uuid4().hex[:6]}"
    with api.as_user("ida") as ida, api.as_user("olaf") as olaf:
        mine = post(ida, key, item=item)
        theirs = post(olaf, key, item=item)
    assert theirs.status_code == 201 and "idempotent-replayed" not in theirs.headers
    assert theirs.json()["order"] != mine.json()["order"]
    assert calls_of(item) == 2


def test_concurrent_requests_with_one_key_do_the_work_once(api: ApiServer) -> None:
    key, item = str(uuid.uuid4()), f"i-{uuid.uuid4().hex[:6]}"

    def one(_: int) -> httpx.Response:
        with api.as_user("ida") as client:
            return post(client, key, item=item, slow=1.0)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(4)))
    assert calls_of(item) == 1
    done = [a for a in answers if a.status_code == 201]
    waited_out = [a for a in answers if a.status_code == 409]
    assert len(done) + len(waited_out) == 4 and done
    assert {a.json()["order"] for a in done} == {done[0].json()["order"]}
    assert sum("idempotent-replayed" in a.headers for a in done) == len(done) - 1


def test_a_failed_first_request_is_not_kept(api: ApiServer) -> None:
    key, item = str(uuid.uuid4()), f"i-{uuid.uuid4().hex[:6]}"
    with api.as_user("ida") as client:  # the server closes the connection after a 500
        assert post(client, key, item=item, fail_once=True).status_code == 500
    with api.as_user("ida") as client:
        retried = post(client, key, item=item, fail_once=True)
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert calls_of(item) == 1


def test_a_malformed_key_is_400(api: ApiServer) -> None:
    with api.as_user("ida") as client:
        response = post(client, "x" * 256, item="long")
    assert response.status_code == 400
    assert "1 to 255 visible ASCII characters" in response.json()["detail"]


def test_unauthenticated_posts_are_refused_before_the_key_is_looked_at(api: ApiServer) -> None:
    with api.client() as client:
        response = post(client, str(uuid.uuid4()), item="anon")
    assert response.status_code == 401
    assert calls_of("anon") == 0


def test_a_request_that_waits_too_long_for_the_first_gets_409(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "WAIT_S", 0.3)  # the server runs in this process
    key, item = str(uuid.uuid4()), f"i-{uuid.uuid4().hex[:6]}"

    def first() -> httpx.Response:
        with api.as_user("ida") as client:
            return post(client, key, item=item, slow=3.0)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(first)
        entry = f"sa:api:idempotency:ida:{hashlib.sha256(b'entry:' + key.encode()).hexdigest()}"
        store = redis.Redis.from_url(api.settings.redis_url or "")
        wait_for(lambda: bool(store.exists(entry)), 10, "the first request's claim")
        with api.as_user("ida") as client:
            waited = post(client, key, item=item, slow=3.0)
        assert waited.status_code == 409
        assert waited.headers["retry-after"] == "1"
        assert "still being processed" in waited.json()["detail"]
        assert running.result().status_code == 201
    with api.as_user("ida") as client:
        retried = post(client, key, item=item, slow=3.0)
    assert retried.headers["idempotent-replayed"] == "true"
    assert calls_of(item) == 1


def test_a_created_api_key_is_replayed_but_not_kept_in_the_clear(api: ApiServer) -> None:
    key, name = str(uuid.uuid4()), f"ci-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "scopes": ["rules:read"]}
    with api.as_user("ida") as client:
        first = client.post("/v1/api-keys", json=body, headers={"Idempotency-Key": key})
        again = client.post("/v1/api-keys", json=body, headers={"Idempotency-Key": key})
        listed = client.get("/v1/api-keys").json()["items"]
    assert first.status_code == 201, first.text
    assert again.json() == first.json()
    assert [item["name"] for item in listed].count(name) == 1
    secret = first.json()["key"]
    stored = redis.Redis.from_url(api.settings.redis_url or "")
    values = [stored.get(k) or b"" for k in stored.scan_iter("sa:api:idempotency:ida:*")]
    assert values and not any(secret.encode() in value or key.encode() in value for value in values)
