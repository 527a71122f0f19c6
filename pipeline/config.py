"""Configuration: a TOML file, overridden by environment variables; secrets only from the env.

Precedence, highest first: ``SMART_ALERTS_<SECTION>__<KEY>`` variables (and the conventional
``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``, ``REDIS_URL``), then the TOML file given with
``--config`` (or ``SMART_ALERTS_CONFIG``), then the defaults below. docs/operations.md lists
every key.
"""

from __future__ import annotations

import json
import os
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipeline.messages import Priority, describe_validation_error


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Topics(_Section):
    ticks: str = "market.ticks"
    options_flow: str = "market.options_flow"
    rules: str = "alerts.rules"
    positions: str = "portfolio.positions"
    feedback: str = "alerts.feedback"
    profiles: str = "users.profiles"
    triggered: str = "alerts.triggered"
    notifications: str = "alerts.notifications"
    dlq: str = "alerts.dlq"

    def inputs(self) -> list[str]:
        return [
            self.rules,
            self.profiles,
            self.positions,
            self.ticks,
            self.options_flow,
            self.feedback,
        ]

    @classmethod
    def prefixed(cls, prefix: str) -> dict[str, str]:
        """Every topic name under ``prefix`` (``t1.market.ticks``): topics of a run of their own,
        as tests and benches use beside others on one broker."""
        return {name: f"{prefix}.{default}" for name, default in cls().model_dump().items()}

    def reference(self) -> list[str]:
        """Compacted topics read to their end before market data flows."""
        return [self.rules, self.profiles, self.positions]


class Partitions(_Section):
    """What ``topics create`` gives each kind of topic: partitions, replicas, retention.
    Existing topics are left as they are."""

    market: int = Field(6, ge=1)
    reference: int = Field(3, ge=1)
    feedback: int = Field(3, ge=1)
    outputs: int = Field(6, ge=1)
    # Copies of every partition; 1 suits a one-broker dev stack, production clusters want 3.
    replication_factor: int = Field(1, ge=1, le=32)
    # Time retention (retention.ms) per kind; None leaves the broker's default. Without recovery
    # a restart re-reads the market topics from their start, so this also bounds that replay.
    market_retention_hours: float | None = Field(72.0, gt=0)
    feedback_retention_hours: float | None = Field(720.0, gt=0)  # the learning engine's input
    outputs_retention_hours: float | None = Field(168.0, gt=0)
    # Reference topics are compacted (kept by key, not by time); a tombstone (a deleted rule or
    # position) stays this long (delete.retention.ms). A job stopped for longer than this may
    # never see the delete after compaction, so keep it above the longest outage you expect.
    reference_tombstone_hours: float = Field(168.0, gt=0)


class Engine(_Section):
    shard_count: int = Field(64, ge=1, le=65536)
    user_shard_count: int = Field(16, ge=1, le=65536)  # personalization keys (users per key)
    window_seconds: int = Field(60, ge=1, le=86400)
    # A window closes once every market partition has passed its end by this much event time;
    # ``grace_seconds`` is the key's former name.
    allowed_lateness_seconds: int = Field(
        5, ge=0, le=3600, validation_alias=AliasChoices("allowed_lateness_seconds", "grace_seconds")
    )
    # A market partition with no new record for this long stops holding the watermark back.
    idle_partition_seconds: float = Field(10.0, gt=0, le=3600)
    # An item that makes a step raise: "dead_letter" (to alerts.dlq, the job goes on) or "stop".
    on_item_error: Literal["dead_letter", "stop"] = "dead_letter"
    # SIGTERM/SIGINT: how long in-flight deliveries get to finish before their claims are released.
    shutdown_grace_seconds: float = Field(10.0, ge=0, le=600)
    epoch_ms: int = Field(500, ge=10, le=60000)
    batch_size: int = Field(2000, ge=1)
    workers_per_process: int = Field(1, ge=1)
    process_id: int | None = None
    addresses: list[str] | None = None


class Recovery(_Section):
    directory: Path | None = None
    partitions: int = Field(1, ge=1)
    snapshot_seconds: float = Field(10.0, gt=0)
    backup_seconds: float = Field(0.0, ge=0)
    # A saved input position past the end of its partition (the broker lost data or the topic
    # was recreated): "stop" with an error naming the partition, or re-read from "earliest",
    # or skip to "latest".
    on_lost_offsets: Literal["stop", "earliest", "latest"] = "stop"


class Dependencies(_Section):
    """Timeouts and retries for PostgreSQL and Redis: a frozen or stopped server is retried
    with exponential backoff for ``retry_for_seconds``, then the job exits with one line."""

    connect_timeout_seconds: float = Field(5.0, gt=0, le=300)
    statement_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    redis_timeout_seconds: float = Field(5.0, gt=0, le=300)
    retry_for_seconds: float = Field(60.0, ge=0, le=3600)
    # At start-up the broker, PostgreSQL and Redis may not be up yet (a compose file started at
    # once): verbs wait this long for them, with backoff, before exiting 3; 0 fails at once.
    startup_wait_seconds: float = Field(60.0, ge=0, le=3600)


class InApp(_Section):
    stream_maxlen: int = Field(1000, ge=1)


class Delivery(_Section):
    """Channel providers and delivery limits; secrets come from the environment only:
    SENDGRID_API_KEY, SMTP_PASSWORD, TWILIO_AUTH_TOKEN, and webhook secrets by their refs."""

    queue_size: int = Field(10_000, ge=1)
    threads_per_channel: int = Field(4, ge=1, le=64)  # concurrent provider calls per channel
    per_user_per_minute: int = Field(30, ge=1)
    per_channel_per_second: int = Field(50, ge=1)
    timeout_seconds: float = Field(10.0, gt=0)
    resume_seconds: float = Field(30.0, gt=0)  # how often the outbox is scanned for open rows
    lease_seconds: float = Field(120.0, gt=0)  # a SENDING row abandoned this long is reopened
    breaker_failures: int = Field(5, ge=1)  # consecutive transient failures that open a circuit
    breaker_cooldown_seconds: float = Field(30.0, gt=0)  # then one trial call
    push_deadline_seconds: float = Field(300, gt=0)
    email_deadline_seconds: float = Field(900, gt=0)
    sms_deadline_seconds: float = Field(300, gt=0)
    voice_deadline_seconds: float = Field(120, gt=0)
    webhook_deadline_seconds: float = Field(600, gt=0)
    # Push: Firebase Cloud Messaging (a service-account JSON file)
    fcm_credentials_file: Path | None = None
    fcm_project_id: str | None = None
    # E-mail: SendGrid or SMTP
    email_provider: Literal["sendgrid", "smtp"] | None = None
    email_from: str | None = None
    # The user's notification settings page, "{user_id}" filled in: the link at the foot of every
    # e-mail and its List-Unsubscribe header. Unset, e-mails carry neither.
    settings_url: str | None = None
    sendgrid_host: str = "https://api.sendgrid.com"
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_username: str | None = None
    # SMS and voice: Twilio
    twilio_account_sid: str | None = None
    twilio_from: str | None = None
    twilio_status_callback: str | None = None
    twilio_base_url: str | None = None
    # Webhooks: private, loopback and link-local targets are refused unless listed here
    webhook_allow_private_networks: list[str] = Field(default_factory=list)
    webhook_ca_bundle: Path | None = None  # CA certificates for receivers with a private CA


class Personalization(_Section):
    """Staleness limits per priority, and the learning engine's parameters."""

    stale_low_seconds: int = Field(3600, ge=1)
    stale_medium_seconds: int = Field(1800, ge=1)
    stale_high_seconds: int = Field(600, ge=1)
    stale_critical_seconds: int = Field(300, ge=1)  # wall clock only: CRITICAL is never held
    learning_alpha: float = Field(0.2, gt=0, le=1)
    learning_half_life_days: float = Field(14.0, gt=0)
    ignore_after_hours: float = Field(24.0, gt=0)
    # What the desk orders and filters alerts by: "ema" (the scores above) or "trained" (the
    # model `smart-alerts learn train` saved in relevance_model_path; docs/personalization.md).
    relevance_model: Literal["ema", "trained"] = "ema"
    relevance_model_path: Path | None = None

    def stale_limits(self) -> dict[Priority, timedelta]:
        """The age past which an alert of each priority is not pushed any more."""
        return {
            Priority.LOW: timedelta(seconds=self.stale_low_seconds),
            Priority.MEDIUM: timedelta(seconds=self.stale_medium_seconds),
            Priority.HIGH: timedelta(seconds=self.stale_high_seconds),
            Priority.CRITICAL: timedelta(seconds=self.stale_critical_seconds),
        }


# An annual, continuously compounded rate or yield: within ±100 %, so exp(rate × years) stays
# finite for any expiry a contract can have.
AnnualRate = Annotated[float, Field(ge=-1, le=1)]


class Greeks(_Section):
    """IV and greeks derived for option ticks and prints that carry a price but none
    (pipeline/evaluate/greeks.py, docs/rules.md "Derived IV and greeks")."""

    enabled: bool = True
    # The unit the feed's ``iv`` uses, so derived values compare with the same thresholds.
    iv_unit: Literal["percent", "fraction"] = "percent"
    risk_free_rate: AnnualRate = 0.04  # no curve: one rate for every expiry
    dividend_yield: AnnualRate = 0.0  # for underlyings not in dividend_yields
    dividend_yields: dict[str, AnnualRate] = Field(default_factory=dict)  # per underlying


class Api(_Section):
    """The HTTP API (``smart-alerts api``). Secrets come from the environment only:
    SMART_ALERTS_API_JWT_SECRET (HS256 tokens, only with ``jwt_hs256``) and
    SMART_ALERTS_SECRET_KEY (encrypts webhook signing secrets at rest)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Identity provider: tokens are verified against its JWKS (RS256/ES256, keys by "kid").
    jwks_url: str | None = None
    jwks_cache_seconds: float = Field(300.0, gt=0)
    # An unknown "kid" refetches the JWKS (a rotated key), but at most once per this many
    # seconds, so tokens with made-up kids cannot make every request a fetch from the provider.
    jwks_refresh_cooldown_seconds: float = Field(10.0, ge=0)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: float = Field(30.0, ge=0, le=300)
    jwt_hs256: bool = False  # also accept HS256 tokens signed with SMART_ALERTS_API_JWT_SECRET
    # The claim holding the roles (a list or a space-separated string); dots walk into objects,
    # as in "realm_access.roles".
    roles_claim: str = "roles"
    max_body_bytes: int = Field(1_048_576, ge=1024)
    rate_limit_read_per_minute: int = Field(600, ge=1)
    rate_limit_write_per_minute: int = Field(120, ge=1)
    rate_limit_stream_per_minute: int = Field(30, ge=1)
    idempotency_ttl_seconds: int = Field(86_400, ge=60)
    webhook_secret_grace_seconds: int = Field(86_400, ge=0)


# The archive's topics by their [topics] key (docs/contracts.md, "Archive").
ArchivedTopicKey = Literal[
    "ticks", "options_flow", "rules", "feedback", "triggered", "notifications", "dlq"
]


class Archive(_Section):
    """The Parquet archive written by ``smart-alerts archive`` (docs/operations.md, "Archive";
    layout in docs/contracts.md). S3 credentials come from the environment only
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, or the role of
    the instance or pod), never from this section."""

    # A folder, or s3://bucket/prefix (any URI pyarrow's filesystems read); --root overrides.
    root: str | None = None
    # Topics by config key ([topics]): the input and output streams, and the dead letters.
    topics: list[ArchivedTopicKey] = Field(
        default_factory=lambda: list(get_args(ArchivedTopicKey)), min_length=1
    )
    # A partition's file is written when it holds this many rows or this many bytes of
    # messages (as read from Kafka), or when its first record was read this long ago: files of
    # tens of MB (a tick takes about 10 bytes of Parquet), and rows in the archive within
    # roll_seconds. Rows wait compressed, so memory is about the files being built.
    max_rows: int = Field(5_000_000, ge=1)
    max_bytes: int = Field(1024 * 1024 * 1024, ge=1024)
    roll_seconds: float = Field(3600.0, gt=0)
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = "zstd"
    # An S3-compatible server (MinIO, Ceph, ...): http(s)://host:port; None: AWS itself.
    s3_endpoint: str | None = None
    s3_region: str | None = None
    # Where the archived offsets are committed, for consumer-lag tools; the archiver itself
    # resumes from its files, never from these.
    group_id: str = "smart-alerts-archive"
    batch_size: int = Field(5000, ge=1)  # records read from a partition at a time
    progress_seconds: float = Field(10.0, gt=0)  # how often a progress line is logged


class Retention(_Section):
    """How long the month-partitioned history is kept: ``smart-alerts maintain`` drops a month
    partition once it is older than the current UTC month minus these many whole months
    (docs/operations.md, "History partitions and retention")."""

    alerts_months: int = Field(13, ge=1)  # triggered_alerts: a year back, and this month
    deliveries_months: int = Field(13, ge=1)  # delivery_logs
    # alert_feedback: two years, so the learning engine trains on a whole season twice.
    feedback_months: int = Field(25, ge=1)
    # Partitions made this many months ahead, so a missed run or two never sends a month's
    # rows to the default partition.
    premake_months: int = Field(2, ge=0, le=24)
    # No table lock is waited for longer (a long query holds one, and a waiting lock stalls
    # the job's writes queued behind it); the next run does what is left.
    lock_timeout_seconds: float = Field(10.0, gt=0, le=600)


class Logging(_Section):
    """The job's and the API's log on stderr (docs/operations.md, "Logs")."""

    # "auto": text for a person when stderr is a terminal, JSON lines otherwise (a container,
    # a file, a pipe: what log collectors read); "json" or "text" force one.
    format: Literal["auto", "json", "text"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # -v makes it DEBUG


class Ops(_Section):
    """The job's ops endpoints: /metrics, /healthz, /readyz (docs/operations.md, "Health and
    metrics"). ``smart-alerts run --metrics-port`` overrides the port."""

    # Loopback by default: the page names topics and versions; a container sets 0.0.0.0 so
    # that Prometheus and the kubelet reach it.
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)  # 9464: Prometheus's registered exporter port
    # /healthz answers 503 when the dataflow has not polled its input for this long: a wedged
    # worker (a live job polls every partition many times a second, even when idle).
    stall_seconds: float = Field(60.0, gt=0, le=3600)
    # Each /readyz dependency check (broker, PostgreSQL, Redis) gives up after this long, so a
    # probe answers within the kubelet's timeout even when a server hangs.
    check_timeout_seconds: float = Field(2.0, gt=0, le=60)
    # How often the readiness checks run for the smart_alerts_ready gauge.
    ready_interval_seconds: float = Field(10.0, gt=0, le=3600)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SMART_ALERTS_", env_nested_delimiter="__", extra="forbid"
    )

    kafka_bootstrap_servers: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "kafka_bootstrap_servers",
            "KAFKA_BOOTSTRAP_SERVERS",
            "SMART_ALERTS_KAFKA_BOOTSTRAP_SERVERS",
        ),
    )
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("database_url", "DATABASE_URL", "SMART_ALERTS_DATABASE_URL"),
    )
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("redis_url", "REDIS_URL", "SMART_ALERTS_REDIS_URL")
    )
    topics: Topics = Field(default_factory=Topics)
    partitions: Partitions = Field(default_factory=Partitions)
    engine: Engine = Field(default_factory=Engine)
    recovery: Recovery = Field(default_factory=Recovery)
    in_app: InApp = Field(default_factory=InApp)
    personalization: Personalization = Field(default_factory=Personalization)
    greeks: Greeks = Field(default_factory=Greeks)
    delivery: Delivery = Field(default_factory=Delivery)
    dependencies: Dependencies = Field(default_factory=Dependencies)
    api: Api = Field(default_factory=Api)
    ops: Ops = Field(default_factory=Ops)
    archive: Archive = Field(default_factory=Archive)
    retention: Retention = Field(default_factory=Retention)
    logging: Logging = Field(default_factory=Logging)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the file: the file is passed as init kwargs, so order them.
        return env_settings, init_settings

    def as_environment(self) -> dict[str, str]:
        """These settings as the variables a job started with them in its environment reads:
        the servers, and every section's values that differ from the defaults."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers or "",
            "DATABASE_URL": self.database_url or "",
            "REDIS_URL": self.redis_url or "",
        }
        defaults = Settings.model_construct()
        for section, value in self:
            if not isinstance(value, _Section):
                continue
            default = getattr(defaults, section).model_dump(mode="json")
            for key, item in value.model_dump(mode="json").items():
                if item != default[key]:
                    text = item if isinstance(item, str) else json.dumps(item)
                    env[f"SMART_ALERTS_{section.upper()}__{key.upper()}"] = text
        return env

    def require_servers(self) -> tuple[str, str, str]:
        missing = [
            name
            for name, value in (
                ("KAFKA_BOOTSTRAP_SERVERS", self.kafka_bootstrap_servers),
                ("DATABASE_URL", self.database_url),
                ("REDIS_URL", self.redis_url),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                f"missing server configuration: {', '.join(missing)} "
                "(set them in the environment or the config file, or use `smart-alerts demo`)"
            )
        assert self.kafka_bootstrap_servers and self.database_url and self.redis_url
        return self.kafka_bootstrap_servers, self.database_url, self.redis_url


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any) and the environment into Settings, or raise ConfigError."""
    if path is None and os.environ.get("SMART_ALERTS_CONFIG"):
        path = Path(os.environ["SMART_ALERTS_CONFIG"])
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"bad configuration{where}: {describe_validation_error(exc)}") from exc
