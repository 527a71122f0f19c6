"""Shared pytest fixtures.

``stack`` gives the URLs of a Kafka broker, PostgreSQL and Redis for the whole session: the
servers named by ``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` / ``REDIS_URL`` where set,
embedded servers (connectors/embedded.py) for the others. Nothing starts unless a test asks
for it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors.embedded import StackUrls, stack_from_env_or_embedded


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackUrls]:
    """Kafka, PostgreSQL and Redis URLs, shared by the whole test session."""
    with stack_from_env_or_embedded(tmp_path_factory.mktemp("stack")) as urls:
        yield urls
