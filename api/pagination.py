"""Cursor pagination: a page is ``{"items": [...], "next_cursor": "..." | null}``.

The cursor is opaque to clients (URL-safe base64 of JSON): the sort key of the last item
returned, so the next page starts strictly after it whatever was inserted meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from api.problems import Problem

T = TypeVar("T")
K = TypeVar("K")

DEFAULT_LIMIT = 50


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(position: list[Any]) -> str:
    raw = json.dumps(position, separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, length: int) -> list[Any] | None:
    """The position a cursor names, or None for the first page; a 422 problem if malformed."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)
    except (binascii.Error, ValueError):
        position = None
    if not isinstance(position, list) or len(position) != length:
        raise invalid_cursor()
    return position


def invalid_cursor() -> Problem:
    return Problem(
        422,
        "cursor: not a cursor this API returned (pass next_cursor back unchanged)",
        kind="invalid-cursor",
    )


def time_cursor(cursor: str | None, key: Callable[[Any], K]) -> tuple[datetime, K] | None:
    """The (time, key) position a cursor names in a list ordered by a time and then a unique
    key (``key`` parses it: ``uuid.UUID``, ``str``); None for the first page, 422 if it is not
    a cursor this API made."""
    position = decode_cursor(cursor, length=2)
    if position is None:
        return None
    try:
        return datetime.fromisoformat(str(position[0])), key(position[1])
    except (TypeError, ValueError):
        raise invalid_cursor() from None


CursorParam = Annotated[
    str | None, Query(description="next_cursor of the previous page; omit for the first page")
]
LimitParam = Annotated[int, Query(ge=1, le=200, description="items per page")]


def page_of(items: list[T], limit: int, position_of: Any) -> Page[T]:
    """A page from ``limit + 1`` fetched rows: the extra row only tells that more exist."""
    more = len(items) > limit
    items = items[:limit]
    cursor = encode_cursor(position_of(items[-1])) if more and items else None
    return Page[T](items=items, next_cursor=cursor)
