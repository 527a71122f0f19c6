"""API keys for server-to-server integrations."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])
