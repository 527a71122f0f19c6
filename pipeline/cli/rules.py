"""The ``rules`` verbs that read and change the configured stores: apply (and from-template
--publish), list, show, history, enable, disable, delete; and ``load_rules``, the rule files
they (and ``backtest``) read.

Every change goes through the API's rule store (api/rule_store.py), so a rule has one history
whoever changed it: in one PostgreSQL transaction the rules are locked, their new versions are
written (alert_rules with the job's own upsert, and a row each in alert_rule_versions), the
messages are published to the rules topic through the checked producer, and the transaction
commits only after the broker acknowledged them. A refusal publishes nothing and writes nothing;
a broker that does not acknowledge rolls the transaction back.
A rule another producer put on the topic (``replay``, the demo) is read as the job stored it and
imported on its first change, as the API does.
"""

from __future__ import annotations

import difflib
import getpass
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from pydantic import ValidationError

from api import rule_store as store
from connectors.files import read_rows
from pipeline.cli.commands import CommandError, Echo, echo_stderr, rule_json, wait_for_servers
from pipeline.config import Settings
from pipeline.messages import Rule, describe_validation_error, format_timestamp
from sinks.kafka import CheckedProducer, OutgoingRecord

# ---------------------------------------------------------------- rule files

TEXT_SUFFIXES = (".txt", ".yaml", ".yml")


def load_rules(path: Path, *, user_id: str | None = None, echo: Echo = echo_stderr) -> list[Rule]:
    """The rules of a file, in file order (docs/rules.md, "Rule files").

    ``.json`` holds one rule object or a list of them; ``.jsonl``, ``.csv`` and ``.parquet`` a
    rule a row; ``.yaml``/``.yml`` a list whose items are rule mappings or rule texts; ``.txt``
    a rule text a line (blank lines and ``#`` comments skipped). A rule text that does not
    parse is read as plain English (``pipeline.rules.english.understand``): the rule text it
    was read as and the words it did not use go to ``echo``. ``user_id`` (``--user``) is the
    user of every rule that names none; a rule naming another user is refused.
    """
    suffix = path.suffix.lower()
    if not path.exists():
        raise CommandError(f"{path}: no such file")
    if suffix == ".json":
        data = _read_json(path)
        if isinstance(data, dict):  # one rule, as ``rules parse`` and ``rules show`` print it
            return [_mapping_rule(data, path, user_id)]
        if not isinstance(data, list):
            raise CommandError(f"{path}: expected a rule (a JSON object) or a list of rules")
        return [_mapping_rule(item, f"{path}: item {n}", user_id) for n, item in enumerate(data, 1)]
    if suffix not in TEXT_SUFFIXES:
        return [
            _mapping_rule(row, f"{path}: row {n}", user_id)
            for n, row in enumerate(read_rows(path), start=1)
        ]
    content = _read_text(path)
    if suffix == ".txt":
        return [
            _text_rule(line, f"{path}:{n}", user_id, echo)
            for n, line in enumerate(content.splitlines(), start=1)
            if line.strip() and not line.strip().startswith("#")
        ]
    import yaml

    try:
        items = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise CommandError(f"{path}: not YAML: {_first_line(str(exc))}") from exc
    if not isinstance(items, list):
        raise CommandError(f"{path}: expected a YAML list of rules (mappings or rule texts)")
    rules = []
    for n, item in enumerate(items, start=1):
        where = f"{path}: item {n}"
        if isinstance(item, str):
            rules.append(_text_rule(item, where, user_id, echo))
        elif isinstance(item, dict):
            rules.append(_mapping_rule(item, where, user_id))
        else:
            raise CommandError(f"{where} is neither a rule nor a rule text")
    return rules


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise CommandError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except ValueError as exc:
        raise CommandError(f"{path}: not JSON: {exc}") from exc


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _mapping_rule(item: Any, where: str | Path, user_id: str | None) -> Rule:
    if not isinstance(item, dict):
        raise CommandError(f"{where} is not a rule (a JSON object or mapping)")
    fields = dict(item)
    if user_id is not None:
        named = fields.setdefault("user_id", user_id)
        if named != user_id:
            raise CommandError(
                f"{where} has user_id {named!r}, not {user_id!r} (given with --user): "
                "leave --user out or apply that user's rules in a file of their own"
            )
    try:
        return Rule.model_validate({"v": 1, **fields})
    except ValidationError as exc:
        raise CommandError(
            f"{where} is not a valid Rule: {describe_validation_error(exc)}"
        ) from exc


def _text_rule(text: str, where: str, user_id: str | None, echo: Echo) -> Rule:
    from pipeline.rules.english import EnglishRuleError, understand
    from pipeline.rules.text import RuleTextError

    try:
        understood = understand(text, user_id=user_id)
    except (RuleTextError, EnglishRuleError) as exc:
        raise CommandError(f"{where}: {exc}") from exc
    if understood.canonical is not None:
        echo(f"{where}: understood: {understood.canonical}")
        if understood.unused:
            echo(f"{where}: words not used: {' '.join(understood.unused)}")
    return understood.rule


# ---------------------------------------------------------------- the stores

Connection = psycopg.Connection[dict[str, Any]]


def actor() -> str:
    """``written_by`` of the CLI's versions: ``cli:`` and the login name running it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container's anonymous uid)
        return "cli"


@contextmanager
def _database(settings: Settings) -> Iterator[Connection]:
    """A connection in one transaction (committed when the block ends without an error)."""
    database_url = settings.require_servers()[1]
    timeout = max(1, int(settings.dependencies.connect_timeout_seconds))
    try:
        with (
            psycopg.connect(database_url, row_factory=dict_row, connect_timeout=timeout) as conn,
            conn.transaction(),
        ):
            yield conn
    except psycopg.errors.UndefinedTable as exc:
        raise CommandError(
            f"PostgreSQL has no rule tables ({_first_line(str(exc))}): apply the migrations "
            "with smart-alerts migrate"
        ) from exc
    except psycopg.errors.UniqueViolation as exc:
        raise CommandError(
            "another writer created one of these rules at the same time: run the command again"
        ) from exc


@contextmanager
def _writer(settings: Settings) -> Iterator[tuple[Connection, CheckedProducer]]:
    """The transaction and the checked producer of a change, once the broker and then
    PostgreSQL answer (within ``[dependencies] startup_wait_seconds``)."""
    wait_for_servers(settings, "kafka", "postgres")
    # linger 0: one change, one broker round trip, as the API's producer does.
    producer = CheckedProducer(
        settings.require_servers()[0], flush_timeout_s=10.0, extra_config={"linger.ms": 0}
    )
    try:
        with _database(settings) as conn:
            yield conn, producer
    finally:
        producer.close()


def _publish(settings: Settings, producer: CheckedProducer, rules: list[Rule]) -> None:
    """The rules as the API publishes them (``Rule.to_json``, keyed by id), acknowledged."""
    topic = settings.topics.rules
    producer.write_batch(
        [OutgoingRecord(topic, rule.id.encode(), rule.to_json()) for rule in rules]
    )


def _live(current: store.StoredRule | None, rule_id: str) -> store.StoredRule:
    if current is None:
        raise CommandError(f"no rule {rule_id!r} (smart-alerts rules list shows the rules)")
    if not current.live:
        assert current.deleted_at is not None
        raise CommandError(
            f"rule {rule_id!r} was deleted at {format_timestamp(current.deleted_at)} "
            f"(smart-alerts rules history {rule_id} shows its versions)"
        )
    return current


# ---------------------------------------------------------------- apply

Outcome = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Decision:
    """What applying a rule does to the stored one: write it (``change``), nothing
    (unchanged), or nothing and say why (``refusal``, with ``diff`` lines when the contents
    differ)."""

    rule: Rule
    current: store.StoredRule | None
    change: store.Change | None = None
    refusal: str | None = None
    diff: tuple[str, ...] = ()

    @property
    def outcome(self) -> Outcome:
        if self.change == "create":
            return "created"
        return "updated" if self.change == "update" else "unchanged"


def decide(rule: Rule, current: store.StoredRule | None, source: str) -> Decision:
    """Whether ``rule`` (from ``source``) may replace the stored rule ``current``: a new id or
    a higher version is written; the same version with the same content is unchanged; the same
    version with other content, or a lower one, is refused with the diff, and so is another
    owner's id."""
    if current is None:
        return Decision(rule, current, change="create")
    if current.owner != rule.user_id:
        return Decision(
            rule,
            current,
            refusal=f"rule {rule.id!r} belongs to {current.owner!r}, not {rule.user_id!r}: "
            "a rule's owner cannot change (give the rule another id)",
        )
    raise_to = f"raise version to {current.version + 1}"
    if not current.live:
        if rule.version > current.version:
            return Decision(rule, current, change="create")
        return Decision(
            rule,
            current,
            refusal=f"rule {rule.id!r} was deleted at version {current.version}; "
            f"{raise_to} to create it again",
        )
    document = store.message_document(rule)
    if rule.version > current.version:
        return Decision(rule, current, change="update")
    if rule.version == current.version and document == current.document:
        return Decision(rule, current)
    diff = tuple(
        difflib.unified_diff(
            _json_lines(ordered(current.document)),
            _json_lines(document),
            fromfile=f"stored {rule.id} v{current.version}",
            tofile=f"{source} {rule.id} v{rule.version}",
            lineterm="",
        )
    )
    if rule.version == current.version:
        why = f"version {rule.version} is stored with other content"
    else:
        why = f"version {rule.version} is older than the stored version {current.version}"
    return Decision(
        rule, current, refusal=f"rule {rule.id!r}: {why}; {raise_to} to replace it", diff=diff
    )


def ordered(document: dict[str, Any]) -> dict[str, Any]:
    """A stored document with its fields in the message's order (PostgreSQL's jsonb keeps
    its own order), so that a diff or a listing shows only what differs."""
    return store.message_document(Rule.model_validate(document))


def _json_lines(document: dict[str, Any]) -> list[str]:
    return json.dumps(document, indent=2, ensure_ascii=False).splitlines()


def rules_apply(
    settings: Settings, path: Path, echo: Echo = print, *, user_id: str | None = None
) -> list[Decision]:
    """Apply a rule file whole or not at all (``apply_rules``)."""
    rules = load_rules(path, user_id=user_id)
    if not rules:
        raise CommandError(f"{path}: no rules in the file")
    return apply_rules(settings, rules, path.name, echo)


def apply_rules(
    settings: Settings, rules: list[Rule], source: str, echo: Echo = print
) -> list[Decision]:
    """Apply ``rules`` (from ``source``, a file name or a template) whole or not at all: every
    rule is checked against the stored one under its lock (``decide``); if any is refused, the
    refusals (with their diffs) go to stderr and nothing is written or published; else the new
    and raised versions are written, published and committed in one transaction. Unchanged
    rules are not published again."""
    seen: dict[Any, str] = {}
    for rule in rules:
        key = store.rule_key(rule.id)
        if key in seen:
            raise CommandError(
                f"{source}: rule {rule.id!r} appears twice (also as {seen[key]!r}): "
                "a file holds one version of each rule"
            )
        seen[key] = rule.id
    with _writer(settings) as (conn, producer):
        # Locked in key order, so two applies of overlapping files never wait for each other
        # in a cycle (the API locks one rule at a time).
        current = {key: store.lock_rule(conn, rule_id) for key, rule_id in sorted(seen.items())}
        decisions = [decide(rule, current[store.rule_key(rule.id)], source) for rule in rules]
        refused = [d for d in decisions if d.refusal is not None]
        if refused:
            for decision in refused:
                for line in decision.diff:
                    echo_stderr(line)
                if len(refused) > 1:
                    echo_stderr(f"refused: {decision.refusal}")
            first = refused[0].refusal if len(refused) == 1 else f"{len(refused)} rules refused"
            raise CommandError(f"{first} (nothing in {source} was applied)")
        writes = [
            store.VersionWrite(d.rule, d.current, d.change)
            for d in decisions
            if d.change is not None
        ]
        if writes:
            store.write_versions(conn, writes, actor=actor())
            _publish(settings, producer, [write.rule for write in writes])
    for decision in decisions:
        rule = decision.rule
        note = ": the stored version, not published again" if decision.change is None else ""
        echo(f"{decision.outcome} {rule.id} v{rule.version} ({rule.name}){note}")
    return decisions


def rules_from_template(
    settings: Settings | None,
    name: str,
    *,
    symbol: str,
    user_id: str,
    params: list[str],
    echo: Echo = print,
) -> Rule:
    """Print the rule of a template; with ``settings``, also apply it (``apply_rules``)."""
    from pipeline.rules.templates import instantiate

    values: dict[str, str] = {}
    for param in params:
        key, sep, value = param.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--param {param!r}: write name=value")
        values[key.strip()] = value
    rule = instantiate(name, symbol=symbol, user_id=user_id, params=values)
    echo(rule_json(rule))
    if settings is not None:
        apply_rules(settings, [rule], f"template {name}", echo_stderr)
    return rule


# ---------------------------------------------------------------- enable, disable, delete


def rules_activate(settings: Settings, rule_id: str, active: bool, echo: Echo = print) -> Rule:
    """Set or clear ``active`` as the rule's next version; a rule already so is left alone.
    Returns the rule as it then stands."""
    word: store.Change = "enable" if active else "disable"
    with _writer(settings) as (conn, producer):
        current = _live(store.lock_rule(conn, rule_id), rule_id)
        rule = current.rule
        if rule.active == active:
            echo(
                f"{current.rule_id} v{current.version} is already "
                f"{'active' if active else 'inactive'}: nothing changed"
            )
            return rule
        rule = rule.model_copy(update={"active": active, "version": current.version + 1})
        store.write_version(conn, rule, previous=current, change=word, actor=actor())
        _publish(settings, producer, [rule])
    echo(f"{word}d {rule.id}: v{rule.version} published to {settings.topics.rules}")
    return rule


def rules_delete(settings: Settings, rule_id: str, echo: Echo = print) -> None:
    """Delete the rule: a tombstone on the rules topic, and the stores marked (its versions
    stay, shown by ``rules history``)."""
    with _writer(settings) as (conn, producer):
        current = _live(store.lock_rule(conn, rule_id), rule_id)
        store.delete_rule(conn, current)
        topic = settings.topics.rules
        producer.write_batch([OutgoingRecord(topic, current.rule_id.encode(), None)])
    echo(f"deleted {current.rule_id} (was v{current.version}): tombstone published to {topic}")


# ---------------------------------------------------------------- list, show, history

PAGE = 1000


def rules_list(
    settings: Settings,
    *,
    user_id: str | None = None,
    symbol: str | None = None,
    active: bool | None = None,
    as_json: bool = False,
    echo: Echo = print,
) -> list[store.StoredRule]:
    """The live rules, newest first: a table, or (``as_json``) a JSON list that ``rules
    apply`` takes back."""
    wait_for_servers(settings, "postgres")
    where = store.RuleFilter(owner=user_id, symbol=symbol, active=active)
    found: list[store.StoredRule] = []
    with _database(settings) as conn:
        after: tuple[Any, str] | None = None
        while True:
            page = store.list_rules(conn, where, after, PAGE)
            found.extend(page)
            if len(page) < PAGE:
                break
            after = (page[-1].created_at, page[-1].rule_id)
    if as_json:
        echo(json.dumps([ordered(row.document) for row in found], indent=2, ensure_ascii=False))
        return found
    head = ("ID", "VERSION", "USER", "SYMBOL", "PRIORITY", "ACTIVE", "NAME")
    rows = [
        (
            row.rule_id,
            str(row.version),
            row.owner,
            _scope(row.rule),
            row.rule.priority.value,
            "yes" if row.rule.active else "no",
            _clip(row.rule.name, 60),
        )
        for row in found
    ]
    if rows:
        echo(render_table(head, rows))
    echo(f"{len(rows)} rule{'' if len(rows) == 1 else 's'}")
    return found


def _scope(rule: Rule) -> str:
    if rule.symbols is not None:
        return _clip(",".join(rule.symbols), 24)
    return rule.symbol or "*"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def render_table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [head, *rows]
    )


def rules_show(
    settings: Settings, rule_id: str, *, as_json: bool = False, echo: Echo = print
) -> store.StoredRule:
    """The rule's JSON as published; without ``as_json`` led by who wrote it when and its
    rule text (``format_rule``: what ``rules parse`` reads back into the same rule)."""
    from pipeline.rules.text import format_rule

    wait_for_servers(settings, "postgres")
    with _database(settings) as conn:
        current = _live(store.read_rule(conn, rule_id), rule_id)
    if not as_json:
        rule = current.rule
        by = current.written_by or "another producer (imported: the job's stored copy)"
        echo(
            f"rule {current.rule_id} v{current.version} of {current.owner}, "
            f"{'active' if rule.active else 'inactive'}, written "
            f"{format_timestamp(current.written_at)} by {by}"
        )
        echo(f"text: {format_rule(rule)}")
    echo(json.dumps(ordered(current.document), indent=2, ensure_ascii=False))
    return current


def rules_history(
    settings: Settings, rule_id: str, *, as_json: bool = False, echo: Echo = print
) -> list[dict[str, Any]]:
    """Every version of the rule, newest first, each with what changed from the one before
    (field by field); the oldest with its rule text. A deleted rule's history is shown too."""
    from pipeline.rules.text import format_rule

    wait_for_servers(settings, "postgres")
    versions: list[dict[str, Any]] = []
    with _database(settings) as conn:
        current = store.read_rule(conn, rule_id)
        if current is None:
            raise CommandError(f"no rule {rule_id!r} (smart-alerts rules list shows the rules)")
        before: int | None = None
        while True:
            page = store.list_versions(conn, current, before, PAGE)
            versions.extend(page)
            if len(page) < PAGE:
                break
            before = page[-1]["version"]
    if as_json:
        items = [
            {
                "version": row["version"],
                "change": row["change"],
                "written_by": row["written_by"],
                "written_at": format_timestamp(row["written_at"]),
                "rule": ordered(row["document"]),
            }
            for row in versions
        ]
        echo(json.dumps(items, indent=2, ensure_ascii=False))
        return versions
    count = f"{len(versions)} version{'' if len(versions) == 1 else 's'}"
    state = ""
    if current.deleted_at is not None:
        state = f", deleted at {format_timestamp(current.deleted_at)}"
    echo(f"rule {current.rule_id} of {current.owner}: {count}{state}")
    for newer, older in zip(versions, [*versions[1:], None], strict=True):
        echo(
            f"v{newer['version']}  {format_timestamp(newer['written_at'])}  "
            f"{newer['change']:<8}  by {newer['written_by'] or 'another producer'}"
        )
        if older is None:
            echo(f"    {format_rule(Rule.model_validate(newer['document']))}")
            continue
        changes = field_changes(older["document"], newer["document"])
        for line in changes or ["(same content)"]:
            echo(f"    {line}")
    return versions


# ---------------------------------------------------------------- differences

_ABSENT = object()


def field_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two rule documents, one line a field (``conditions.all.0.
    threshold: 200 -> 210``); the version, which every change raises, is left out."""
    before = dict(_flatten(old))
    after = dict(_flatten(new))
    lines = []
    for name in [*before, *(name for name in after if name not in before)]:
        if name == "version":
            continue
        was, now = before.get(name, _ABSENT), after.get(name, _ABSENT)
        if was != now:
            lines.append(f"{name}: {_shown(was)} -> {_shown(now)}")
    return lines


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves by dotted path; a list of objects (a condition group) by index, a list of
    plain values (symbols, channels) as one value."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _flatten(item, f"{prefix}.{name}" if prefix else name)
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}.{index}")
    else:
        yield prefix, value


def _shown(value: Any) -> str:
    if value is _ABSENT:
        return "(none)"
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a threshold of 200 reads 200, not 200.0
    return json.dumps(value, ensure_ascii=False)
