"""Webhook endpoints, their signing secrets and test pings.

An endpoint is a URL of the caller's with a signing secret of its own. Creating one adds it to
the caller's profile (``destinations.webhooks``, secret ref ``endpoint:<id>``) through
``api.profile_store.change_profile``, so the job delivers every webhook notification to it,
signed with its secret; deleting it takes it out again. The secret is shown once, when made or
rotated; it is stored encrypted (api/secrets.py). After a rotation the previous secret signs
beside the new one for ``api.webhook_secret_grace_seconds``.

Endpoints are their owner's only: anyone else's is 404, as one that does not exist.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import psycopg
from cryptography.fernet import MultiFernet
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal, not_found, require, services
from api.pagination import (
    CursorParam,
    LimitParam,
    Page,
    page_of,
    time_cursor,
)
from api.problems import Problem
from api.profile_store import change_profile
from api.secrets import cipher, new_signing_secret, seal
from api.services import Services
from pipeline.fields import NUL_FREE
from pipeline.messages import MAX_WEBHOOKS, Profile, WebhookDestination, WebhookUrl
from sinks.channels.base import DeliveryError, PermanentError
from sinks.channels.webhook import ENDPOINT_REF_PREFIX, WebhookSender, endpoint_secrets

Caller = Annotated[Principal, Depends(require("webhooks"))]
Svc = Annotated[Services, Depends(services)]


def _cipher(principal: Caller) -> MultiFernet:
    """The secrets' cipher, once the credentials are checked (a 401 or 403 comes first)."""
    return cipher()


Cipher = Annotated[MultiFernet, Depends(_cipher)]

# Every route needs the key, even those that never touch a secret: without it the endpoints
# made here cannot sign, and half a working resource would hide that.
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], dependencies=[Depends(_cipher)])

COLUMNS = "id, url, description, created_at, rotated_at, previous_expires_at"

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or invalid credentials"},
    403: {"description": "the credentials lack the webhooks scope"},
    503: {"description": "SMART_ALERTS_SECRET_KEY is not set, or PostgreSQL or Kafka is down"},
}
ONE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    404: {"description": "no such endpoint of the caller's"},
    422: {"description": "the endpoint id is not a UUID"},
}


class WebhookEndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: WebhookUrl = Field(description="http:// or https://; private addresses are refused")
    description: Annotated[str, Field(max_length=500, pattern=NUL_FREE)] = ""


class WebhookEndpoint(BaseModel):
    id: uuid.UUID
    url: str
    description: str
    secret_ref: str = Field(description="how the profile names it: endpoint:<id>")
    created_at: datetime
    rotated_at: datetime | None = Field(description="the last rotation of its secret")
    previous_secret_expires_at: datetime | None = Field(
        description="until when the secret before the last rotation still signs"
    )


class WebhookEndpointWithSecret(WebhookEndpoint):
    secret: str = Field(description="the whsec_ signing secret: shown this once, never again")


class PingEvent(BaseModel):
    """The body of a test ping."""

    type: Literal["ping"] = "ping"
    endpoint_id: uuid.UUID
    sent_at: datetime


class PingResult(BaseModel):
    delivered: bool = Field(description="the receiver answered 2xx")
    status: int | None = Field(description="the receiver's HTTP status; null without an answer")
    message_id: str = Field(description="the webhook-id header sent")
    error: str | None = Field(description="why it was not delivered")


def _endpoint(row: dict[str, Any]) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["id"],
        url=row["url"],
        description=row["description"],
        secret_ref=f"{ENDPOINT_REF_PREFIX}{row['id']}",
        created_at=row["created_at"],
        rotated_at=row["rotated_at"],
        previous_secret_expires_at=row["previous_expires_at"],
    )


def _with_secret(row: dict[str, Any], secret: str) -> WebhookEndpointWithSecret:
    return WebhookEndpointWithSecret(**_endpoint(row).model_dump(), secret=secret)


def _add_to_profile(destination: WebhookDestination) -> Callable[[Profile], Profile]:
    def add(profile: Profile) -> Profile:
        destinations = profile.destinations
        hooks = list(destinations.webhooks or [])
        if any(hook.url == destination.url for hook in hooks):
            raise Problem(
                409,
                f"the profile already has a webhook to {destination.url}: remove it from the "
                "profile's destinations.webhooks first",
                kind="conflict",
            )
        if len(hooks) >= MAX_WEBHOOKS:
            raise Problem(
                409,
                f"the profile has {MAX_WEBHOOKS} webhooks, the most it may: delete one first",
                kind="conflict",
            )
        hooks.append(destination)
        return profile.model_copy(
            update={"destinations": destinations.model_copy(update={"webhooks": hooks})}
        )

    return add


def _remove_from_profile(secret_ref: str) -> Callable[[Profile], Profile]:
    def remove(profile: Profile) -> Profile:
        destinations = profile.destinations
        hooks = [hook for hook in destinations.webhooks or [] if hook.secret_ref != secret_ref]
        update = {"webhooks": hooks or None}
        return profile.model_copy(update={"destinations": destinations.model_copy(update=update)})

    return remove


@router.post(
    "",
    status_code=201,
    response_model=WebhookEndpointWithSecret,
    summary="Create a webhook endpoint (its signing secret is shown once)",
    responses={
        **PROBLEMS,
        409: {"description": "the caller has an endpoint to this URL, or 10 webhooks already"},
        422: {"description": "the URL or the description is not valid"},
    },
)
def create_endpoint(
    body: WebhookEndpointRequest, principal: Caller, svc: Svc, box: Cipher
) -> WebhookEndpointWithSecret:
    secret = new_signing_secret()
    try:
        with svc.transaction() as conn:
            row = conn.execute(
                "INSERT INTO webhook_endpoints (user_external_id, url, description, "
                f"secret_encrypted) VALUES (%s, %s, %s, %s) RETURNING {COLUMNS}",
                (principal.user_id, body.url, body.description, seal(box, secret)),
            ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise Problem(
            409,
            f"you have a webhook endpoint to {body.url} already: use it, or delete it first",
            kind="conflict",
        ) from None
    assert row is not None
    ref = f"{ENDPOINT_REF_PREFIX}{row['id']}"
    # The row first, then the profile: the job never meets a ref without its secret. A failed
    # profile change takes the row back, so nothing half-made is left.
    try:
        change_profile(
            svc,
            principal.user_id,
            _add_to_profile(WebhookDestination(url=body.url, secret_ref=ref)),
            actor=principal.user_id,
        )
    except Exception:
        with svc.transaction() as conn:
            conn.execute("DELETE FROM webhook_endpoints WHERE id = %s", (row["id"],))
        raise
    return _with_secret(row, secret)


@router.get(
    "",
    response_model=Page[WebhookEndpoint],
    summary="List the caller's webhook endpoints (never their secrets)",
    responses={**PROBLEMS, 422: {"description": "a malformed cursor or limit"}},
)
def list_endpoints(
    principal: Caller, svc: Svc, cursor: CursorParam = None, limit: LimitParam = 50
) -> Page[WebhookEndpoint]:
    after = time_cursor(cursor, uuid.UUID) or (None, None)
    with svc.transaction() as conn:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM webhook_endpoints WHERE user_external_id = %(user)s "
            "AND (%(at)s::timestamptz IS NULL OR (created_at, id) > (%(at)s, %(id)s::uuid)) "
            "ORDER BY created_at, id LIMIT %(limit)s",
            {"user": principal.user_id, "at": after[0], "id": after[1], "limit": limit + 1},
        ).fetchall()
    return page_of(
        [_endpoint(row) for row in rows],
        limit,
        lambda e: [e.created_at.isoformat(), str(e.id)],
    )


@router.get(
    "/{endpoint_id}",
    response_model=WebhookEndpoint,
    summary="One of the caller's webhook endpoints (never its secret)",
    responses=ONE_PROBLEMS,
)
def get_endpoint(endpoint_id: uuid.UUID, principal: Caller, svc: Svc) -> WebhookEndpoint:
    return _endpoint(_owned(svc, endpoint_id, principal))


@router.delete(
    "/{endpoint_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a webhook endpoint and take it out of the profile",
    responses=ONE_PROBLEMS,
)
def delete_endpoint(endpoint_id: uuid.UUID, principal: Caller, svc: Svc) -> Response:
    _owned(svc, endpoint_id, principal)
    # The profile first: once the job has the profile without it, no delivery needs its secret.
    change_profile(
        svc,
        principal.user_id,
        _remove_from_profile(f"{ENDPOINT_REF_PREFIX}{endpoint_id}"),
        actor=principal.user_id,
    )
    with svc.transaction() as conn:
        conn.execute(
            "DELETE FROM webhook_endpoints WHERE id = %s AND user_external_id = %s",
            (endpoint_id, principal.user_id),
        )
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/rotate",
    response_model=WebhookEndpointWithSecret,
    summary="Rotate the signing secret (the new one is shown once; the old one signs on "
    "during the grace period)",
    responses=ONE_PROBLEMS,
)
def rotate_secret(
    endpoint_id: uuid.UUID, principal: Caller, svc: Svc, box: Cipher
) -> WebhookEndpointWithSecret:
    secret = new_signing_secret()
    grace = svc.settings.api.webhook_secret_grace_seconds
    with svc.transaction() as conn:
        row = conn.execute(
            "UPDATE webhook_endpoints SET previous_secret_encrypted = secret_encrypted, "
            "previous_expires_at = now() + make_interval(secs => %s), secret_encrypted = %s, "
            "rotated_at = now() WHERE id = %s AND user_external_id = %s "
            f"RETURNING {COLUMNS}",
            (grace, seal(box, secret), endpoint_id, principal.user_id),
        ).fetchone()
    if row is None:
        raise not_found("webhook endpoint", str(endpoint_id))
    return _with_secret(row, secret)


@router.post(
    "/{endpoint_id}/test",
    response_model=PingResult,
    summary="Send a signed ping event to the endpoint and report the receiver's answer",
    responses=ONE_PROBLEMS,
)
def test_endpoint(endpoint_id: uuid.UUID, principal: Caller, svc: Svc, box: Cipher) -> PingResult:
    row = _owned(svc, endpoint_id, principal)
    ref = f"{ENDPOINT_REF_PREFIX}{endpoint_id}"
    try:
        with svc.transaction() as conn:
            signing = endpoint_secrets(conn, ref, box, user_id=principal.user_id, url=row["url"])
    except PermanentError as exc:  # stored under a key the API no longer has
        raise Problem(503, exc.reason, kind="secret-key-invalid") from None
    delivery = svc.settings.delivery
    sender = WebhookSender(
        endpoint_secrets=lambda _ref, _user, _url: signing,
        allow_private_networks=set(delivery.webhook_allow_private_networks),
        read_timeout=delivery.timeout_seconds,
        ca_bundle=str(delivery.webhook_ca_bundle) if delivery.webhook_ca_bundle else None,
    )
    message_id = f"msg_ping_{secrets.token_hex(12)}"
    body = PingEvent(endpoint_id=endpoint_id, sent_at=datetime.now(UTC))
    try:
        answer = sender.post(
            row["url"], ref, message_id, body.model_dump_json().encode(), user_id=principal.user_id
        )
    except DeliveryError as exc:
        return PingResult(delivered=False, status=None, message_id=message_id, error=exc.reason)
    finally:
        sender.close()
    delivered = 200 <= answer.status < 300
    return PingResult(
        delivered=delivered,
        status=answer.status,
        message_id=message_id,
        error=None if delivered else f"the receiver answered HTTP {answer.status}",
    )


def _owned(svc: Services, endpoint_id: uuid.UUID, principal: Principal) -> dict[str, Any]:
    with svc.transaction() as conn:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM webhook_endpoints WHERE id = %s AND user_external_id = %s",
            (endpoint_id, principal.user_id),
        ).fetchone()
    if row is None:
        raise not_found("webhook endpoint", str(endpoint_id))
    return row
