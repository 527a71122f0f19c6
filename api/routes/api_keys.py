"""API keys for server-to-server integrations.

A key is ``sa_<prefix>_<secret>``, shown once when created; only its SHA-256 is stored
(api/auth.py checks it). A key acts as the user who made it, with the scopes given to it: never
more than that user's own (``admin`` only for admins). Revoking is final: the key gets 401 from
then on. A user lists and revokes their own keys; an admin also anyone's (``user_id``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, Query, Response
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from api.auth import SCOPES, Principal, for_user, hash_api_key, new_api_key, not_found, require
from api.auth import services as services_dependency
from api.pagination import (
    CursorParam,
    LimitParam,
    Page,
    page_of,
    time_cursor,
)
from api.problems import Problem
from api.services import Services
from pipeline.fields import NUL_FREE

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])

Caller = Annotated[Principal, Depends(require("keys"))]
Svc = Annotated[Services, Depends(services_dependency)]

COLUMNS = "id, prefix, name, scopes, created_at, last_used_at, expires_at, revoked_at"
# Eight hex characters: a new prefix meets an existing one about once in 4e9 keys.
PREFIX_ATTEMPTS = 3

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or invalid credentials"},
    403: {"description": "the credentials lack the keys scope"},
    503: {"description": "PostgreSQL is unavailable"},
}


def _known_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r} (known: {', '.join(SCOPES)})")
    return scope


Scope = Annotated[str, AfterValidator(_known_scope), Field(json_schema_extra={"enum": [*SCOPES]})]


def _in_future(moment: datetime | None) -> datetime | None:
    if moment is not None and moment <= datetime.now(UTC):
        raise ValueError("the expiry must be in the future")
    return moment


class ApiKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=NUL_FREE)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=len(SCOPES))]
    expires_at: Annotated[AwareDatetime | None, AfterValidator(_in_future)] = Field(
        None, description="when the key stops working (RFC 3339 with an offset); none: never"
    )


class ApiKey(BaseModel):
    id: uuid.UUID
    prefix: str = Field(description="the sa_<prefix>_ part of the key, to recognise it")
    name: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiKeyWithSecret(ApiKey):
    key: str = Field(description="the key itself: shown this once, never again")


@router.post(
    "",
    status_code=201,
    response_model=ApiKeyWithSecret,
    summary="Create an API key acting as the caller (the key is shown once)",
    responses={
        **PROBLEMS,
        403: {"description": "the keys scope is missing, or a scope the caller does not hold"},
        422: {"description": "an unknown scope, no scope, an empty name or a past expiry"},
    },
)
def create_key(body: ApiKeyRequest, principal: Caller, svc: Svc) -> ApiKeyWithSecret:
    scopes = sorted(set(body.scopes))
    beyond = [scope for scope in scopes if scope not in principal.scopes]
    if beyond:
        only = " (admins only)" if "admin" in beyond else ""
        raise Problem(
            403,
            f"a key cannot have scopes its maker lacks: {', '.join(beyond)}{only}",
            kind="forbidden",
        )
    attempts = PREFIX_ATTEMPTS
    while True:
        key, prefix = new_api_key()
        try:
            with svc.transaction() as conn:
                row = conn.execute(
                    "INSERT INTO api_keys (user_external_id, name, prefix, key_hash, scopes, "
                    f"expires_at) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {COLUMNS}",
                    (
                        principal.user_id,
                        body.name,
                        prefix,
                        hash_api_key(key),
                        scopes,
                        body.expires_at,
                    ),
                ).fetchone()
        except psycopg.errors.UniqueViolation:
            attempts -= 1
            if attempts == 0:
                raise
            continue
        assert row is not None
        return ApiKeyWithSecret(**row, key=key)


@router.get(
    "",
    response_model=Page[ApiKey],
    summary="List API keys, newest first (never the keys themselves)",
    responses={
        **PROBLEMS,
        403: {"description": "the keys scope is missing, or another user's keys without admin"},
        422: {"description": "a malformed cursor or limit"},
    },
)
def list_keys(
    principal: Caller,
    svc: Svc,
    user_id: Annotated[str | None, Query(description="whose keys (admins only)")] = None,
    cursor: CursorParam = None,
    limit: LimitParam = 50,
) -> Page[ApiKey]:
    # Keys are credentials: another user's list is for admins, not for readers (analysts).
    user = for_user(principal, user_id, write=True)
    after = time_cursor(cursor, uuid.UUID) or (None, None)
    with svc.transaction() as conn:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM api_keys WHERE user_external_id = %(user)s "
            "AND (%(at)s::timestamptz IS NULL OR (created_at, id) < (%(at)s, %(id)s::uuid)) "
            "ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
            {"user": user, "at": after[0], "id": after[1], "limit": limit + 1},
        ).fetchall()
    return page_of(
        [ApiKey(**row) for row in rows],
        limit,
        lambda k: [k.created_at.isoformat(), str(k.id)],
    )


@router.delete(
    "/{key_id}",
    status_code=204,
    response_class=Response,
    summary="Revoke an API key (it gets 401 from then on)",
    responses={
        **PROBLEMS,
        404: {"description": "no such key of the caller's (admins: of anyone's)"},
        422: {"description": "the key id is not a UUID"},
    },
)
def revoke_key(key_id: uuid.UUID, principal: Caller, svc: Svc) -> Response:
    with svc.transaction() as conn:
        row = conn.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE id = %s AND (user_external_id = %s OR %s) RETURNING id",
            (key_id, principal.user_id, principal.role == "admin"),
        ).fetchone()
    if row is None:
        raise not_found("API key", str(key_id))
    return Response(status_code=204)
