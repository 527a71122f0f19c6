"""Who the caller is, as the API sees its credentials."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.auth import CurrentPrincipal, Role
from api.problems import PROBLEM_JSON

router = APIRouter(prefix="/v1/me", tags=["me"])


class Me(BaseModel):
    user_id: str = Field(description="the token's sub claim, or the API key's owner")
    role: Role
    scopes: list[str] = Field(description="what these credentials may do, sorted")
    via: Literal["jwt", "api_key"]
    key_id: str | None = Field(None, description="the API key's id when called with one")


PROBLEM: dict[str, Any] = {"content": {PROBLEM_JSON: {}}}


@router.get(
    "",
    response_model=Me,
    summary="Who am I: the user, role and scopes of these credentials",
    responses={
        401: {**PROBLEM, "description": "no credentials, or they are not valid"},
        429: {**PROBLEM, "description": "rate limited"},
    },
)
def who_am_i(principal: CurrentPrincipal) -> Me:
    return Me(
        user_id=principal.user_id,
        role=principal.role,
        scopes=sorted(principal.scopes),
        via=principal.via,
        key_id=principal.key_id,
    )
