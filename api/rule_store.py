"""The SQL of the API's rules, their versions and the templates users publish
(sql/007_api_rules.sql, sql/010_api_rules_imported.sql).

A rule written through the API (or the CLI's rules verbs, pipeline/cli/rules.py, which use these
functions) is a row per version in ``alert_rule_versions``, each holding the exact message
published on alerts.rules; the row with ``is_current`` is the rule as it stands. A change runs
in one transaction: ``lock_rule`` locks the rule (its ``alert_rules`` row, then its version rows,
``SELECT ... FOR UPDATE``) and reads the current version, ``write_version`` writes
``alert_rules`` with the job's own upsert (``sinks.postgres.upsert_rules``) and the new version,
the caller publishes the message and waits for the broker, and the commit ends it. Changes of
one rule are therefore serial: a second change waits for the lock, then reads the version the
first wrote.

The rules the API wrote are read from their current versions, never from ``alert_rules``: the
job re-writes that table from the topic, and its upsert takes whatever version arrives last (a
job that lags behind writes an older version back until it catches up). A rule that reached
alerts.rules from another producer (a replay, ``rules from-template --publish``, the demo) has no
version row: it is read from ``alert_rules`` as the job stored it ("imported"), and its first
change writes that stored version as the first row of its history (change ``imported``) before
the change itself, which continues from its version.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from pipeline.ids import storage_uuid
from pipeline.messages import Priority, Rule
from sinks.postgres import tombstone_rules, upsert_rules

if TYPE_CHECKING:  # a type only: the CLI's rules verbs use this module without FastAPI
    from api.auth import Principal

Change = Literal["imported", "create", "update", "enable", "disable"]
Visibility = Literal["private", "public"]

# Locks the rule: its alert_rules row first (so two first changes of an imported rule, which
# has no version rows yet, wait for each other), then its versions. Every writer takes them in
# this order, so two writers never deadlock. A change that waited then reads, in its next
# statement (a new snapshot), the version the first change committed.
LOCK_ROW = "SELECT 1 FROM alert_rules WHERE id = %s FOR UPDATE"
LOCK_VERSIONS = "SELECT version FROM alert_rule_versions WHERE rule_id = %s FOR UPDATE"
# Every rule the API can answer, one row each, whatever wrote it: the current versions the API
# wrote, and the rules another producer put on alerts.rules as the job stored them in
# alert_rules (not placeholders, which have no conditions, and not deleted ones), rebuilt as
# the message's fields (``StoredRule.of`` makes them the message). One statement, so one
# snapshot: a rule imported meanwhile is read once, from one side.
RULES = """
SELECT v.rule_id AS key, v.version, v.external_id, v.user_external_id, v.document,
       false AS imported, v.written_by, v.written_at, v.rule_created_at AS created_at,
       v.deleted_at
FROM alert_rule_versions v
WHERE v.is_current
UNION ALL
SELECT r.id, r.version, r.external_id, r.user_external_id,
       jsonb_build_object(
           'id', r.external_id, 'version', r.version, 'user_id', r.user_external_id,
           'name', r.name, 'symbol', r.symbol, 'symbols', r.symbols, 'priority', r.priority,
           'mode', r.mode, 'cooldown_seconds', r.cooldown_seconds, 'expires_at', r.expires_at,
           'active', r.is_active, 'channels', r.channels, 'conditions', r.conditions,
           'sessions', r.sessions),
       true, NULL::text, r.updated_at, r.created_at, NULL::timestamptz
FROM alert_rules r
WHERE r.deleted_at IS NULL AND r.conditions IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM alert_rule_versions v WHERE v.rule_id = r.id)
"""
READ_CURRENT = f"SELECT * FROM ({RULES}) rules WHERE key = %s"
RETIRE_CURRENT = """
UPDATE alert_rule_versions SET is_current = false WHERE rule_id = %s AND is_current
"""
INSERT_VERSION = """
INSERT INTO alert_rule_versions (
    rule_id, version, external_id, user_external_id, document, change, written_by,
    rule_created_at, is_current)
VALUES (%s, %s, %s, %s, %s, %s, %s, coalesce(%s, now()), true)
"""
IMPORT_VERSION = """
INSERT INTO alert_rule_versions (
    rule_id, version, external_id, user_external_id, document, change, written_by, written_at,
    rule_created_at, is_current)
VALUES (%s, %s, %s, %s, %s, 'imported', NULL, %s, %s, true)
"""
DELETE_CURRENT = """
UPDATE alert_rule_versions SET deleted_at = now() WHERE rule_id = %s AND is_current
"""
LIST_RULES = f"""
SELECT * FROM ({RULES}) rules
WHERE deleted_at IS NULL
  AND (%(owner)s::text IS NULL OR user_external_id = %(owner)s)
  AND (%(symbol)s::text IS NULL
       OR document->>'symbol' = %(symbol)s OR document->'symbols' ? %(symbol)s)
  AND (%(active)s::boolean IS NULL OR (document->>'active')::boolean = %(active)s)
  AND (%(priority)s::text IS NULL OR document->>'priority' = %(priority)s)
  AND (%(name)s::text IS NULL OR strpos(lower(document->>'name'), lower(%(name)s)) > 0)
  AND (%(after_at)s::timestamptz IS NULL
       OR (created_at, external_id) < (%(after_at)s, %(after_id)s::text))
ORDER BY created_at DESC, external_id DESC
LIMIT %(limit)s
"""
LIST_VERSIONS = """
SELECT version, change, written_by, written_at, document FROM alert_rule_versions
WHERE rule_id = %s AND (%s::int IS NULL OR version < %s)
ORDER BY version DESC
LIMIT %s
"""

TEMPLATE_COLUMNS = """
id, user_external_id, name, description, visibility, body, use_count, created_at
"""
INSERT_TEMPLATE = f"""
INSERT INTO shared_templates (
    id, user_external_id, name, description, visibility, body, source_rule_id, source_version)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
RETURNING {TEMPLATE_COLUMNS}
"""
READ_TEMPLATE = f"SELECT {TEMPLATE_COLUMNS} FROM shared_templates WHERE id = %s"
COUNT_USE = "UPDATE shared_templates SET use_count = use_count + 1 WHERE id = %s"
DELETE_TEMPLATE = "DELETE FROM shared_templates WHERE id = %s"
LIST_TEMPLATES = f"""
SELECT {TEMPLATE_COLUMNS} FROM shared_templates
WHERE (%(everyone)s OR visibility = 'public' OR user_external_id = %(me)s)
  AND (%(visibility)s::text IS NULL OR visibility = %(visibility)s)
  AND (NOT %(mine)s OR user_external_id = %(me)s)
  AND (%(after_at)s::timestamptz IS NULL OR (created_at, id) < (%(after_at)s, %(after_id)s::text))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
"""

# The fields a published template leaves out: the rule's identity and its symbol scope.
TEMPLATE_OMITS = ("v", "id", "version", "user_id", "symbol", "symbols")

Connection = psycopg.Connection[dict[str, Any]]


def rule_key(rule_id: str) -> uuid.UUID:
    """alert_rules.id of a wire rule id (two spellings of one UUID are one rule)."""
    return storage_uuid("rule", rule_id)


@dataclass(frozen=True)
class StoredRule:
    """The current version of a rule: the API's, or (``imported``) another producer's as the
    job stored it, which has no version row yet."""

    key: uuid.UUID
    version: int
    rule_id: str
    owner: str
    document: dict[str, Any]
    imported: bool
    written_by: str | None
    written_at: datetime
    created_at: datetime
    deleted_at: datetime | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> StoredRule:
        document = row["document"]
        if row["imported"]:
            fields = {name: value for name, value in document.items() if value is not None}
            document = message_document(Rule.model_validate(fields))
        return cls(
            key=row["key"],
            version=row["version"],
            rule_id=row["external_id"],
            owner=row["user_external_id"],
            document=document,
            imported=row["imported"],
            written_by=row["written_by"],
            written_at=row["written_at"],
            created_at=row["created_at"],
            deleted_at=row["deleted_at"],
        )

    @property
    def live(self) -> bool:
        return self.deleted_at is None

    @property
    def rule(self) -> Rule:
        return Rule.model_validate(self.document)


def read_rule(conn: Connection, rule_id: str) -> StoredRule | None:
    """The current version of a rule (the API's, deleted or not, or an imported one), or None
    if there is no such rule."""
    row = conn.execute(READ_CURRENT, (rule_key(rule_id),)).fetchone()
    return StoredRule.of(row) if row is not None else None


def lock_rule(conn: Connection, rule_id: str) -> StoredRule | None:
    """``read_rule`` under the rule's lock, held until the transaction ends."""
    key = rule_key(rule_id)
    conn.execute(LOCK_ROW, (key,)).fetchall()
    conn.execute(LOCK_VERSIONS, (key,)).fetchall()
    row = conn.execute(READ_CURRENT, (key,)).fetchone()
    return StoredRule.of(row) if row is not None else None


def _import(conn: Connection, current: StoredRule) -> None:
    """An imported rule's stored version as the first row of its history (the current one, so
    the write that follows continues from it). Call under ``lock_rule``."""
    conn.execute(
        IMPORT_VERSION,
        (
            current.key,
            current.version,
            current.rule_id,
            current.owner,
            Jsonb(current.document),
            current.written_at,
            current.created_at,
        ),
    )


def write_version(
    conn: Connection,
    rule: Rule,
    *,
    previous: StoredRule | None,
    change: Change,
    actor: str,
) -> dict[str, Any]:
    """Write ``rule`` as the rule's current version (alert_rules with the job's upsert, then
    the version row; an imported ``previous`` is written as the version before it); its
    document (the message's JSON) is returned. Call under ``lock_rule``; a concurrent first
    version of the same id raises UniqueViolation."""
    return write_versions(conn, [VersionWrite(rule, previous, change)], actor=actor)[0]


@dataclass(frozen=True)
class VersionWrite:
    """One rule's next version: the rule, its current version (None for a new id) and what
    made it."""

    rule: Rule
    previous: StoredRule | None
    change: Change


def write_versions(
    conn: Connection, writes: list[VersionWrite], *, actor: str
) -> list[dict[str, Any]]:
    """``write_version`` for several rules of distinct ids in one transaction (the job's
    upsert runs once per transaction, so a file of rules is written by one call); their
    documents are returned in order. Call under ``lock_rule`` of each."""
    for write in writes:
        if write.previous is not None and write.previous.imported:
            _import(conn, write.previous)
    upsert_rules(conn, [write.rule for write in writes])
    documents = []
    for write in writes:
        rule, previous = write.rule, write.previous
        document = message_document(rule)
        key = rule_key(rule.id)
        if previous is not None:
            conn.execute(RETIRE_CURRENT, (key,))
        created_at = (
            previous.created_at if previous is not None and write.change != "create" else None
        )
        conn.execute(
            INSERT_VERSION,
            (
                key,
                rule.version,
                rule.id,
                rule.user_id,
                Jsonb(document),
                write.change,
                actor,
                created_at,
            ),
        )
        documents.append(document)
    return documents


def delete_rule(conn: Connection, current: StoredRule) -> None:
    """The tombstone in PostgreSQL: alert_rules as the job marks it, and the current version
    (an imported rule's stored version, written first)."""
    if current.imported:
        _import(conn, current)
    tombstone_rules(conn, [current.rule_id])
    conn.execute(DELETE_CURRENT, (current.key,))


@dataclass(frozen=True)
class RuleFilter:
    owner: str | None = None
    symbol: str | None = None
    active: bool | None = None
    priority: Priority | None = None
    name: str | None = None


def list_rules(
    conn: Connection, where: RuleFilter, after: tuple[datetime, str] | None, limit: int
) -> list[StoredRule]:
    """Live rules (the API's and imported ones, in one order), newest first, strictly after
    the (created_at, id) position ``after``."""
    rows = conn.execute(
        LIST_RULES,
        {
            "owner": where.owner,
            "symbol": where.symbol,
            "active": where.active,
            "priority": where.priority.value if where.priority is not None else None,
            "name": where.name,
            "after_at": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        },
    ).fetchall()
    return [StoredRule.of(row) for row in rows]


def list_versions(
    conn: Connection, current: StoredRule, before: int | None, limit: int
) -> list[dict[str, Any]]:
    """A rule's versions, newest first, below version ``before``; an imported rule not yet
    changed through the API has one: the version the job stored."""
    if current.imported:
        if before is not None and current.version >= before:
            return []
        return [
            {
                "version": current.version,
                "change": "imported",
                "written_by": None,
                "written_at": current.written_at,
                "document": current.document,
            }
        ]
    return conn.execute(LIST_VERSIONS, (current.key, before, before, limit)).fetchall()


def message_document(rule: Rule) -> dict[str, Any]:
    """The JSON object of the rule's message as published (``Rule.to_json``)."""
    document: dict[str, Any] = rule.model_dump(mode="json", exclude_none=True)
    return document


# ---------------------------------------------------------------- shared templates


@dataclass(frozen=True)
class SharedTemplateRow:
    id: str
    owner: str
    name: str
    description: str
    visibility: Visibility
    body: dict[str, Any]
    use_count: int
    created_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> SharedTemplateRow:
        return cls(
            id=row["id"],
            owner=row["user_external_id"],
            name=row["name"],
            description=row["description"],
            visibility=row["visibility"],
            body=row["body"],
            use_count=row["use_count"],
            created_at=row["created_at"],
        )

    def visible_to(self, principal: Principal) -> bool:
        """Public ones to everybody; private ones to their owner (and analysts, admins)."""
        return self.visibility == "public" or principal.may_read(self.owner)


def template_body(document: dict[str, Any]) -> dict[str, Any]:
    """A rule's document as a template body: without its identity and symbol scope."""
    return {name: value for name, value in document.items() if name not in TEMPLATE_OMITS}


def publish_template(
    conn: Connection,
    source: StoredRule,
    *,
    owner: str,
    name: str,
    description: str,
    visibility: Visibility,
) -> SharedTemplateRow:
    row = conn.execute(
        INSERT_TEMPLATE,
        (
            f"st-{uuid.uuid4().hex[:16]}",
            owner,
            name,
            description,
            visibility,
            Jsonb(template_body(source.document)),
            source.rule_id,
            source.version,
        ),
    ).fetchone()
    assert row is not None  # INSERT ... RETURNING returns the row
    return SharedTemplateRow.of(row)


def read_template(conn: Connection, template_id: str) -> SharedTemplateRow | None:
    row = conn.execute(READ_TEMPLATE, (template_id,)).fetchone()
    return SharedTemplateRow.of(row) if row is not None else None


def count_use(conn: Connection, template_id: str) -> None:
    """One more rule made from the template (one atomic increment, committed with the rule)."""
    conn.execute(COUNT_USE, (template_id,))


def delete_template(conn: Connection, template_id: str) -> None:
    conn.execute(DELETE_TEMPLATE, (template_id,))


def list_templates(
    conn: Connection,
    *,
    me: str,
    everyone: bool,
    visibility: Visibility | None,
    mine: bool,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[SharedTemplateRow]:
    """Public templates and ``me``'s own (every one when ``everyone``), newest first."""
    rows = conn.execute(
        LIST_TEMPLATES,
        {
            "me": me,
            "everyone": everyone,
            "visibility": visibility,
            "mine": mine,
            "after_at": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        },
    ).fetchall()
    return [SharedTemplateRow.of(row) for row in rows]
