"""Feedback actions on alerts, published to alerts.feedback."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])
