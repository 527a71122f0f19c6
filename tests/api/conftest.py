"""Fixtures of the API tests: a real uvicorn server on 127.0.0.1 over the embedded stack (one
per test module, with the module's database and topics of its own), a test identity provider
serving its JWKS on loopback, and HTTP clients acting as users.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_app
from connectors.embedded import StackUrls
from pipeline.config import Settings
from tests.conftest import job_settings
from tests.fakes.identity import AUDIENCE, ISSUER, IdentityProvider


@pytest.fixture(scope="session")
def identity() -> Iterator[IdentityProvider]:
    with IdentityProvider() as provider:
        yield provider


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ApiServer:
    """A running API: its URL, settings and identity provider."""

    url: str
    settings: Settings
    identity: IdentityProvider
    server: uvicorn.Server

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def as_user(self, user_id: str, roles: list[str] | None = None) -> httpx.Client:
        """A client with a fresh token of ``user_id`` (role ``user`` unless given)."""
        return self.client(self.identity.token(user_id, roles))


def api_settings(
    stack: StackUrls, database_url: str, identity: IdentityProvider, **api: Any
) -> Settings:
    """The job's test settings (own topics, the module's database) plus an [api] section that
    trusts the test identity provider."""
    settings = job_settings(stack, database_url)
    config = {
        "jwks_url": identity.jwks_url,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "port": _free_port(),
        **api,
    }
    return settings.model_copy(update={"api": settings.api.model_copy(update=config)})


@contextmanager
def running_api(settings: Settings, identity: IdentityProvider) -> Iterator[ApiServer]:
    """Serve the app on uvicorn in a thread of this process until the block ends."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=settings.api.port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield ApiServer(f"http://127.0.0.1:{settings.api.port}", settings, identity, server)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def api(stack: StackUrls, database_url: str, identity: IdentityProvider) -> Iterator[ApiServer]:
    """The API of this test module: its own database and topics, the session's Redis."""
    with running_api(api_settings(stack, database_url, identity), identity) as server:
        yield server
