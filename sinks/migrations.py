"""Numbered SQL migrations of the PostgreSQL history (``sql/NNN_name.sql``).

``migrate`` applies the files not yet applied, in order, each in its own transaction together
with its row in ``schema_migrations`` (version, name, sha256 checksum, applied_at). Runs are
serialized by a session advisory lock, so two processes migrating one database at once are safe:
the second waits, then finds everything applied and does nothing. A file changed after it was
applied is refused (its checksum no longer matches); a failing file is rolled back entirely and
reported with its name and the PostgreSQL error.

Migration files must not contain transaction control (BEGIN/COMMIT) or statements that cannot run
in a transaction block (CREATE INDEX CONCURRENTLY).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import psycopg

# The repository's sql/, which the wheel ships as the package sinks.sql (see pyproject.toml): found
# through the import system, so it is the same files from a wheel, an editable install or a zip.
DEFAULT_DIRECTORY: Traversable = resources.files("sinks.sql")
FILE_PATTERN = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9_]+)\.sql$")
# pg_advisory_lock key of "migrations of this project in this database" (advisory locks are
# per database): the first 8 bytes of sha256("vs9-smart-alerts:schema_migrations"), signed.
LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"vs9-smart-alerts:schema_migrations").digest()[:8], "big", signed=True
)

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     int PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms int
)
"""


class MigrationError(RuntimeError):
    """A migration could not be applied, or the applied ones no longer match the files."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Traversable
    sql: str
    checksum: str

    @property
    def filename(self) -> str:
        return self.path.name


def discover(directory: Traversable = DEFAULT_DIRECTORY) -> list[Migration]:
    """The migration files of ``directory``, by version; refuses misnamed or duplicate files."""
    if not directory.is_dir():
        raise MigrationError(f"migration directory {directory} does not exist")
    found: dict[int, Migration] = {}
    for path in sorted(
        (p for p in directory.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name
    ):
        match = FILE_PATTERN.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path.name}: a migration file is named NNN_name.sql (e.g. 003_add_index.sql)"
            )
        version = int(match["version"])
        if version in found:
            raise MigrationError(
                f"{path.name} and {found[version].filename} have the same version {version}"
            )
        data = path.read_bytes()
        found[version] = Migration(
            version=version,
            name=match["name"],
            path=path,
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [found[version] for version in sorted(found)]


def migrate(
    database_url: str,
    *,
    directory: Traversable = DEFAULT_DIRECTORY,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Apply the pending migrations of ``directory``; returns the file names applied."""
    migrations = discover(directory)
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        _lock(conn, log)
        try:
            conn.execute(CREATE_LEDGER)
            applied = _applied(conn)
            _check_applied(migrations, applied)
            for migration in migrations:
                if migration.version in applied:
                    continue
                elapsed_ms = _apply(conn, migration)
                log(f"applied {migration.filename} in {elapsed_ms} ms")
                applied_now.append(migration.filename)
        finally:
            if not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now


def pending(database_url: str, *, directory: Traversable = DEFAULT_DIRECTORY) -> list[str]:
    """The file names ``migrate`` would apply now (raises if an applied file was changed)."""
    migrations = discover(directory)
    with psycopg.connect(database_url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        applied = _applied(conn) if exists and exists[0] else {}
    _check_applied(migrations, applied)
    return [m.filename for m in migrations if m.version not in applied]


def _lock(conn: psycopg.Connection, log: Callable[[str], None]) -> None:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
    if row is not None and row[0]:
        return
    log("another migration of this database is running; waiting for it to finish")
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, str]]:
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {int(version): (str(name), str(checksum)) for version, name, checksum in rows}


def _check_applied(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"migration {version:03d}_{name}.sql is applied to the database but missing from "
                "the migration directory (a newer release applied it, or the file was removed)"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"{migration.filename} was changed after it was applied (sha256 {checksum[:12]}… "
                f"applied, {migration.checksum[:12]}… on disk): never edit an applied migration, "
                "add a new numbered file instead"
            )


def _apply(conn: psycopg.Connection, migration: Migration) -> int:
    started = time.perf_counter()
    try:
        with conn.transaction():
            # No parameters: the file is sent as is (simple protocol, several statements).
            conn.execute(migration.sql.encode("utf-8"))
            elapsed_ms = round((time.perf_counter() - started) * 1000)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, duration_ms)"
                " VALUES (%s, %s, %s, %s)",
                (migration.version, migration.name, migration.checksum, elapsed_ms),
            )
    except psycopg.Error as exc:
        raise MigrationError(
            f"{migration.filename} failed and was rolled back: {_describe(exc, migration.sql)}"
        ) from exc
    return elapsed_ms


def _describe(exc: psycopg.Error, sql: str) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip()
    if diag.sqlstate:
        text += f" (SQLSTATE {diag.sqlstate})"
    position = diag.statement_position
    if position and position.isdigit():
        line = sql[: int(position) - 1].count("\n") + 1
        text += f" at line {line}"
    for extra in (diag.message_detail, diag.message_hint, diag.context):
        if extra:
            text += f"; {extra.strip()}"
    return text
