"""A fake SendGrid v3 API on 127.0.0.1: records each request, answers 202 with X-Message-Id."""

from __future__ import annotations

import itertools
import json
from typing import Any

from tests.fakes.webhook_receiver import FakeHttpServer, Received, Reply


class FakeSendGrid(FakeHttpServer):
    def __init__(self) -> None:
        super().__init__(Reply(status=202))
        self._ids = itertools.count(1)

    def _next_reply(self) -> Reply:
        reply = super()._next_reply()
        if reply.status == 202 and "X-Message-Id" not in reply.headers:
            reply = Reply(status=202, headers={"X-Message-Id": f"sg-{next(self._ids)}"})
        return reply

    @staticmethod
    def json_body(received: Received) -> Any:
        return json.loads(received.body)

    @staticmethod
    def error(status: int, *errors: dict[str, str], headers: dict[str, str] | None = None) -> Reply:
        body = json.dumps({"errors": list(errors)}).encode()
        return Reply(
            status=status,
            headers={"Content-Type": "application/json", **(headers or {})},
            body=body,
        )
