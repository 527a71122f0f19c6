"""Rule templates: every template makes a valid rule, parameters convert, errors are clear."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.messages import Rule
from pipeline.rules.templates import (
    DOC_BEGIN,
    DOC_END,
    TEMPLATE_DIR,
    Template,
    TemplateError,
    example_params,
    get_template,
    instantiate,
    list_templates,
    load_template,
    render_table,
    templates_markdown,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "rules.md"
TEMPLATES = list_templates()
NAMES = [template.name for template in TEMPLATES]


def test_at_least_twelve_templates_one_file_each() -> None:
    assert len(TEMPLATES) >= 12
    assert len(set(NAMES)) == len(NAMES)
    files = sorted(p.stem for p in TEMPLATE_DIR.iterdir() if p.suffix in (".yaml", ".yml"))
    assert files == sorted(NAMES)
    for expected in (
        "breakout_above_resistance",
        "rsi_oversold_bounce",
        "golden_cross",
        "death_cross",
        "iv_rank_high_premium_selling",
        "iv_crush_after_earnings",
        "unusual_call_sweep",
        "whale_block",
        "repeated_hits",
        "stop_loss_position",
        "take_profit_position",
        "expiry_approaching",
        "spread_widening",
        "bollinger_squeeze_break",
    ):
        assert expected in NAMES


@pytest.mark.parametrize("template", TEMPLATES, ids=NAMES)
def test_every_template_instantiates_with_defaults(template: Template) -> None:
    assert template.description and all(p.description for p in template.parameters)
    rule = template.instantiate(symbol="AAPL", user_id="u-1", params=example_params(template))
    assert isinstance(rule, Rule)
    assert rule.symbol == "AAPL" and rule.user_id == "u-1"
    assert re.fullmatch(rf"tpl-{template.name}-AAPL-u-1-[0-9a-f]{{8}}", rule.id)
    assert "${" not in rule.name and rule.name.startswith("AAPL ")
    again = instantiate(
        template.name, symbol="AAPL", user_id="u-1", params=example_params(template)
    )
    assert again == rule
    # every default spelled out gives the same rule (and id)
    explicit = {p.name: p.show(p.default) for p in template.parameters if not p.required}
    explicit.update(example_params(template))
    assert template.instantiate(symbol="AAPL", user_id="u-1", params=explicit) == rule


def test_parameters_convert_to_their_types() -> None:
    rule = instantiate(
        "unusual_call_sweep",
        symbol="NVDA",
        user_id="u-2",
        params={"min_premium": "1.5m", "max_days_to_expiry": "30", "cooldown": "1h"},
    )
    leaf = rule.conditions
    assert leaf.min_premium == 1_500_000
    assert leaf.max_days_to_expiry == 30
    assert leaf.right == "C"
    assert rule.cooldown_seconds == 3600
    assert rule.name == "NVDA call sweep at or above the ask, premium $1.5m or more"

    rsi = instantiate(
        "rsi_oversold_bounce",
        symbol="SPY",
        user_id="u-1",
        params={"threshold": "25.5", "period": "9", "timeframe": "15m"},
    )
    assert (
        rsi.conditions
        == Rule.model_validate(
            {
                "id": "x",
                "user_id": "x",
                "name": "x",
                "conditions": {
                    "type": "rsi_below",
                    "threshold": 25.5,
                    "period": 9,
                    "timeframe": "15m",
                },
            }
        ).conditions
    )

    breakout = instantiate(
        "breakout_above_resistance",
        symbol="AAPL",
        user_id="u-1",
        params={"level": "$200", "priority": "critical"},
    )
    assert breakout.priority == "CRITICAL"
    assert breakout.conditions.threshold == 200

    whale = instantiate("whale_block", symbol="SPY", user_id="u", params={"right": "Puts"})
    assert whale.conditions.right == "P"
    assert "(puts)" in whale.name
    assert instantiate("whale_block", symbol="SPY", user_id="u").conditions.right is None


def test_different_parameters_make_a_different_rule_id() -> None:
    base = instantiate("golden_cross", symbol="AAPL", user_id="u-1")
    other = instantiate("golden_cross", symbol="AAPL", user_id="u-1", params={"timeframe": "1h"})
    assert base.id != other.id
    assert base.id.rsplit("-", 1)[0] == other.id.rsplit("-", 1)[0] == "tpl-golden_cross-AAPL-u-1"
    assert instantiate("golden_cross", symbol="MSFT", user_id="u-1").id != base.id


def test_watchlist_and_wildcard_symbols() -> None:
    watchlist = instantiate("whale_block", symbol="AAPL, MSFT", user_id="u-1")
    assert (watchlist.symbol, watchlist.symbols) == (None, ["AAPL", "MSFT"])
    assert watchlist.id.startswith("tpl-whale_block-AAPL+MSFT-u-1-")
    wildcard = instantiate("whale_block", symbol="*", user_id="u-1")
    assert wildcard.is_wildcard
    assert wildcard.id.startswith("tpl-whale_block-any-u-1-")
    assert wildcard.name.startswith("any symbol ")
    long = instantiate("whale_block", symbol=",".join(f"SYM{i}" for i in range(60)), user_id="u")
    assert len(long.id) <= 128


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, "no template 'nope'"),
        ("golden_crosss", {}, "no template 'golden_crosss' (did you mean 'golden_cross'?)"),
        (
            "rsi_oversold_bounce",
            {"foo": "1"},
            "template rsi_oversold_bounce: unknown parameter 'foo' (parameters: threshold, "
            "period, timeframe, cooldown)",
        ),
        (
            "breakout_above_resistance",
            {},
            "template breakout_above_resistance: parameter 'level' is required "
            "(the resistance price; e.g. level=200)",
        ),
        (
            "rsi_oversold_bounce",
            {"period": "fourteen"},
            "template rsi_oversold_bounce: parameter 'period': expected a whole number, "
            "got 'fourteen'",
        ),
        (
            "rsi_oversold_bounce",
            {"threshold": "150"},
            "template rsi_oversold_bounce: parameter 'threshold' = 150: "
            "Input should be less than 100 (conditions.threshold)",
        ),
        (
            "rsi_oversold_bounce",
            {"timeframe": "5x"},
            "template rsi_oversold_bounce: parameter 'timeframe': not a timeframe: '5x'",
        ),
        (
            "rsi_oversold_bounce",
            {"cooldown": "30"},
            "template rsi_oversold_bounce: parameter 'cooldown': expected a duration like 30m",
        ),
        (
            "unusual_call_sweep",
            {"min_premium": "lots"},
            "template unusual_call_sweep: parameter 'min_premium': expected an amount",
        ),
        (
            "whale_block",
            {"right": "both"},
            "template whale_block: parameter 'right': expected one of any, calls, puts, got 'both'",
        ),
        (
            "breakout_above_resistance",
            {"level": "200", "priority": "urgent"},
            "parameter 'priority': expected one of LOW, MEDIUM, HIGH, CRITICAL, got 'urgent'",
        ),
        (
            "golden_cross",
            {"fast": "300"},
            "template golden_cross: parameters 'fast' = 300, 'slow' = 200, 'timeframe' = 1d: "
            "fast period (300) must be shorter than slow (200)",
        ),
        (
            "iv_crush_after_earnings",
            {"change_pct": "0"},
            "template iv_crush_after_earnings: parameters 'change_pct' = 0, 'window' = 1d: "
            "percent must not be 0",
        ),
    ],
)
def test_errors_name_the_template_and_parameter(
    name: str, params: dict[str, str], message: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        instantiate(name, symbol="AAPL", user_id="u-1", params=params)
    assert message in str(caught.value)


def test_template_error_is_a_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


# ---------------------------------------------------------------- template files


GOOD = """\
name: {name}
description: A test template.
parameters:
  level:
    type: money
    default: 1k
    description: the level
rule:
  name: "${{symbol}} above ${{level}}"
  conditions:
    type: price_above
    threshold: "${{level}}"
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("name: {name}", "name: other"), "must equal the file name"),
        (GOOD.replace('${{level}}"\n', '${{lvl}}"\n'), "undeclared placeholders: lvl"),
        (GOOD + "  symbol: AAPL\n", "the rule must not set symbol"),
        (GOOD.replace("    default: 1k\n", ""), "a required parameter needs an example"),
        (GOOD.replace("type: money", "type: float"), "type must be one of"),
        (GOOD.replace("default: 1k", "default: lots"), "bad default"),
        (GOOD.replace("description: A test template.\n", ""), "needs a description"),
        (GOOD + "extra: 1\n", "unknown keys: extra"),
        (
            GOOD.replace(
                "parameters:\n",
                "parameters:\n  spare: {{type: int, default: 1, description: unused}}\n",
            ),
            "parameters never used in the rule: spare",
        ),
    ],
)
def test_bad_template_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sample.yaml"
    path.write_text(text.format(name="sample"), encoding="utf-8")
    with pytest.raises(TemplateError, match=re.escape(message)):
        load_template(path)


def test_good_template_file_and_json(tmp_path: Path) -> None:
    (tmp_path / "sample.yaml").write_text(GOOD.format(name="sample"), encoding="utf-8")
    (tmp_path / "other.json").write_text(
        json.dumps(
            {
                "name": "other",
                "description": "JSON works too.",
                "parameters": {},
                "rule": {
                    "name": "${symbol} other",
                    "conditions": {"type": "iv_above", "threshold": 1},
                },
            }
        ),
        encoding="utf-8",
    )
    rule = instantiate(
        "sample", symbol="AAPL", user_id="u", params={"level": "2k"}, directory=tmp_path
    )
    assert rule.conditions.threshold == 2000
    assert rule.name == "AAPL above 2k"
    assert [t.name for t in list_templates(tmp_path)] == ["other", "sample"]


# ---------------------------------------------------------------- listing, docs, CLI


def test_render_table_lists_every_template() -> None:
    table = render_table(TEMPLATES).splitlines()
    assert table[0].split() == ["NAME", "DESCRIPTION", "PARAMETERS", "(default)"]
    assert [line.split()[0] for line in table[1:]] == NAMES
    sweep = next(line for line in table if line.startswith("unusual_call_sweep"))
    assert sweep.endswith("min_premium=250k max_days_to_expiry=60 cooldown=15m")
    breakout = next(line for line in table if line.startswith("breakout_above_resistance"))
    assert "level=(required)" in breakout


def test_docs_template_section_is_current() -> None:
    text = DOCS.read_text(encoding="utf-8")
    start, end = text.index(DOC_BEGIN), text.index(DOC_END) + len(DOC_END)
    assert text[start:end] == templates_markdown(), (
        "docs/rules.md is stale: run `python -m pipeline.rules.templates`"
    )


def test_cli_templates_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates", "list"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert re.search(rf"^{name}\s", out, re.M)
    assert "threshold=30 period=14 timeframe=1h cooldown=4h" in out


def test_cli_templates_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates", "show", "golden_cross"]) == 0
    out = capsys.readouterr().out
    assert "fast (int) = 50" in out
    assert "conditions with defaults: sma(50) crosses above sma(200, 1d)" in out


def test_cli_rules_from_template(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["rules", "from-template", "golden_cross", "--symbol", "MSFT", "--user", "u-2"]
    assert main([*argv, "--param", "timeframe=1h", "--param", "fast=20"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = get_template("golden_cross").instantiate(
        symbol="MSFT", user_id="u-2", params={"timeframe": "1h", "fast": "20"}
    )
    assert printed == expected.model_dump(mode="json", exclude_none=True)
    assert printed["conditions"] == {
        "type": "sma_cross_up",
        "fast": 20,
        "slow": 200,
        "timeframe": "1h",
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--param", "fast"], "--param 'fast': write name=value"),
        (["--param", "speed=1"], "unknown parameter 'speed'"),
    ],
)
def test_cli_rules_from_template_errors(
    capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["rules", "from-template", "golden_cross", "--symbol", "MSFT", "--user", "u-2"]
    assert main([*argv, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
