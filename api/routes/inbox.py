"""The in-app inbox: the feed, unread count, marks, and live delivery (WebSocket, SSE)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/inbox", tags=["inbox"])
