"""Feedback actions on alerts, published to alerts.feedback.

The job learns relevance from them and applies mutes (docs/personalization.md). A feedback
names one of the caller's alerts (found in triggered_alerts; 404 otherwise), except a mute or
unmute of a symbol alone, which names no alert.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.auth import Principal, not_found, require, services
from api.routes.alerts import find_alert, single_condition_type
from api.services import Services
from pipeline.messages import EventTimestamp, Feedback, FeedbackAction, Id, Symbol

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])

Writer = Annotated[Principal, Depends(require("alerts:write"))]
Svc = Annotated[Services, Depends(services)]

# The alert id of a symbol mute: it names no alert, so it is no UUID (every alert id is one).
SYMBOL_MUTE_PREFIX = "symbol:"


class UserAction(StrEnum):
    """What a user may report (``delivered`` is the job's own)."""

    OPENED = "opened"
    ACTED = "acted"
    DISMISSED = "dismissed"
    SNOOZED = "snoozed"
    MUTED = "muted"
    UNMUTED = "unmuted"


MUTES = (UserAction.MUTED, UserAction.UNMUTED)


class FeedbackRequest(BaseModel):
    """A feedback on one of the caller's alerts. ``muted`` silences the alert's rule and its
    symbol (``symbol`` given: that symbol instead); ``unmuted`` lifts them. A mute or unmute
    with ``symbol`` and no ``alert_id`` concerns that symbol alone."""

    model_config = ConfigDict(extra="forbid")
    action: UserAction
    alert_id: Id | None = None
    symbol: Annotated[Symbol | None, Field(description="muted/unmuted only")] = None
    ts: Annotated[EventTimestamp | None, Field(description="when it happened; default now")] = None

    @model_validator(mode="after")
    def _names_what_it_concerns(self) -> FeedbackRequest:
        if self.symbol is not None and self.action not in MUTES:
            raise ValueError(f"symbol: only muted and unmuted name a symbol, not {self.action}")
        if self.alert_id is None and self.symbol is None:
            needs = (
                "alert_id (or, to mute a symbol alone, symbol)"
                if self.action in MUTES
                else "alert_id"
            )
            raise ValueError(f"{self.action} needs {needs}")
        return self


@router.post(
    "",
    summary="Send feedback on an alert",
    status_code=202,
    response_model=Feedback,
    response_model_exclude_none=True,
    responses={
        401: {"description": "no or invalid credentials"},
        403: {"description": "the alerts:write scope is missing (analysts never send feedback)"},
        404: {"description": "no such alert of the caller's"},
        422: {"description": "the request is invalid (the field is named)"},
        503: {"description": "PostgreSQL or Kafka is unavailable; nothing was published"},
    },
)
def send_feedback(body: FeedbackRequest, principal: Writer, svc: Svc) -> Feedback:
    """Publish the feedback to alerts.feedback (the broker acknowledged it) and answer it as
    published: the alert's symbol, and its condition type when it has exactly one, are filled
    in so the job can learn from it even when it no longer remembers the alert."""
    ts = body.ts or datetime.now(UTC)
    if body.alert_id is None:
        assert body.symbol is not None  # the request's validator
        feedback = Feedback(
            user_id=principal.user_id,
            alert_id=SYMBOL_MUTE_PREFIX + body.symbol,
            action=FeedbackAction(body.action.value),
            ts=ts,
            symbol=body.symbol,
        )
    else:
        with svc.transaction() as conn:
            row = find_alert(conn, body.alert_id)
        # Feedback is the user's own judgement: nobody gives it on another user's alert.
        if row is None or row["user_external_id"] != principal.user_id:
            raise not_found("alert", body.alert_id)
        feedback = Feedback(
            user_id=principal.user_id,
            alert_id=row["external_id"],
            action=FeedbackAction(body.action.value),
            ts=ts,
            symbol=body.symbol or row["symbol"],
            condition_type=single_condition_type(row["condition_types"] or []),
        )
    svc.publish(svc.settings.topics.feedback, [feedback])
    return feedback
