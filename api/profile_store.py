"""The users' notification profiles as the API changes them: read, and change without losing
an update.

A profile lives in ``profile_documents`` (sql/008_api_profiles.sql) with a revision (the ETag).
A user without a row has the profile the job stored in ``user_alert_profiles`` (from
``users.profiles``), else the documented defaults; both are revision 0.

``change_profile`` locks the user's row (``SELECT ... FOR UPDATE``), applies the change,
validates the result as a ``Profile``, publishes it to ``users.profiles`` and waits for the
broker's acknowledgement, then commits. Changes of one user are therefore serial: none is lost,
and the order of the messages on the topic is the order of the revisions, so the last message
equals the stored document. A failed publish rolls the change back (503).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from api.problems import Problem
from api.services import Services
from pipeline.messages import Profile, QuietHours

LOCK_DOCUMENT = """
SELECT revision, document FROM profile_documents WHERE user_external_id = %s FOR UPDATE
"""
READ_DOCUMENT = "SELECT revision, document FROM profile_documents WHERE user_external_id = %s"
# The row a first change locks; concurrent first changes wait on its key, then find it.
CLAIM_DOCUMENT = """
INSERT INTO profile_documents (user_external_id, revision, document, updated_by)
VALUES (%s, 0, %s, %s) ON CONFLICT (user_external_id) DO NOTHING
"""
STORE_DOCUMENT = """
UPDATE profile_documents SET revision = %s, document = %s, updated_at = now(), updated_by = %s
WHERE user_external_id = %s
"""
DROP_CLAIM = "DELETE FROM profile_documents WHERE user_external_id = %s AND revision = 0"
JOB_PROFILE = """
SELECT timezone, channels, quiet_hours_start, quiet_hours_end, digest_seconds, max_per_hour,
       min_relevance, destinations
FROM user_alert_profiles WHERE user_external_id = %s
"""


def read_profile(services: Services, user_id: str) -> tuple[Profile, int]:
    """The user's profile and its revision (0 until the first change through the API)."""
    with services.transaction() as conn:
        row = conn.execute(READ_DOCUMENT, (user_id,)).fetchone()
        if row is not None:
            return Profile.model_validate(row["document"]), row["revision"]
        return _job_profile(conn, user_id), 0


def change_profile(
    services: Services,
    user_id: str,
    change: Callable[[Profile], Profile],
    *,
    expected_revision: int | None = None,
    actor: str,
) -> tuple[Profile, int]:
    """Apply ``change`` to the user's latest profile, validate, publish, store; the new
    profile and revision. A 412 problem when ``expected_revision`` is given and not the
    current one; 422 when the result is not a valid profile (with the field); 503 when the
    broker or the database fails (nothing is changed then). A change that leaves the profile
    as it was publishes nothing and keeps the revision."""
    with services.transaction() as conn:
        row = conn.execute(LOCK_DOCUMENT, (user_id,)).fetchone()
        if row is None:
            # A revision-0 row is never committed (the change stores revision 1, or drops it),
            # so the row locked next is this claim or another change's committed revision.
            conn.execute(CLAIM_DOCUMENT, (user_id, _document(_job_profile(conn, user_id)), actor))
            row = conn.execute(LOCK_DOCUMENT, (user_id,)).fetchone()
            if row is None:
                raise Problem(503, f"the profile of {user_id!r} could not be locked; try again")
        revision: int = row["revision"]
        current = Profile.model_validate(row["document"])
        if expected_revision is not None and expected_revision != revision:
            raise Problem(
                412,
                f"the profile of {user_id!r} is at revision {revision}, not {expected_revision}: "
                "it changed since you read it; read it again and reapply your change",
                kind="stale-version",
                current_version=revision,
            )
        changed = validated(change(current), user_id)
        if changed == current:
            if revision == 0:
                conn.execute(DROP_CLAIM, (user_id,))
            return current, revision
        revision += 1
        conn.execute(STORE_DOCUMENT, (revision, _document(changed), actor, user_id))
        services.publish(services.settings.topics.profiles, [changed])
        return changed, revision


def validated(profile: Profile, user_id: str) -> Profile:
    """``profile`` checked as a message (a change may build it without validation, as
    ``model_copy`` does); a 422 problem naming the first wrong field."""
    document = profile.model_dump(mode="json", exclude_none=True)
    return profile_from_document(document, user_id)


def profile_from_document(document: Any, user_id: str) -> Profile:
    """A profile from a JSON document meant for ``user_id``; a 422 problem naming the first
    wrong field (every error is listed in ``errors``)."""
    if isinstance(document, dict) and document.get("user_id", user_id) != user_id:
        raise Problem(
            422,
            f"user_id: the profile belongs to {user_id!r} and its user_id cannot change",
            errors=[{"pointer": "user_id", "detail": "cannot change"}],
        )
    try:
        return Profile.model_validate(document)
    except ValidationError as exc:
        errors = [
            {
                "pointer": ".".join(str(part) for part in error["loc"]) or "body",
                "detail": error["msg"],
            }
            for error in exc.errors(include_url=False)
        ]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise Problem(
            422,
            f"{errors[0]['pointer']}: {errors[0]['detail']}{more}",
            kind="invalid-profile",
            errors=errors,
        ) from None


def _document(profile: Profile) -> Jsonb:
    return Jsonb(json.loads(profile.to_json()))


def _job_profile(conn: psycopg.Connection[Any], user_id: str) -> Profile:
    """The profile the job stored from users.profiles, rebuilt from its columns (a row that
    only holds relevance scores has none); else the defaults. ``market_hours_only`` has no
    column there, so it reads false."""
    row = conn.execute(JOB_PROFILE, (user_id,)).fetchone()
    if row is None or (row["timezone"] is None and row["channels"] is None):
        return Profile(user_id=user_id)
    fields: dict[str, Any] = {"user_id": user_id}
    if row["timezone"] is not None:
        fields["timezone"] = row["timezone"]
    if row["channels"] is not None:
        fields["channels"] = row["channels"]
    if row["quiet_hours_start"] is not None and row["quiet_hours_end"] is not None:
        fields["quiet_hours"] = QuietHours(
            start=_clock(row["quiet_hours_start"]), end=_clock(row["quiet_hours_end"])
        )
    for name in ("digest_seconds", "max_per_hour", "min_relevance", "destinations"):
        if row[name] is not None:
            fields[name] = row[name]
    return Profile.model_validate(fields)


def _clock(value: time) -> str:
    return value.strftime("%H:%M")
