"""The notification profile and push device tokens, published to users.profiles."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/profile", tags=["profile"])
