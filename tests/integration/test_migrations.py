"""sinks.migrations against a real PostgreSQL: fresh databases, reruns, races, bad files."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from sinks.migrations import DEFAULT_DIRECTORY, MigrationError, discover, migrate, pending

pytestmark = pytest.mark.integration

TABLES = {
    "alert_rules",
    "alert_conditions",
    "triggered_alerts",
    "delivery_logs",
    "user_alert_profiles",
    "consolidated_alerts",
    "alert_outcomes",
    "disabled_destinations",
    "alert_feedback",
    "relevance_score_history",
    "schema_migrations",
    # the HTTP API's own (006-009)
    "api_keys",
    "api_audit_log",
    "alert_rule_versions",
    "shared_templates",
    "profile_documents",
    "webhook_endpoints",
}
VIEWS = {
    "v_alerts",
    "v_daily_alert_counts",
    "v_delivery_outcomes",
    # 013: analysts' questions, and contact details masked
    "v_user_daily_alerts",
    "v_delivery_success",
    "v_alert_responses",
    "v_rule_activity",
    "v_symbol_activity",
    "v_relevance_history",
    "v_user_contacts",
    "v_deliveries",
    "v_disabled_destinations",
}
ROLES = {"smart_alerts_writer", "smart_alerts_analyst"}

# ARCHITECTURE.md §8: every table and column of the platform's starting schema.
SECTION_8 = {
    "alert_rules": "id user_id name symbol priority is_active cooldown_minutes expires_at "
    "created_at updated_at",
    "alert_conditions": "id rule_id condition_type threshold comparison time_window_minutes "
    "created_at",
    "triggered_alerts": "id rule_id user_id symbol priority title message triggered_at "
    "acknowledged_at status",
    "delivery_logs": "id alert_id channel status delivered_at error_message retry_count",
    "user_alert_profiles": "id user_id preferred_channels quiet_hours_start quiet_hours_end "
    "action_history relevance_scores created_at updated_at",
    "consolidated_alerts": "id user_id alert_ids consolidated_title consolidated_message "
    "highest_priority created_at",
}
SECTION_8_INDEXES = [
    ("alert_rules", "user_id"),
    ("alert_rules", "symbol"),
    ("triggered_alerts", "user_id"),
    ("triggered_alerts", "status"),
    ("delivery_logs", "alert_id"),
    ("user_alert_profiles", "user_id"),
]


def _url_for(server_url: str, dbname: str) -> str:
    parts = urlsplit(server_url)
    if parts.scheme in ("postgres", "postgresql"):
        return urlunsplit(parts._replace(path=f"/{dbname}"))
    return make_conninfo(server_url, dbname=dbname)


@pytest.fixture()
def new_database(stack) -> Iterator[Callable[[], str]]:  # type: ignore[no-untyped-def]
    """A factory of empty databases on the stack's server, dropped after the test."""
    created: list[str] = []

    def make() -> str:
        name = f"t_migrations_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(stack.database_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _url_for(stack.database_url, name)

    yield make
    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        for name in created:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _names(url: str, query: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {str(row[0]) for row in conn.execute(query).fetchall()}


def _tables(url: str) -> set[str]:
    return _names(
        url,
        # Tables, partitioned ones included, but not their partitions (014).
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p') AND NOT relispartition",
    )


def _ledger(url: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        ).fetchall()
    return [(int(v), str(n), str(c)) for v, n, c in rows]


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


# ---------------------------------------------------------------- the real migrations


def test_migrate_empty_database_creates_everything(new_database: Callable[[], str]) -> None:
    url = new_database()
    files = [m.filename for m in discover()]
    assert files[0] == "001_initial.sql"
    assert pending(url) == files

    lines: list[str] = []
    started = time.perf_counter()
    applied = migrate(url, log=lines.append)
    elapsed = time.perf_counter() - started

    assert applied == files
    assert len(lines) == len(files) and all(line.startswith("applied ") for line in lines)
    assert elapsed < 10, f"migrating an empty database took {elapsed:.2f} s"
    assert _tables(url) == TABLES
    assert (
        _names(url, "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'")
        >= VIEWS
    )
    assert _names(url, "SELECT rolname FROM pg_roles") >= ROLES
    ledger = _ledger(url)
    assert [(v, n) for v, n, _ in ledger] == [(m.version, m.name) for m in discover()]
    assert [c for _, _, c in ledger] == [m.checksum for m in discover()]
    assert pending(url) == []


def test_second_run_applies_nothing(database_url: str) -> None:
    before = _ledger(database_url)
    lines: list[str] = []
    assert migrate(database_url, log=lines.append) == []
    assert lines == []
    assert _ledger(database_url) == before


def test_section_8_columns_and_indexes(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for table, columns in SECTION_8.items():
            present = {
                str(row[0])
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = %s",
                    (table,),
                ).fetchall()
            }
            missing = set(columns.split()) - present
            assert not missing, f"{table} lacks {sorted(missing)}"
        for table, column in SECTION_8_INDEXES:
            indexes = [
                str(row[0])
                for row in conn.execute(
                    "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'"
                    " AND tablename = %s",
                    (table,),
                ).fetchall()
            ]
            assert any(f"({column})" in d for d in indexes), f"no index on {table}({column})"
        # Every timestamp is a UTC instant: no `timestamp without time zone` anywhere.
        naive = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND data_type = 'timestamp without time zone'"
        ).fetchall()
        assert naive == []


def test_wire_ids_are_documented_for_analysts(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        comment = conn.execute(
            "SELECT col_description('alert_rules'::regclass, attnum) FROM pg_attribute"
            " WHERE attrelid = 'alert_rules'::regclass AND attname = 'id'"
        ).fetchone()
        assert comment is not None and "storage_uuid" in str(comment[0])
        undocumented = conn.execute(
            """
            SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
              AND NOT c.relispartition
              AND c.relname <> 'schema_migrations'
              AND a.attname IN ('id', 'external_id', 'user_external_id', 'user_id')
              AND col_description(c.oid, a.attnum) IS NULL
            """
        ).fetchall()
        assert undocumented == []


def test_roles_have_their_privileges(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:

        def allowed(role: str, relation: str, privilege: str) -> bool:
            row = conn.execute(
                "SELECT has_table_privilege(%s, %s, %s)", (role, relation, privilege)
            ).fetchone()
            return bool(row and row[0])

        def reads(role: str, relation: str, column: str) -> bool:
            row = conn.execute(
                "SELECT has_column_privilege(%s, %s, %s, 'SELECT')", (role, relation, column)
            ).fetchone()
            return bool(row and row[0])

        # Tables with contact details: the analyst reads every column but those (013).
        contacts = {
            "user_alert_profiles": ("destinations", "user_id"),
            "delivery_logs": ("destination", "channel"),
            "disabled_destinations": ("destination", "channel"),
        }
        for table in ("alert_outcomes", "disabled_destinations"):  # added by later migrations
            assert allowed("smart_alerts_writer", table, "INSERT")
            assert allowed("smart_alerts_analyst", table, "SELECT") == (table not in contacts)
            assert not allowed("smart_alerts_analyst", table, "INSERT")
        for table in SECTION_8:
            assert allowed("smart_alerts_writer", table, "INSERT")
            assert allowed("smart_alerts_writer", table, "UPDATE")
            assert allowed("smart_alerts_analyst", table, "SELECT") == (table not in contacts)
            assert not allowed("smart_alerts_analyst", table, "INSERT")
        for table, (contact, other) in contacts.items():
            assert reads("smart_alerts_analyst", table, other)
            assert not reads("smart_alerts_analyst", table, contact)
        for view in VIEWS:
            assert allowed("smart_alerts_analyst", view, "SELECT")
        logins = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND rolcanlogin", (list(ROLES),)
        ).fetchall()
        assert logins == []


def test_concurrent_migrations_apply_each_file_once(new_database: Callable[[], str]) -> None:
    url = new_database()
    barrier = threading.Barrier(4)

    def run() -> list[str]:
        barrier.wait()
        return migrate(url, log=lambda _line: None)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run(), range(4)))

    files = [m.filename for m in discover()]
    assert sorted(name for result in results for name in result) == sorted(files)
    assert [r for r in results if r] == [files], "one run applies all, the others nothing"
    assert len(_ledger(url)) == len(files)
    assert _tables(url) == TABLES


def test_concurrent_migrations_of_different_databases(new_database: Callable[[], str]) -> None:
    """Roles are cluster-wide: migrating several databases at once must not collide."""
    urls = [new_database() for _ in range(3)]
    barrier = threading.Barrier(len(urls))

    def run(url: str) -> list[str]:
        barrier.wait()
        return migrate(url, log=lambda _line: None)

    with ThreadPoolExecutor(len(urls)) as pool:
        results = list(pool.map(run, urls))
    files = [m.filename for m in discover()]
    assert results == [files] * len(urls)


def test_role_creation_tolerates_a_concurrent_create(
    stack,  # type: ignore[no-untyped-def]
    new_database: Callable[[], str],
) -> None:
    """Force the race of the roles block: B checks while A's CREATE ROLE is uncommitted."""
    text = (DEFAULT_DIRECTORY / "002_analyst_views_and_roles.sql").read_text()
    block = re.search(r"DO \$roles\$.*?\$roles\$;", text, re.DOTALL)
    assert block is not None
    suffix = uuid.uuid4().hex[:8]
    names = {f"smart_alerts_writer_{suffix}", f"smart_alerts_analyst_{suffix}"}
    sql = block.group(0)
    for role in ROLES:
        sql = sql.replace(f"'{role}'", f"'{role}_{suffix}'")
    first, second = stack.database_url, new_database()
    try:
        with psycopg.connect(first) as a:
            a.execute(sql)  # roles created, transaction still open
            errors: list[BaseException] = []

            def other() -> None:
                try:
                    with psycopg.connect(second) as b:
                        b.execute(sql)  # blocks on A's uncommitted roles, then must not fail
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            thread = threading.Thread(target=other)
            thread.start()
            time.sleep(0.5)
            assert thread.is_alive(), "the second CREATE ROLE should wait for the first"
            a.commit()
            thread.join(10)
        assert not thread.is_alive()
        assert errors == []
        assert names <= _names(first, "SELECT rolname FROM pg_roles")
    finally:
        with psycopg.connect(first, autocommit=True) as admin:
            for role in names:
                admin.execute(f'DROP ROLE IF EXISTS "{role}"')


# ---------------------------------------------------------------- files in a temporary directory


def test_changed_checksum_is_refused(new_database: Callable[[], str], tmp_path: Path) -> None:
    url = new_database()
    directory = _write(tmp_path / "sql", {"001_first.sql": "CREATE TABLE first (id int);\n"})
    assert migrate(url, directory=directory, log=lambda _line: None) == ["001_first.sql"]

    (directory / "001_first.sql").write_text("CREATE TABLE first (id bigint);\n")
    with pytest.raises(MigrationError, match=r"001_first\.sql was changed after it was applied"):
        migrate(url, directory=directory, log=lambda _line: None)
    with pytest.raises(MigrationError, match=r"001_first\.sql"):
        pending(url, directory=directory)


def test_broken_migration_rolls_back_and_names_the_file(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    url = new_database()
    directory = _write(
        tmp_path / "sql",
        {
            "001_good.sql": "CREATE TABLE good (id int);\n",
            "002_broken.sql": (
                "CREATE TABLE half_done (id int);\n"
                "INSERT INTO half_done VALUES (1);\n"
                "INSERT INTO no_such_table VALUES (1);\n"
            ),
            "003_later.sql": "CREATE TABLE later (id int);\n",
        },
    )
    with pytest.raises(MigrationError) as caught:
        migrate(url, directory=directory, log=lambda _line: None)
    message = str(caught.value)
    assert "002_broken.sql" in message
    assert 'relation "no_such_table" does not exist' in message
    assert "line 3" in message
    assert isinstance(caught.value.__cause__, psycopg.errors.UndefinedTable)

    assert _tables(url) == {"good", "schema_migrations"}  # 002 fully rolled back, 003 not run
    assert [(v, n) for v, n, _ in _ledger(url)] == [(1, "good")]
    assert pending(url, directory=directory) == ["002_broken.sql", "003_later.sql"]

    (directory / "002_broken.sql").write_text("CREATE TABLE half_done (id int);\n")
    assert migrate(url, directory=directory, log=lambda _line: None) == [
        "002_broken.sql",
        "003_later.sql",
    ]
    assert _tables(url) == {"good", "half_done", "later", "schema_migrations"}


def test_misnamed_and_duplicate_files_are_refused(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad", {"001_ok.sql": "", "fix-things.sql": ""})
    with pytest.raises(MigrationError, match="fix-things.sql"):
        discover(bad)
    twice = _write(tmp_path / "twice", {"001_a.sql": "", "001_b.sql": ""})
    with pytest.raises(MigrationError, match="same version"):
        discover(twice)


def test_applied_migration_missing_from_directory(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    url = new_database()
    directory = _write(tmp_path / "sql", {"001_a.sql": "CREATE TABLE a (id int);\n"})
    migrate(url, directory=directory, log=lambda _line: None)
    (directory / "001_a.sql").unlink()
    with pytest.raises(MigrationError, match="001_a.sql is applied"):
        migrate(url, directory=directory, log=lambda _line: None)
