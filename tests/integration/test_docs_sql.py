"""Every SQL example in docs/ runs against the migrated schema (so the guides cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"```sql\n(.*?)```", re.DOTALL)


def statements() -> list[tuple[str, str]]:
    found = []
    for doc in sorted(DOCS.glob("*.md")):
        for block in BLOCK.findall(doc.read_text()):
            code = "\n".join(line for line in block.splitlines() if not line.startswith("--"))
            found += [(doc.name, s.strip()) for s in code.split(";") if s.strip()]
    return found


@pytest.mark.parametrize(("doc", "statement"), statements())
def test_documented_sql_runs(database_url: str, doc: str, statement: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(statement)  # type: ignore[call-overload]
        conn.rollback()  # examples that change rows must not change this database
