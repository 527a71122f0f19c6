"""``smart-alerts maintain``: the history's month partitions (sinks/partitions.py), as
``[retention]`` says. Run it daily (cron, deploy/kubernetes/maintain-cronjob.yaml) with the
credentials of ``migrate``."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from connectors import dependencies
from connectors.dependencies import wait_for_dependencies
from pipeline.cli import commands
from pipeline.config import ConfigError, Settings
from sinks.partitions import Policy, Report, maintain


def parse_now(text: str) -> datetime:
    """An ISO date or date and time; without an offset it is UTC."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--now {text!r} is not an ISO date or date and time (2026-03-15, 2026-03-15T12:00:00Z)"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def policy_of(settings: Settings) -> Policy:
    retention = settings.retention
    return Policy(
        keep_months={
            "triggered_alerts": retention.alerts_months,
            "delivery_logs": retention.deliveries_months,
            "alert_feedback": retention.feedback_months,
        },
        premake_months=retention.premake_months,
        lock_timeout_seconds=retention.lock_timeout_seconds,
    )


def maintain_command(
    settings: Settings, now: str | None = None, echo: commands.Echo = print
) -> Report:
    """Only PostgreSQL is needed (a CronJob's pod may know no broker)."""
    at = parse_now(now) if now is not None else None
    if not settings.database_url:
        raise ConfigError(
            "missing server configuration: DATABASE_URL (set it in the environment or the "
            "config file)"
        )
    wait_for_dependencies([dependencies.postgres(settings.database_url)], settings.dependencies)
    try:
        return maintain(settings.database_url, policy_of(settings), now=at, log=echo)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise commands.CommandError(
            f"PostgreSQL: {exc.diag.message_primary or exc}; run maintain as the owner of the "
            "history tables (the role that runs migrate)"
        ) from exc
