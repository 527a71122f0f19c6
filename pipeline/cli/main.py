"""The ``smart-alerts`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli import commands
from pipeline.config import ConfigError, Settings, load_settings
from pipeline.config import Logging as LoggingConfig
from pipeline.logs import configure as configure_logs

if TYPE_CHECKING:
    from connectors.ops_server import OpsServer

DESCRIPTION = """\
VS-9 Smart Alerts: a streaming alert engine for options trading.

Servers come from the config file (--config or SMART_ALERTS_CONFIG) and the environment
(KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, REDIS_URL; SMART_ALERTS_<SECTION>__<KEY> for the
rest). `demo` needs none: it starts its own broker, PostgreSQL and Redis.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smart-alerts",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on a failure, show the traceback (and Rust's backtrace) instead of the one-line "
        "error",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser(
        "run",
        help="run the dataflow against the configured Kafka, PostgreSQL and Redis",
        description="Run the job until stopped (SIGINT/SIGTERM). With [recovery] directory "
        "set, state and input offsets are snapshotted there and a restart resumes.",
    )
    run.add_argument(
        "--bounded",
        action="store_true",
        help="read every input topic to its current end, then stop (replays, batch runs)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on this port (overrides [ops] port; "
        "default 9464 on [ops] host, 127.0.0.1)",
    )

    for name in ("demo", "dev"):
        demo = verbs.add_parser(
            name,
            help="run the job on an embedded broker, PostgreSQL and Redis over bundled sample data"
            + (" (same as demo)" if name == "dev" else ""),
            description="Start the embedded stack, create topics, migrate, load example rules, "
            "profiles and feedback, replay an hour of ticks and a few malformed messages, run "
            "the dataflow and print a summary read back from Kafka, PostgreSQL and Redis.",
        )
        demo.add_argument(
            "--state-dir",
            type=Path,
            default=Path(".state/demo"),
            help="where the embedded servers keep their data and logs (default: .state/demo)",
        )
        demo.add_argument(
            "--serve",
            action="store_true",
            help="then keep the stack and the job running live and serve the HTTP API on "
            "127.0.0.1:8080 (a free port if taken), printing a token of the demo user and how "
            "to publish a tick, until Ctrl-C (docs/api.md)",
        )

    verbs.add_parser("migrate", help="apply the SQL migrations in sql/ that are not yet applied")
    maintain = verbs.add_parser(
        "maintain",
        help="create the coming months' history partitions and drop expired ones ([retention])",
        description="Creates the month partitions of triggered_alerts, delivery_logs and "
        "alert_feedback for this month and [retention] premake_months ahead, moves rows out of "
        "the default partitions, drops months older than [retention]. Idempotent and safe to "
        "run twice at once: run it daily from cron or a CronJob, as the role that migrates.",
    )
    maintain.add_argument(
        "--now", help="act as if it were this date or time (ISO, UTC unless an offset is given)"
    )

    topics = verbs.add_parser("topics", help="manage Kafka topics")
    topic_verbs = topics.add_subparsers(dest="topics_verb", required=True, metavar="ACTION")
    topic_verbs.add_parser(
        "create", help="create the input and output topics (partitions from [partitions])"
    )

    rules = verbs.add_parser("rules", help="manage alert rules")
    rule_verbs = rules.add_subparsers(dest="rules_verb", required=True, metavar="ACTION")
    apply = rule_verbs.add_parser(
        "apply",
        help="write new rules and new versions to PostgreSQL and the rules topic: a JSON "
        "object or list, JSONL, CSV/Parquet, a YAML list, or .txt rule texts",
        description="A file is applied whole or not at all. A rule at its stored version with "
        "the same content is left unchanged; the same version with other content, or a lower "
        "version, is refused with the diff (exit 2).",
    )
    apply.add_argument("file", type=Path)
    apply.add_argument("--user", help="user of every rule that names none (JSON files too)")
    listing = rule_verbs.add_parser("list", help="the stored rules, newest first")
    listing.add_argument("--user", help="only this user's rules")
    listing.add_argument("--symbol", help="only rules on this symbol (or with it in a watchlist)")
    state = listing.add_mutually_exclusive_group()
    state.add_argument(
        "--active", dest="active", action="store_true", default=None, help="only active rules"
    )
    state.add_argument(
        "--inactive", dest="active", action="store_false", help="only inactive (disabled) rules"
    )
    listing.add_argument(
        "--json", action="store_true", help="a JSON list of the rules (rules apply takes it)"
    )
    for name, what in (
        ("show", "a rule's JSON and its rule text"),
        ("history", "a rule's versions: when, by whom, and what changed"),
    ):
        one = rule_verbs.add_parser(name, help=what)
        one.add_argument("id", help="the rule id")
        one.add_argument("--json", action="store_true", help="JSON only")
    for name, what in (
        ("enable", "set a rule active (a new version)"),
        ("disable", "set a rule inactive (a new version; the engine keeps it unevaluated)"),
        ("delete", "delete a rule: a tombstone on the rules topic, and the stores marked"),
    ):
        rule_verbs.add_parser(name, help=what).add_argument("id", help="the rule id")
    parse = rule_verbs.add_parser(
        "parse", help="print the rule JSON of a rule text (docs/rules.md has the grammar)"
    )
    parse.add_argument("text", nargs="+", help="the rule text (quote it for the shell)")
    parse.add_argument("--user", help="user id, unless the text says 'user U'")
    parse.add_argument("--id", help="rule id (default: derived from the text and user)")
    from_template = rule_verbs.add_parser(
        "from-template", help="print (and with --publish, publish) a rule made from a template"
    )
    from_template.add_argument("name", help="template name (smart-alerts templates list)")
    from_template.add_argument(
        "--symbol", required=True, help="symbol, a watchlist A,B,C or * for every symbol"
    )
    from_template.add_argument("--user", required=True, help="the rule's user id")
    from_template.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="a template parameter"
    )
    from_template.add_argument(
        "--publish", action="store_true", help="also publish the rule to the rules topic"
    )

    templates = verbs.add_parser("templates", help="rule templates (pipeline/rules/templates/)")
    template_verbs = templates.add_subparsers(
        dest="templates_verb", required=True, metavar="ACTION"
    )
    template_verbs.add_parser("list", help="name, description and parameters of each template")
    show = template_verbs.add_parser("show", help="one template's parameters in detail")
    show.add_argument("name")

    replay = verbs.add_parser(
        "replay", help="publish a Parquet/CSV/JSON/JSONL file to an input topic, validated"
    )
    replay.add_argument("file", type=Path)
    replay.add_argument(
        "--topic",
        required=True,
        help="input topic, by name or config key: ticks, options_flow, rules, positions, "
        "feedback, profiles",
    )

    backtest = verbs.add_parser(
        "backtest",
        help="run the dataflow over Parquet/CSV files and write its alerts to a file",
        description="Rules from JSON/YAML/text; ticks, flow and positions from Parquet or CSV "
        "with the message fields as columns (ts as a timestamp or text). Market rows are merged "
        "in event-time order and run through the same dataflow as the live job, so the alerts "
        "and their ids equal the live job's. OUT: .parquet, .csv or .jsonl.",
    )
    backtest.add_argument("--rules", type=Path, required=True)
    backtest.add_argument("--ticks", type=Path, help="ticks file (or --archive)")
    backtest.add_argument("--flow", type=Path)
    # Ticks and flow straight from the Parquet archive (smart-alerts archive), by date.
    backtest.add_argument(
        "--archive",
        metavar="ROOT",
        help="read ticks and flow from the archive at ROOT (a folder or s3://bucket/prefix) "
        "instead of --ticks/--flow, for the dates --from to --to",
    )
    backtest.add_argument(
        "--from", dest="date_from", type=_date, metavar="YYYY-MM-DD", help="first UTC date"
    )
    backtest.add_argument(
        "--to", dest="date_to", type=_date, metavar="YYYY-MM-DD", help="last UTC date (included)"
    )
    backtest.add_argument("--positions", type=Path)
    backtest.add_argument("--out", type=Path, required=True)
    backtest.add_argument("--user", help="user of rule texts that name none")
    # Backtest input (docs/operations.md): files as traders have them, not only message fields.
    backtest.add_argument(
        "--tz",
        metavar="ZONE",
        help="read timestamps without a zone in ZONE (e.g. America/New_York); without it they "
        "are an error",
    )
    backtest.add_argument(
        "--columns",
        metavar="FIELD=COLUMN,...",
        help="which ticks file column holds a field, e.g. ts=timestamp,price=c",
    )
    backtest.add_argument("--symbol", help="the symbol of a ticks file without a symbol column")
    backtest.add_argument(
        "--bar",
        metavar="LENGTH",
        help="length of the bars of an OHLCV ticks file (1m, 5m, 1h, 1d); default: the most "
        "common gap between its bars",
    )
    backtest.add_argument(
        "--max-rejected",
        default="1%",
        metavar="N|P%",
        help="end with exit 2 when more rows than this are rejected (default 1%%, rounded up "
        "to whole rows); a run whose every row is rejected always fails",
    )
    backtest.add_argument(
        "--report",
        type=Path,
        metavar="HTML",
        help="also write a self-contained chart of the prices, alerts and indicators (.html)",
    )

    archive = verbs.add_parser(
        "archive",
        help="write every input and output topic to Parquet files by topic and date, beside "
        "the job",
        description="Reads the topics of [archive] topics and writes "
        "ROOT/topic=KEY/date=YYYY-MM-DD/part-P-FIRST-LAST.parquet, exactly once per offset "
        "range (a restart resumes from the files). Runs until SIGTERM/SIGINT, then writes what "
        "it holds and exits 0. docs/operations.md (Archive) is the guide.",
    )
    archive.add_argument("--root", help="a folder or s3://bucket/prefix (default: [archive] root)")
    archive.add_argument(
        "--bounded",
        action="store_true",
        help="read every topic to its current end, write, then stop (backfills, batch runs)",
    )

    _learn_parser(verbs)

    api = verbs.add_parser(
        "api",
        help="serve the HTTP API (rules, alerts, inbox, profile, webhooks, API keys)",
        description="Serve the HTTP API on uvicorn; [api] in the config sets the identity "
        "provider, limits and the address. docs/api.md is the guide.",
    )
    api.add_argument("--host", help="address to bind (default: [api] host, 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (default: [api] port, 8080)")
    api.add_argument(
        "--openapi",
        type=Path,
        metavar="FILE",
        help="write the OpenAPI document to FILE and exit (docs/api/openapi.json is checked in)",
    )

    schemas = verbs.add_parser("schemas", help="JSON Schemas of the messages")
    schema_verbs = schemas.add_subparsers(dest="schemas_verb", required=True, metavar="ACTION")
    export = schema_verbs.add_parser("export", help="write docs/schemas/<topic>.schema.json")
    export.add_argument("--dir", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args)
    if not (args.debug or args.verbose):
        # An expected failure is reported in a line or two below; Rust's backtrace of the
        # panic Bytewax turns an exception into would bury it. -v and --debug keep it.
        os.environ["RUST_BACKTRACE"] = "0"
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("smart-alerts: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        failure = None if args.debug else commands.explain_failure(exc)
        if failure is None:
            raise
        for line in failure.lines():
            print(line, file=sys.stderr)
        return failure.code


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _configure_logging(args: argparse.Namespace) -> None:
    """[logging] of the configuration; a configuration that does not load leaves the defaults
    here and is reported by the verb that needs it."""
    try:
        config = load_settings(args.config).logging
    except ConfigError:
        config = LoggingConfig()
    configure_logs(config.format, "DEBUG" if args.verbose else config.level)


def _dispatch(args: argparse.Namespace) -> int:
    if args.verb in ("demo", "dev"):
        from pipeline.cli.demo import run_demo

        run_demo(args.state_dir, config=args.config, serve=args.serve)
        return 0
    if args.verb == "schemas":
        from pipeline.schemas import SCHEMA_DIR, export

        for path in export(args.dir or SCHEMA_DIR):
            print(path)
        return 0
    if args.verb == "templates":
        commands.templates_list(name=getattr(args, "name", None))
        return 0
    if args.verb == "rules" and args.rules_verb == "parse":
        commands.rules_parse(" ".join(args.text), user_id=args.user, rule_id=args.id)
        return 0
    if args.verb == "rules" and args.rules_verb == "from-template":
        from pipeline.cli import rules

        rules.rules_from_template(
            load_settings(args.config) if args.publish else None,
            args.name,
            symbol=args.symbol,
            user_id=args.user,
            params=args.param,
        )
        return 0
    settings = load_settings(args.config)
    if args.verb == "api":
        from api.serve import openapi_command, serve

        if args.openapi:
            openapi_command(settings, args.openapi)
            return 0
        commands.wait_for_servers(settings, *commands.SERVERS)
        return serve(settings, host=args.host, port=args.port)
    if args.verb == "archive":
        from pipeline.cli.archive import archive_command

        archive_command(settings, root=args.root, bounded=args.bounded)
        return 0
    if args.verb == "backtest":
        from connectors.files import parse_column_map, parse_duration
        from pipeline.cli.backtest import TickInput, backtest_command, from_archive

        backtest_command(
            settings,
            rules=args.rules,
            ticks=args.ticks,
            archive=from_archive(settings, args.archive, args.date_from, args.date_to),
            flow=args.flow,
            positions=args.positions,
            out=args.out,
            user_id=args.user,
            report=args.report,
            tick_input=TickInput(
                tz=args.tz,
                columns=parse_column_map(args.columns) if args.columns else {},
                symbol=args.symbol,
                bar_seconds=parse_duration(args.bar) if args.bar else None,
            ),
            max_rejected=args.max_rejected,
        )
        return 0
    if args.verb == "learn":
        _learn(settings, args)
        return 0
    if args.verb == "maintain":
        from pipeline.cli.maintain import maintain_command

        maintain_command(settings, now=args.now)
        return 0
    if args.verb == "run":
        return _run(settings, args)
    if args.verb == "migrate":
        commands.run_migrations(settings)
    elif args.verb == "topics":
        commands.topics_create(settings)
    elif args.verb == "rules":
        _rules(settings, args)
    elif args.verb == "replay":
        commands.replay(settings, args.file, args.topic)
    return 0


def _rules(settings: Settings, args: argparse.Namespace) -> None:
    from pipeline.cli import rules

    verb = args.rules_verb
    if verb == "apply":
        rules.rules_apply(settings, args.file, user_id=args.user)
    elif verb == "list":
        rules.rules_list(
            settings, user_id=args.user, symbol=args.symbol, active=args.active, as_json=args.json
        )
    elif verb == "show":
        rules.rules_show(settings, args.id, as_json=args.json)
    elif verb == "history":
        rules.rules_history(settings, args.id, as_json=args.json)
    elif verb in ("enable", "disable"):
        rules.rules_activate(settings, args.id, verb == "enable")
    elif verb == "delete":
        rules.rules_delete(settings, args.id)


def _learn_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    learn = verbs.add_parser(
        "learn",
        help="the trained relevance model: simulate engagement, train, evaluate",
        description="docs/personalization.md, 'The trained relevance model'.",
    )
    learn_verbs = learn.add_subparsers(dest="learn_verb", required=True, metavar="VERB")
    simulate = learn_verbs.add_parser(
        "simulate",
        help="write the learning reference scenario's archive: alerts, notifications and the "
        "engagement simulator's feedback",
    )
    simulate.add_argument("--out", type=Path, required=True, metavar="ROOT")
    simulate.add_argument("--users", type=int, default=12)
    simulate.add_argument("--days", type=int, default=10, help="trading days from 2026-01-05")
    simulate.add_argument("--seed", type=int, default=15)
    train = learn_verbs.add_parser(
        "train", help="fit the relevance model on an archive's notified alerts and feedback"
    )
    train.add_argument("--archive", required=True, metavar="ROOT", help="folder or s3:// URL")
    train.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR")
    train.add_argument(
        "--until",
        type=date.fromisoformat,
        metavar="DATE",
        help="train on the alerts of this UTC date and before (default: every day)",
    )
    evaluate = learn_verbs.add_parser(
        "evaluate",
        help="log loss and ROC AUC of the model and of the EMA scores on the days after the "
        "model's training days",
    )
    evaluate.add_argument("--archive", required=True, metavar="ROOT", help="folder or s3:// URL")
    evaluate.add_argument("--model", type=Path, required=True, metavar="MODEL_DIR")
    for verb in (train, evaluate):
        verb.add_argument(
            "--profiles",
            type=Path,
            metavar="FILE",
            help="the users' profiles (JSON list or lines), for their time zones (default: "
            "ROOT/profiles.json if present; users without one are in UTC)",
        )


def _learn(settings: Settings, args: argparse.Namespace) -> None:
    from pipeline.cli import learn

    if args.learn_verb == "simulate":
        learn.simulate_command(args.out, users=args.users, days=args.days, seed=args.seed)
    elif args.learn_verb == "train":
        learn.train_command(
            settings, archive=args.archive, out=args.out, until=args.until, profiles=args.profiles
        )
    else:
        learn.evaluate_command(
            settings, archive=args.archive, model_dir=args.model, profiles=args.profiles
        )


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.dataflow import run

    settings.require_servers()
    commands.check_recovery_directory(settings)
    # Served before the wait for the servers: /readyz then names the one still unreachable.
    ops = _serve_ops(settings, args.metrics_port)
    try:
        commands.wait_for_servers(settings, *commands.SERVERS)
        return run(settings, bounded=args.bounded)
    except BaseException as exc:
        reason = _stopping_failure(exc)
        if reason is None or args.debug:
            raise
        print(f"smart-alerts: stopped: {reason}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        if ops is not None:
            ops.close()


def _serve_ops(settings: Settings, port: int | None) -> OpsServer | None:
    """The ops endpoints. A port named by --metrics-port or [ops] port that cannot be bound is
    a configuration error; the default one taken (several jobs on one host) only loses them."""
    from connectors.ops_server import serve

    try:
        return serve(settings, port=port)
    except OSError as exc:
        where = f"{settings.ops.host}:{settings.ops.port if port is None else port}"
        if port is None and "port" not in settings.ops.model_fields_set:
            logging.getLogger("smart_alerts.ops").warning(
                "no ops endpoints: cannot listen on %s (%s); set [ops] port or --metrics-port",
                where,
                exc.strerror or exc,
            )
            return None
        raise ConfigError(
            f"cannot serve the ops endpoints on {where}: {exc.strerror or exc}; choose another "
            "[ops] host/port or --metrics-port"
        ) from None


EXIT_UNAVAILABLE = commands.EXIT_UNAVAILABLE


def _stopping_failure(exc: BaseException) -> BaseException | None:
    """The failure, anywhere in the chain Bytewax wraps around it, that a restart may cure: a
    dependency that stayed unreachable through its retries, or a lost peer process."""
    from connectors.kafka import KafkaReadError
    from pipeline.dataflow import PeerLostError
    from sinks.kafka import KafkaDeliveryError
    from sinks.postgres import DatabaseUnavailableError
    from sinks.redis_store import RedisUnavailableError

    known = (
        DatabaseUnavailableError,
        RedisUnavailableError,
        KafkaReadError,
        KafkaDeliveryError,
        PeerLostError,
    )
    return cause_in_chain(exc, known)


def cause_in_chain(
    exc: BaseException, kinds: tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of one of ``kinds`` in ``exc``'s chain of causes and contexts."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
