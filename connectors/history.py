"""Read side of the PostgreSQL history, for summaries, tools and tests."""

from __future__ import annotations

from types import TracebackType
from typing import LiteralString

import psycopg


class HistoryReader:
    def __init__(self, database_url: str) -> None:
        self._conn = psycopg.connect(database_url, autocommit=True)

    def __enter__(self) -> HistoryReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def alerts_per_rule(self) -> list[tuple[str, int]]:
        """(rule wire id, alert count), by rule wire id."""
        rows = self._conn.execute(
            """
            SELECT coalesce(r.external_id, t.rule_id::text), count(*)
            FROM triggered_alerts t LEFT JOIN alert_rules r ON r.id = t.rule_id
            GROUP BY 1 ORDER BY 1
            """
        ).fetchall()
        return [(str(rule), int(count)) for rule, count in rows]

    def alerts_by_status(self) -> list[tuple[str, int]]:
        """(status, alert count), by status."""
        rows = self._conn.execute(
            "SELECT status, count(*) FROM triggered_alerts GROUP BY 1 ORDER BY 1"
        ).fetchall()
        return [(str(status), int(count)) for status, count in rows]

    def feedback_by_action(self) -> list[tuple[str, int]]:
        """(feedback action, stored event count), by action."""
        rows = self._conn.execute(
            "SELECT action, count(*) FROM alert_feedback GROUP BY 1 ORDER BY 1"
        ).fetchall()
        return [(str(action), int(count)) for action, count in rows]

    def notification_count(self) -> int:
        return self._count("SELECT count(*) FROM consolidated_alerts", ())

    def deliveries_by_outcome(self) -> list[tuple[str, str, str | None, int]]:
        """(channel, status, error message, count) of every delivery, for summaries."""
        rows = self._conn.execute(
            "SELECT channel, status, error_message, count(*) FROM delivery_logs "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
        return [(channel, status, error, int(n)) for channel, status, error, n in rows]

    def _count(self, query: LiteralString, params: tuple[object, ...]) -> int:
        row = self._conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0

    def user_ids_with_notifications(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT DISTINCT user_external_id FROM consolidated_alerts ORDER BY 1"
        ).fetchall()
        return [str(user) for (user,) in rows if user is not None]
