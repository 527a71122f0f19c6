"""A fake Twilio REST API (2010-04-01) on 127.0.0.1: records each request, answers like Twilio.

``POST /2010-04-01/Accounts/{sid}/Messages.json`` answers 201 with a message resource
(``sid`` "SM..."), ``.../Calls.json`` with a call resource (``sid`` "CA..."); ``FakeTwilio.error``
builds Twilio's error body (code, message, more_info, status).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.webhook_receiver import FakeHttpServer, Received, Reply

_RESOURCE = re.compile(r"^/2010-04-01/Accounts/([^/]+)/(Messages|Calls)\.json$")


class FakeTwilio(FakeHttpServer):
    def __init__(self) -> None:
        super().__init__(Reply(status=201))
        self._ids = itertools.count(1)
        self._last: tuple[str, str, dict[str, str]] | None = None

    def record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Received:
        match = _RESOURCE.match(path)
        if match:
            self._last = (match.group(1), match.group(2), self.form_of(body))
        return super().record(method, path, headers, body)

    def _next_reply(self) -> Reply:
        reply = super()._next_reply()
        if reply.status == 201 and not reply.body and self._last is not None:
            account, kind, form = self._last
            n = next(self._ids)
            prefix = "SM" if kind == "Messages" else "CA"
            sid = f"{prefix}{n:032x}"
            resource: dict[str, Any] = {
                "sid": sid,
                "account_sid": account,
                "to": form.get("To"),
                "from": form.get("From"),
                "status": "queued",
                "date_created": "Wed, 01 May 2024 14:31:00 +0000",
                "uri": f"/2010-04-01/Accounts/{account}/{kind}/{sid}.json",
            }
            if kind == "Messages":
                resource.update(body=form.get("Body"), num_segments="1", direction="outbound-api")
            else:
                resource.update(direction="outbound-api", answered_by=None)
            reply = Reply(
                status=201,
                headers={"Content-Type": "application/json"},
                body=json.dumps(resource).encode(),
            )
        return reply

    @staticmethod
    def form_of(body: bytes) -> dict[str, str]:
        """The form fields of a request body (each field once, as Twilio's client sends them)."""
        return {key: values[0] for key, values in parse_qs(body.decode()).items()}

    @staticmethod
    def basic_auth(received: Received) -> tuple[str, str] | None:
        value = received.headers.get("authorization", "")
        if not value.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        return user, password

    @staticmethod
    def error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Reply:
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return Reply(
            status=status,
            headers={"Content-Type": "application/json", **(headers or {})},
            body=json.dumps(body).encode(),
        )
