"""Rules: create (JSON, rule text, template), list, read, change, enable/disable, delete,
versions."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1/rules", tags=["rules"])
