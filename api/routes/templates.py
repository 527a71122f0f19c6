"""Rule templates: the built-in ones and those users publish (private or public)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/templates", tags=["templates"])
