"""Topic administration: create the project's topics, wait until the broker serves them.

``create_topics`` is idempotent: a topic that already exists is left as it is (its partition
count and configuration are not changed) and is simply not reported as created. Compacted
topics (``alerts.rules``, ``portfolio.positions``, ``users.profiles``) get
``cleanup.policy=compact`` and, when given, ``delete.retention.ms`` (how long a tombstone
stays); the others ``retention.ms`` when given, else the broker's default.

Every admin client here sets ``allow.auto.create.topics=false``: some brokers (Tansu among them)
create a topic as a side effect of a metadata request that names it, which would hide a missing
topic behind a silently created one with the broker's default partition count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

__all__ = ["TopicAdminError", "TopicSpec", "admin_client", "create_topics", "wait_for_topics"]


class TopicAdminError(RuntimeError):
    """A topic could not be created or did not appear; the message names the topic(s)."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    replication: int = 1
    # Delete-policy topics: records older than this go (retention.ms); None: the broker's default.
    retention_ms: int | None = None
    # Compacted topics: how long a tombstone stays (delete.retention.ms); None: the broker's.
    tombstone_retention_ms: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a topic needs a name")
        if self.partitions < 1:
            raise ValueError(f"topic {self.name!r}: partitions must be >= 1, not {self.partitions}")
        if self.replication < 1:
            raise ValueError(
                f"topic {self.name!r}: replication must be >= 1, not {self.replication}"
            )
        if self.compacted and self.retention_ms is not None:
            raise ValueError(
                f"topic {self.name!r} is compacted: it keeps the newest record of every key, "
                "so a time retention would delete live keys"
            )
        if not self.compacted and self.tombstone_retention_ms is not None:
            raise ValueError(f"topic {self.name!r}: only compacted topics have tombstones")
        for key, value in (
            ("retention", self.retention_ms),
            ("tombstone retention", self.tombstone_retention_ms),
        ):
            if value is not None and value < 1:
                raise ValueError(f"topic {self.name!r}: {key} must be >= 1 ms, not {value}")

    def config(self) -> dict[str, str]:
        """The topic-level configuration the broker is asked for at creation."""
        if self.compacted:
            config = {"cleanup.policy": "compact"}
            if self.tombstone_retention_ms is not None:
                config["delete.retention.ms"] = str(self.tombstone_retention_ms)
            return config
        return {} if self.retention_ms is None else {"retention.ms": str(self.retention_ms)}

    def to_new_topic(self) -> NewTopic:
        return NewTopic(
            self.name,
            num_partitions=self.partitions,
            replication_factor=self.replication,
            config=self.config(),
        )


def admin_client(bootstrap: str, extra_config: dict[str, Any] | None = None) -> AdminClient:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": "smart-alerts-admin",
        "allow.auto.create.topics": False,
    }
    config.update(extra_config or {})
    return AdminClient(config)


def create_topics(
    bootstrap: str,
    specs: list[TopicSpec],
    *,
    timeout_s: float = 30.0,
    extra_config: dict[str, Any] | None = None,
) -> list[str]:
    """Create the missing topics among ``specs``; return the names of those created.

    Existing topics are fine. Any other failure raises TopicAdminError naming every topic that
    failed with the broker's message. Created topics are waited for (metadata shows them with
    their partitions) before returning, so callers can use them at once.
    """
    if not specs:
        return []
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"topic(s) listed twice: {', '.join(duplicates)}")
    admin = admin_client(bootstrap, extra_config)
    futures = admin.create_topics(
        [spec.to_new_topic() for spec in specs],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    created: list[str] = []
    failures: list[str] = []
    for spec in specs:
        try:
            futures[spec.name].result(timeout=timeout_s + 5)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            failures.append(f"{spec.name}: {_describe(error if error is not None else exc)}")
        except Exception as exc:  # a timeout of the future itself, or the client
            failures.append(f"{spec.name}: {type(exc).__name__}: {exc}")
        else:
            created.append(spec.name)
    if failures:
        raise TopicAdminError(
            f"could not create Kafka topic(s) on {bootstrap}: " + "; ".join(failures)
        )
    if created:
        wait_for_topics(bootstrap, created, timeout_s=timeout_s, extra_config=extra_config)
    return created


def wait_for_topics(
    bootstrap: str,
    names: list[str],
    timeout_s: float = 10.0,
    *,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Wait until every topic in ``names`` is listed with its partitions; return their counts.

    Raises TopicAdminError naming the topics still missing when ``timeout_s`` has passed.
    """
    admin = admin_client(bootstrap, extra_config)
    deadline = time.monotonic() + timeout_s
    wanted = list(dict.fromkeys(names))
    last_problem = ""
    while True:
        remaining = deadline - time.monotonic()
        try:
            metadata = admin.list_topics(timeout=max(0.5, min(5.0, remaining)))
        except KafkaException as exc:
            metadata = None
            last_problem = f"broker not reachable: {_describe(exc.args[0] if exc.args else exc)}"
        if metadata is not None:
            counts: dict[str, int] = {}
            missing: list[str] = []
            for name in wanted:
                topic = metadata.topics.get(name)
                if topic is None or topic.error is not None or not topic.partitions:
                    missing.append(name)
                else:
                    counts[name] = len(topic.partitions)
            if not missing:
                return counts
            last_problem = f"missing: {', '.join(missing)}"
        if time.monotonic() >= deadline:
            raise TopicAdminError(
                f"Kafka topic(s) not available on {bootstrap} after {timeout_s:g} s "
                f"({last_problem})"
            )
        time.sleep(0.1)


def _describe(error: object) -> str:
    if isinstance(error, KafkaError):
        return f"{error.name()}: {error.str()}"
    return str(error)
