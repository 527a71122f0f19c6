"""A fake FCM HTTP v1 API on 127.0.0.1: records each request, answers like FCM.

A success is ``{"name": "projects/<project>/messages/<n>"}``; ``FakeFcm.error`` builds an error
body the way FCM sends one (google.rpc.Status with an FcmError detail).
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from tests.fakes.webhook_receiver import FakeHttpServer, Received, Reply

_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")


class FakeFcm(FakeHttpServer):
    def __init__(self) -> None:
        super().__init__(Reply(status=200))
        self._ids = itertools.count(1)
        self._project = "unknown"

    @property
    def fcm_url(self) -> str:
        """The value for ``firebase_admin.messaging._MessagingService.FCM_URL``."""
        return self.url + "/v1/projects/{0}/messages:send"

    def record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Received:
        match = _SEND_PATH.match(path)
        if match:
            self._project = match.group(1)
        return super().record(method, path, headers, body)

    def _next_reply(self) -> Reply:
        reply = super()._next_reply()
        if reply.status == 200 and not reply.body and not reply.drop and not reply.hang:
            name = f"projects/{self._project}/messages/{next(self._ids)}"
            reply = Reply(
                status=200,
                headers={"Content-Type": "application/json; charset=UTF-8"},
                body=json.dumps({"name": name}).encode(),
            )
        return reply

    @staticmethod
    def json_body(received: Received) -> Any:
        return json.loads(received.body)

    @staticmethod
    def error(
        status: int,
        rpc_status: str,
        fcm_error_code: str | None = None,
        message: str = "",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
        if fcm_error_code:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": fcm_error_code,
                }
            ]
        return Reply(
            status=status,
            headers={"Content-Type": "application/json; charset=UTF-8", **(headers or {})},
            body=json.dumps({"error": error}).encode(),
        )
