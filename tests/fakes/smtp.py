"""An SMTP server on 127.0.0.1 (aiosmtpd) that records messages and rejects on request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Recorder:
    """aiosmtpd handler: records messages; rejects chosen recipients or DATA."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)
    data_reply: str | None = None
    rcpt_reply: str | None = None

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.unknown:
            return "550 5.1.1 <" + address + ">: Recipient address rejected: User unknown"
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.data_reply:
            return self.data_reply
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"
