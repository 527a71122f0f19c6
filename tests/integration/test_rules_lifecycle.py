"""The rule lifecycle in the CLI (``smart-alerts rules apply|list|show|history|enable|disable|
delete``) on the embedded stack: every change lands in PostgreSQL (the API's rule store) and
on the rules topic, read back from both; refusals leave both as they were.

Most cases call the CLI's ``main`` in-process (as tests/unit/rules/test_text.py does) with the
servers in the environment; the exit statuses and the one-line errors are checked once more on
the real ``smart-alerts`` console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connectors.embedded import StackUrls
from pipeline.cli import commands
from pipeline.cli.main import main
from pipeline.config import Settings
from pipeline.messages import Rule
from pipeline.rules.text import format_rule
from sinks.postgres import HistoryWriter
from tests.conftest import job_settings

pytestmark = pytest.mark.integration

SMART_ALERTS = str(Path(sys.executable).with_name("smart-alerts"))


@dataclass
class Cli:
    settings: Settings
    env: dict[str, str]
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *args: str | Path) -> tuple[int, str, str]:
        """``smart-alerts ARGS`` in-process: exit status, stdout, stderr."""
        self.capsys.readouterr()
        code = main([str(arg) for arg in args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def script(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """The real console script, in a process of its own."""
        variables = {k: v for k, v in os.environ.items() if not k.startswith("SMART_ALERTS_")}
        return subprocess.run(
            [SMART_ALERTS, *map(str, args)],
            env={**variables, **self.env},
            capture_output=True,
            text=True,
            timeout=90,
        )

    def on_topic(self, rule_id: str) -> list[dict[str, Any] | None]:
        """The values keyed by ``rule_id`` on the rules topic, in order (None: a tombstone)."""
        return self.topic().get(rule_id, [])

    def topic(self) -> dict[str, list[dict[str, Any] | None]]:
        """Every value on the rules topic by key, in order (None: a tombstone)."""
        bootstrap, topic = self.settings.require_servers()[0], self.settings.topics.rules
        found: dict[str, list[dict[str, Any] | None]] = {}
        for record in commands.read_topic(bootstrap, topic):
            assert record.key is not None
            value = json.loads(record.value) if record.value is not None else None
            found.setdefault(record.key.decode(), []).append(value)
        return found


@pytest.fixture
def cli(
    stack: StackUrls,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cli]:
    settings = job_settings(stack, database_url)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "DATABASE_URL": database_url,
        "REDIS_URL": stack.redis_url,
        "SMART_ALERTS_TOPICS__RULES": settings.topics.rules,
    }
    for name in [name for name in os.environ if name.startswith("SMART_ALERTS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield Cli(settings, env, capsys)


def new_id() -> str:
    return f"r-{uuid.uuid4().hex[:10]}"


def rule(
    rule_id: str, *, version: int = 1, threshold: float = 200, **fields: Any
) -> dict[str, Any]:
    return {
        "id": rule_id,
        "version": version,
        "user_id": "u-1",
        "name": "AAPL breakout",
        "symbol": "AAPL",
        "conditions": {"type": "price_crosses_above", "threshold": threshold},
        **fields,
    }


def write_json(path: Path, content: Any) -> Path:
    path.write_text(json.dumps(content, indent=2))
    return path


def listed(cli: Cli, *filters: str) -> list[dict[str, Any]]:
    code, out, _ = cli("rules", "list", "--json", *filters)
    assert code == 0
    documents: list[dict[str, Any]] = json.loads(out)
    return documents


# ---------------------------------------------------------------- apply


def test_apply_takes_what_rules_parse_prints_and_a_list_and_jsonl(cli: Cli, tmp_path: Path) -> None:
    parsed_id = new_id()
    code, printed, _ = cli(
        "rules", "parse", "AAPL price crosses above 200", "--user", "u-1", "--id", parsed_id
    )
    assert code == 0
    single = tmp_path / "one.json"
    single.write_text(printed)  # a single object, as printed
    code, out, _ = cli("rules", "apply", single)
    assert code == 0, out
    assert out.startswith(f"created {parsed_id} v1 ")

    # The same file again: nothing published a second time.
    code, out, _ = cli("rules", "apply", single)
    assert code == 0
    assert out.startswith(f"unchanged {parsed_id} v1 ")
    assert len(cli.on_topic(parsed_id)) == 1

    ids = [new_id(), new_id()]
    listing = write_json(tmp_path / "list.json", [rule(ids[0]), rule(ids[1], symbol="MSFT")])
    jsonl_id = new_id()
    jsonl = tmp_path / "rules.jsonl"
    jsonl.write_text(json.dumps(rule(jsonl_id, symbol="NVDA")) + "\n")
    assert cli("rules", "apply", listing)[0] == 0
    assert cli("rules", "apply", jsonl)[0] == 0

    on_topic = cli.topic()
    for rule_id in [parsed_id, *ids, jsonl_id]:
        (message,) = on_topic[rule_id]
        assert message is not None and message["id"] == rule_id
    assert {r["id"] for r in listed(cli, "--user", "u-1")} >= {parsed_id, *ids, jsonl_id}
    assert [r["id"] for r in listed(cli, "--symbol", "NVDA")] == [jsonl_id]

    # The table names each rule with its version, owner, symbol and state.
    code, out, _ = cli("rules", "list", "--symbol", "MSFT")
    head, row, count = out.splitlines()
    assert head.split() == ["ID", "VERSION", "USER", "SYMBOL", "PRIORITY", "ACTIVE", "NAME"]
    assert row.split()[:6] == [ids[1], "1", "u-1", "MSFT", "MEDIUM", "yes"]
    assert count == "1 rule"

    # What list --json prints, apply takes back: every rule unchanged, nothing published.
    code, printed, _ = cli("rules", "list", "--json", "--user", "u-1")
    exported = tmp_path / "exported.json"
    exported.write_text(printed)
    code, out, _ = cli("rules", "apply", exported)
    assert code == 0 and {line.split()[0] for line in out.splitlines()} == {"unchanged"}
    assert len(out.splitlines()) == len(json.loads(printed)) >= 4
    assert cli.topic() == on_topic


def test_user_applies_to_json_files_and_another_user_is_refused(cli: Cli, tmp_path: Path) -> None:
    owner = f"u-{uuid.uuid4().hex[:6]}"
    without_user = rule(new_id())
    del without_user["user_id"]
    path = write_json(tmp_path / "mine.json", [without_user])
    code, _, err = cli("rules", "apply", path, "--user", owner)
    assert code == 0, err
    assert [r["id"] for r in listed(cli, "--user", owner)] == [without_user["id"]]

    other = write_json(tmp_path / "theirs.json", [rule(new_id(), user_id="u-other")])
    code, _, err = cli("rules", "apply", other, "--user", owner)
    assert code == 2
    assert err.splitlines() == [
        f"smart-alerts: error: {other}: item 1 has user_id 'u-other', not {owner!r} (given "
        "with --user): leave --user out or apply that user's rules in a file of their own"
    ]


def test_a_text_file_reads_rule_text_and_plain_english(cli: Cli, tmp_path: Path) -> None:
    owner = f"u-{uuid.uuid4().hex[:6]}"
    text = tmp_path / "rules.txt"
    text.write_text(
        "# my rules\n"
        "MSFT price crosses above 260 priority high\n"
        "\n"
        "alert me when AAPL drops below 180\n"
    )
    code, out, err = cli("rules", "apply", text, "--user", owner)
    assert code == 0, err
    understood = [line for line in err.splitlines() if ": understood: " in line]
    assert len(understood) == 1 and understood[0].startswith(f"{text}:4: understood: AAPL ")
    assert [line.split()[0] for line in out.splitlines()] == ["created", "created"]
    stored = {r["symbol"]: r for r in listed(cli, "--user", owner)}
    assert set(stored) == {"MSFT", "AAPL"}
    assert stored["MSFT"]["conditions"] == {"type": "price_crosses_above", "threshold": 260}
    # The English line is stored as the rule text it was understood as.
    canonical = understood[0].split(": understood: ", 1)[1]
    assert format_rule(Rule.model_validate(stored["AAPL"])) == canonical


def test_a_changed_rule_at_its_stored_version_is_refused_with_the_diff(
    cli: Cli, tmp_path: Path
) -> None:
    rule_id = new_id()
    path = write_json(tmp_path / "rule.json", rule(rule_id))
    assert cli("rules", "apply", path)[0] == 0

    write_json(path, rule(rule_id, threshold=210))
    code, out, err = cli("rules", "apply", path)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert f"--- stored {rule_id} v1" in lines and f"+++ rule.json {rule_id} v1" in lines
    removed = [line for line in lines if line.startswith("-  ")]
    added = [line for line in lines if line.startswith("+  ")]
    assert removed == ['-    "threshold": 200.0'] and added == ['+    "threshold": 210.0']
    assert lines[-1] == (
        f"smart-alerts: error: rule {rule_id!r}: version 1 is stored with other content; "
        f"raise version to 2 to replace it (nothing in {path.name} was applied)"
    )
    assert len(cli.on_topic(rule_id)) == 1  # nothing published
    code, out, _ = cli("rules", "show", rule_id, "--json")
    assert json.loads(out)["conditions"]["threshold"] == 200

    write_json(path, rule(rule_id, version=2, threshold=210))
    code, out, _ = cli("rules", "apply", path)
    assert code == 0 and out.startswith(f"updated {rule_id} v2 ")

    # An older file (version 1) after the edit is refused too, whatever its content.
    write_json(path, rule(rule_id, threshold=200))
    code, _, err = cli("rules", "apply", path)
    assert code == 2
    assert "version 1 is older than the stored version 2; raise version to 3" in err
    assert [m["conditions"]["threshold"] for m in cli.on_topic(rule_id) if m] == [200, 210]

    # A file is applied whole or not at all: a new rule beside a refused one is not written.
    fresh = new_id()
    write_json(path, [rule(fresh), rule(rule_id, threshold=200)])
    assert cli("rules", "apply", path)[0] == 2
    assert cli.on_topic(fresh) == []
    assert cli("rules", "show", fresh)[0] == 2

    code, out, _ = cli("rules", "history", rule_id)
    assert code == 0
    assert out.splitlines()[:3] == [
        f"rule {rule_id} of u-1: 2 versions",
        out.splitlines()[1],
        "    conditions.threshold: 200 -> 210",
    ]
    assert out.splitlines()[1].startswith("v2 ") and " update " in out.splitlines()[1]


def test_a_broker_that_does_not_acknowledge_leaves_nothing_written(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer of the change writes to a port where nothing listens (the broker itself
    answers the start-up check): the publish fails, and the transaction is rolled back."""
    from connectors.embedded import free_ports
    from pipeline.cli import rules as rules_verbs
    from sinks.kafka import CheckedProducer

    closed = f"127.0.0.1:{free_ports(1)[0]}"
    rule_id = new_id()
    with monkeypatch.context() as patch:
        patch.setattr(
            rules_verbs,
            "CheckedProducer",
            lambda _bootstrap, **_options: CheckedProducer(closed, flush_timeout_s=2.0),
        )
        code, _, err = cli("rules", "apply", write_json(tmp_path / "r.json", rule(rule_id)))
    assert code == 3, err
    # (librdkafka's own log lines come first, in this process.)
    assert err.splitlines()[-2].startswith("smart-alerts: error: ")
    assert "KAFKA_BOOTSTRAP_SERVERS" in err.splitlines()[-1]
    code, _, err = cli("rules", "show", rule_id)
    assert code == 2 and f"no rule {rule_id!r}" in err


# ---------------------------------------------------------------- show, enable, disable, delete


def test_enable_disable_show_history_and_delete(cli: Cli, tmp_path: Path) -> None:
    rule_id = new_id()
    assert cli("rules", "apply", write_json(tmp_path / "r.json", rule(rule_id)))[0] == 0

    code, out, _ = cli("rules", "show", rule_id)
    assert code == 0
    header, text, *document = out.splitlines()
    assert header.startswith(f"rule {rule_id} v1 of u-1, active, written ")
    assert text == f'text: AAPL price crosses above 200 id {rule_id} user u-1 name "AAPL breakout"'
    assert json.loads("\n".join(document))["id"] == rule_id

    code, out, _ = cli("rules", "disable", rule_id)
    assert code == 0 and out.startswith(f"disabled {rule_id}: v2 published")
    code, out, _ = cli("rules", "disable", rule_id)
    assert code == 0 and "already inactive: nothing changed" in out
    assert rule_id in {r["id"] for r in listed(cli, "--inactive")}
    assert rule_id not in {r["id"] for r in listed(cli, "--active")}
    assert cli("rules", "enable", rule_id)[0] == 0
    assert [m["active"] if m else None for m in cli.on_topic(rule_id)] == [True, False, True]

    code, out, _ = cli("rules", "history", rule_id)
    lines = out.splitlines()
    assert lines[0] == f"rule {rule_id} of u-1: 3 versions"
    assert lines[1].startswith("v3 ") and "enable" in lines[1]
    assert lines[2].strip() == "active: false -> true"
    assert lines[3].startswith("v2 ") and "disable" in lines[3]
    assert lines[4].strip() == "active: true -> false"
    assert lines[5].startswith("v1 ") and "create" in lines[5]
    code, out, _ = cli("rules", "history", rule_id, "--json")
    assert [(v["version"], v["change"]) for v in json.loads(out)] == [
        (3, "enable"),
        (2, "disable"),
        (1, "create"),
    ]

    code, out, _ = cli("rules", "delete", rule_id)
    assert code == 0 and out.startswith(f"deleted {rule_id} (was v3): tombstone published")
    assert cli.on_topic(rule_id)[-1] is None  # the tombstone: the key with no value
    assert rule_id not in {r["id"] for r in listed(cli)}
    code, _, err = cli("rules", "show", rule_id)
    assert code == 2 and f"rule {rule_id!r} was deleted at " in err
    code, out, _ = cli("rules", "history", rule_id)
    assert code == 0 and ", deleted at " in out.splitlines()[0]

    # The id comes back only above the deleted version, as a new rule with its history kept.
    again = write_json(tmp_path / "again.json", rule(rule_id))
    code, _, err = cli("rules", "apply", again)
    assert code == 2 and "was deleted at version 3; raise version to 4 to create it again" in err
    write_json(again, rule(rule_id, version=4))
    code, out, _ = cli("rules", "apply", again)
    assert code == 0 and out.startswith(f"created {rule_id} v4 ")
    assert cli.on_topic(rule_id)[-1] == Rule.model_validate(rule(rule_id, version=4)).model_dump(
        mode="json", exclude_none=True
    )
    code, out, _ = cli("rules", "history", rule_id, "--json")
    assert [(v["version"], v["change"]) for v in json.loads(out)] == [
        (4, "create"),
        (3, "enable"),
        (2, "disable"),
        (1, "create"),
    ]


def test_a_published_template_is_applied_through_the_store(cli: Cli) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    argv = ["rules", "from-template", "breakout_above_resistance", "--symbol", "AAPL"]
    argv += ["--user", user, "--param", "level=200", "--publish"]
    code, out, err = cli(*argv)
    assert code == 0, err
    rule_id = json.loads(out)["id"]
    assert f"created {rule_id} v1 " in err
    code, out, err = cli(*argv)  # the same template again: the stored version, not re-published
    assert code == 0 and f"unchanged {rule_id} v1 " in err
    assert len(cli.on_topic(rule_id)) == 1
    code, out, _ = cli("rules", "history", rule_id, "--json")
    assert [(v["version"], v["change"]) for v in json.loads(out)] == [(1, "create")]


def test_a_rule_another_producer_put_on_the_topic_is_imported_on_its_first_change(
    cli: Cli, tmp_path: Path
) -> None:
    rule_id = new_id()
    replayed = Rule.model_validate(rule(rule_id, version=4))
    path = tmp_path / "replayed.jsonl"
    path.write_text(replayed.to_json().decode() + "\n")
    commands.replay(cli.settings, path, "rules", echo=lambda _: None)
    with HistoryWriter(cli.settings.database_url or "") as job:  # as the job stores it
        job.write_rules([replayed])

    assert [r["id"] for r in listed(cli, "--user", "u-1") if r["id"] == rule_id] == [rule_id]
    assert cli("rules", "disable", rule_id)[0] == 0
    code, out, _ = cli("rules", "history", rule_id, "--json")
    history = json.loads(out)
    assert [(v["version"], v["change"], v["written_by"]) for v in history][1] == (
        4,
        "imported",
        None,
    )
    assert history[0]["version"] == 5 and history[0]["change"] == "disable"
    assert history[0]["written_by"].startswith("cli")


# ---------------------------------------------------------------- the console script


def test_the_console_script_exits_2_with_one_line(cli: Cli, tmp_path: Path) -> None:
    rule_id = new_id()
    path = write_json(tmp_path / "r.json", rule(rule_id))
    assert cli("rules", "apply", path)[0] == 0

    write_json(path, rule(rule_id, name="renamed"))
    refused = cli.script("rules", "apply", path)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    *diff, error = refused.stderr.splitlines()
    assert '-  "name": "AAPL breakout",' in diff and '+  "name": "renamed",' in diff
    assert error.startswith("smart-alerts: error: ") and "raise version to 2" in error

    missing = cli.script("rules", "enable", "r-nobody")
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        "smart-alerts: error: no rule 'r-nobody' (smart-alerts rules list shows the rules)"
    ]
