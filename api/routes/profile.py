"""The notification profile and push device tokens, published to users.profiles.

Every change goes through ``api.profile_store.change_profile`` (locked, validated, published
and acknowledged, then stored). Analysts read any user's profile with contact details masked,
and never write.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, for_user, require, services
from api.preconditions import etag
from api.problems import Problem
from api.profile_store import change_profile, profile_from_document, read_profile
from api.services import Services
from pipeline.fields import NUL_FREE
from pipeline.masking import mask_email, mask_phone, mask_token, mask_url
from pipeline.messages import MAX_ID_LENGTH, Destinations, Profile

router = APIRouter(prefix="/v1/profile", tags=["profile"])

MERGE_PATCH = "application/merge-patch+json"
MAX_PUSH_TOKENS = 20  # Destinations.push_tokens holds at most this many

Reader = Annotated[Principal, Depends(require("profile:read"))]
Writer = Annotated[Principal, Depends(require("profile:write"))]
Svc = Annotated[Services, Depends(services)]
# Bounded like Profile.user_id: an empty or NUL-bearing name is a 422, not a profile that
# cannot be built.
UserParam = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=NUL_FREE,
        description="whose profile (analysts read any user's, admins change any user's)",
    ),
]

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or invalid credentials"},
    403: {"description": "missing scope, or another user's profile without the role for it"},
    503: {"description": "PostgreSQL or Kafka is unavailable; nothing was changed"},
}
WRITE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    422: {"description": "the result is not a valid profile (the field is named)"},
}


class PushTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, Field(min_length=1, max_length=4096, pattern=NUL_FREE)]


def _answer(profile: Profile, revision: int, *, masked: bool = False) -> JSONResponse:
    """The profile as published (the users.profiles document), its revision as the ETag."""
    document = json.loads(profile.to_json())
    if masked:
        document["destinations"] = mask_destinations(profile.destinations)
    return JSONResponse(document, headers={"ETag": etag(revision)})


def mask_destinations(destinations: Destinations) -> dict[str, Any]:
    """Contact details as an analyst sees them: enough to tell them apart, not to use them.
    A destination this function does not know is masked whole."""
    document = destinations.model_dump(mode="json", exclude_none=True)
    return {name: _masked(name, value) for name, value in document.items()}


def _masked(name: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_masked(name, item) for item in value]
    if isinstance(value, dict):  # a webhook: its URL is the secret part, not its secret's name
        return {
            key: item if key == "secret_ref" else _masked(key, item) for key, item in value.items()
        }
    if not isinstance(value, str):
        return value
    if name == "email":
        return mask_email(value)
    if name == "phone":
        return mask_phone(value)
    if name == "push_tokens":
        return mask_token(value)
    if name == "url":
        return mask_url(value)
    return "***"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge member by member, null removes a member,
    anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def expected_revision(request: Request, services: Services, user_id: str) -> int | None:
    """The revision If-Match names: None for ``*``; 428 without the header. Of several
    ETags, the current revision if listed (change_profile checks it again under the lock)."""
    header = request.headers.get("if-match")
    if header is None:
        raise Problem(
            428,
            "changing the profile needs an If-Match header with its ETag: "
            "GET /v1/profile first, then send the change",
            kind="precondition-required",
        )
    tags = [tag.strip().removeprefix("W/").strip('"') for tag in header.split(",")]
    if "*" in tags:
        return None
    revisions = [int(tag) for tag in tags if tag.isdigit()]
    if len(revisions) > 1:
        _, current = read_profile(services, user_id)
        if current in revisions:
            return current
    # An ETag this API never made matches no revision: 412 like a stale one.
    return revisions[0] if revisions else -1


@router.get(
    "",
    summary="Read a notification profile",
    response_model=Profile,
    responses={200: {"headers": {"ETag": {"description": "the profile's revision"}}}, **PROBLEMS},
)
def get_profile(principal: Reader, svc: Svc, user_id: UserParam = None) -> JSONResponse:
    """The caller's profile (or, for analysts and admins, ``user_id``'s), as published on
    users.profiles; ``ETag`` is its revision. A user who never changed it gets the profile
    the job holds, else the defaults (revision 0). Analysts see contact details masked."""
    user = for_user(principal, user_id)
    profile, revision = read_profile(svc, user)
    return _answer(profile, revision, masked=principal.masks_contacts)


@router.patch(
    "",
    summary="Change the notification profile (JSON merge patch)",
    response_model=Profile,
    responses={
        **WRITE_PROBLEMS,
        412: {"description": "If-Match names an older revision: read again, reapply"},
        415: {"description": f"the body is not {MERGE_PATCH}"},
        428: {"description": "If-Match is missing"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                MERGE_PATCH: {
                    "schema": {
                        "type": "object",
                        "description": "RFC 7386 merge patch of the profile: members to set, "
                        "null to remove one (its default applies)",
                    }
                }
            },
        }
    },
)
async def patch_profile(
    request: Request, principal: Writer, svc: Svc, user_id: UserParam = None
) -> JSONResponse:
    """Apply a JSON merge patch to the profile. ``If-Match`` with the ETag of the profile read
    is required. The result is validated as a profile, published to users.profiles (the
    broker acknowledged it) and stored; the answer is the new profile and ETag."""
    user = for_user(principal, user_id, write=True)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != MERGE_PATCH:
        raise Problem(
            415,
            f"send the change as {MERGE_PATCH} (RFC 7386), not {media_type or 'no content type'}",
        )
    try:
        patch = json.loads(await request.body())
    except ValueError as exc:
        raise Problem(422, f"body: not JSON: {exc}") from None
    if not isinstance(patch, dict):
        raise Problem(422, "body: a merge patch of a profile is a JSON object")

    def apply(current: Profile) -> Profile:
        document = json.loads(current.to_json())
        return profile_from_document(merge_patch(document, patch), user)

    def work() -> tuple[Profile, int]:
        expected = expected_revision(request, svc, user)
        return change_profile(svc, user, apply, expected_revision=expected, actor=principal.user_id)

    profile, revision = await run_in_threadpool(work)
    return _answer(profile, revision)


@router.post(
    "/push-tokens",
    summary="Register a push device token",
    response_model=Profile,
    responses={
        **WRITE_PROBLEMS,
        409: {"description": f"the profile already holds {MAX_PUSH_TOKENS} push tokens"},
    },
)
def register_push_token(
    body: PushTokenRequest, principal: Writer, svc: Svc, user_id: UserParam = None
) -> JSONResponse:
    """Add a device token to ``destinations.push_tokens`` (registering one that is there
    changes nothing). The answer is the profile and its ETag."""
    user = for_user(principal, user_id, write=True)

    def add(current: Profile) -> Profile:
        tokens = list(current.destinations.push_tokens or [])
        if body.token in tokens:
            return current
        if len(tokens) >= MAX_PUSH_TOKENS:
            raise Problem(
                409,
                f"destinations.push_tokens: the profile holds {len(tokens)} push tokens, the "
                "most it may; unregister one (DELETE /v1/profile/push-tokens/{token}) first",
                kind="too-many-push-tokens",
            )
        return _with_tokens(current, [*tokens, body.token])

    profile, revision = change_profile(svc, user, add, actor=principal.user_id)
    return _answer(profile, revision)


@router.delete(
    "/push-tokens/{token:path}",
    summary="Unregister a push device token",
    response_model=Profile,
    responses={**PROBLEMS, 404: {"description": "the token is not registered"}},
)
def unregister_push_token(
    token: Annotated[str, Path(description="the device token, URL-encoded")],
    principal: Writer,
    svc: Svc,
    user_id: UserParam = None,
) -> JSONResponse:
    """Remove a device token from ``destinations.push_tokens``. The answer is the profile and
    its ETag."""
    user = for_user(principal, user_id, write=True)

    def remove(current: Profile) -> Profile:
        tokens = list(current.destinations.push_tokens or [])
        if token not in tokens:
            raise Problem(404, "no push token like that is registered", kind="not-found")
        tokens.remove(token)
        return _with_tokens(current, tokens or None)

    profile, revision = change_profile(svc, user, remove, actor=principal.user_id)
    return _answer(profile, revision)


def _with_tokens(profile: Profile, tokens: list[str] | None) -> Profile:
    destinations = profile.destinations.model_copy(update={"push_tokens": tokens})
    return profile.model_copy(update={"destinations": destinations})
