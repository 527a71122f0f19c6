"""A local SMTP server that keeps every message it accepts: the demo's e-mail provider.

``smart-alerts demo`` points the SMTP sender at it when no e-mail provider is configured, so
the demo delivers real e-mail over SMTP without sending any out. Each message is also written
to ``directory`` as an ``.eml`` file to open in a mail client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller

from connectors.embedded import free_ports


@dataclass
class _Keeper:
    directory: Path
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        content = bytes(envelope.content)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), content))
        (self.directory / f"{len(self.messages):04d}.eml").write_bytes(content)
        return "250 Message accepted"


class MailCatcher:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.eml"):
            old.unlink()
        self.directory = directory
        self.port = free_ports(1)[0]
        self._keeper = _Keeper(directory)
        self._controller = Controller(self._keeper, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[tuple[str, list[str], bytes]]:
        """(envelope sender, recipients, raw message) of every accepted message."""
        return list(self._keeper.messages)

    def __enter__(self) -> Self:
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command
        self._controller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._controller.stop()
