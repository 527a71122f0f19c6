"""Rule text: a compact form of a rule for people who type them, parsed into the Rule model.

Example::

    AAPL price crosses above 200 and (iv_rank > 80 or volume_spike 3x 20 bars 1m)
        cooldown 30m priority high user u-1

The grammar is ``grammar.lark`` next to this module (docs/rules.md shows that file as it is),
read by lark's LALR(1) parser. This module turns the tree into the dicts of a JSON rule,
validated by the same pydantic models (``pipeline/messages.py``,
``pipeline/evaluate/specs.py``); it reads each number's unit by where the number stands and
explains a syntax error in the words of the text: the word at fault, its column, what was
expected there and, for a misspelt word, the closest word that fits.

``parse_rule(format_rule(rule))`` gives back an equal rule for every rule this module parses.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, TypeGuard, cast

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedToken, VisitError
from lark.grammar import Rule as Production
from lark.lexer import PatternStr, TerminalDef
from lark.tree import Meta
from pydantic import BaseModel, ValidationError

from pipeline.evaluate.specs import (
    CONDITION_MODELS,
    FLOW_CONDITIONS,
    SIDE_WORDS,
    AllOf,
    AnyOf,
    ConditionNode,
    timeframe_seconds,
)
from pipeline.messages import Priority, Rule, describe_validation_error, format_timestamp

__all__ = [
    "DOC_BEGIN",
    "DOC_END",
    "RuleTextError",
    "condition_name",
    "format_condition",
    "format_duration",
    "format_money",
    "format_number",
    "format_rule",
    "grammar_markdown",
    "parse_conditions",
    "parse_duration",
    "parse_money",
    "parse_rule",
    "update_docs",
]

_GRAMMAR = resources.files("pipeline.rules").joinpath("grammar.lark")  # package data
DOC_BEGIN = "<!-- grammar:begin (copied from pipeline/rules/grammar.lark, do not edit) -->"
DOC_END = "<!-- grammar:end -->"


class RuleTextError(ValueError):
    """Rule text that cannot become a rule; ``str()`` names the word, its column and a caret."""

    def __init__(self, reason: str, text: str, start: int, end: int) -> None:
        self.reason = reason
        self.text = text
        self.start = start
        self.end = max(end, start + 1)
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", start)
        line = text[line_start : line_end if line_end != -1 else len(text)]
        self.line = text.count("\n", 0, start) + 1
        self.column = start - line_start + 1
        width = max(1, min(self.end, line_start + len(line) + 1) - start)
        where = f"column {self.column}"
        if "\n" in text.strip("\n"):
            where = f"line {self.line}, {where}"
        shown = line.replace("\t", " ")
        super().__init__(
            f"rule text: {reason} at {where}:\n  {shown}\n  {' ' * (self.column - 1)}{'^' * width}"
        )


# ---------------------------------------------------------------- the grammar


class _Grammar:
    """The parser of grammar.lark and the words its error messages draw on."""

    def __init__(self) -> None:
        source = _GRAMMAR.read_text(encoding="utf-8")
        self.lark = Lark(
            source,
            parser="lalr",
            lexer="basic",
            start=["rule", "conditions", "money", "duration"],
            propagate_positions=True,
            maybe_placeholders=True,
            edit_terminals=_read_as_word,
        )
        self.word = re.compile(self.lark.get_terminal("WORD").pattern.to_regexp())
        self.text_of = {
            terminal.name: terminal.pattern.value
            for terminal in self.lark.terminals
            if isinstance(terminal.pattern, PatternStr)
        }
        self.keyword_of = {
            terminal.pattern.value: terminal.name
            for terminal in self.lark.terminals
            if _is_keyword(terminal)
        }
        self.productions: dict[str, list[Production]] = {}
        for production in self.lark.rules:
            self.productions.setdefault(production.origin.name, []).append(production)
        # Where messages list what may come next, they list it as the grammar file does.
        code = re.sub(r"//[^\n]*", "", source)
        self.rank: dict[str, int] = {}
        for literal in re.finditer(r'"((?:[^"\\]|\\.)*)"', code):
            self.rank.setdefault(literal.group(1), len(self.rank))
        self.condition_words = set(self.first("condition"))
        self.scope_words = set(self.first("scope"))
        self.option_words = self.first("option")
        self.flow_words = set(self.first("flow_core"))
        self.sides = self.first("side")
        self.channels = self.first("channel")
        # Not symbols either: a bare word there would read as an option or an operator.
        self.reserved = {"and", "or", *self.option_words}
        # What format_rule quotes: a bare symbol must not read as any of these.
        self.symbol_keywords = self.condition_words | self.scope_words | self.reserved

    def first(self, name: str) -> list[str]:
        """The keywords that can start ``name``, in the order of its alternatives."""
        found: dict[str, None] = {}
        todo, seen = [name], set()
        while todo:
            current = todo.pop(0)
            if current in seen:
                continue
            seen.add(current)
            for production in self.productions[current]:
                symbol = production.expansion[0]
                if not symbol.is_term:
                    todo.append(symbol.name)
                elif self.text_of.get(symbol.name, "") in self.keyword_of:
                    found.setdefault(self.text_of[symbol.name])
        return list(found)


def _is_keyword(terminal: TerminalDef) -> bool:
    return isinstance(terminal.pattern, PatternStr) and terminal.pattern.value[:1].isalpha()


def _read_as_word(terminal: TerminalDef) -> None:
    """The lexer reads every word as a WORD; _parse makes it a keyword where one fits."""
    if _is_keyword(terminal):
        terminal.priority = -1


@cache
def _grammar() -> _Grammar:
    return _Grammar()


def _parse(text: str, start: str) -> tuple[Tree[Token], list[Token]]:
    """The tree of ``text`` from rule ``start``, and its tokens; RuleTextError if it has none.

    Keywords are contextual: a word is the keyword it spells (case aside) where the parser
    takes that keyword, and a plain WORD elsewhere (``name price`` names a rule "price").
    """
    grammar = _grammar()
    parser = grammar.lark.parse_interactive(text, start=start)
    try:
        # All tokens first: a stray character is reported wherever it is, before any syntax.
        tokens = list(parser.lexer_thread.lex(parser.parser_state))
    except UnexpectedCharacters as exc:
        position = cast(int, exc.pos_in_stream)
        if text[position] in "\"'":
            reason = "unterminated string: no closing quote"
        else:
            reason = f"unexpected character {text[position]!r}"
        raise RuleTextError(reason, text, position, position + 1) from None
    index = 0
    try:
        for index, token in enumerate(tokens):
            keyword = grammar.keyword_of.get(token.lower()) if token.type == "WORD" else None
            if keyword is not None and keyword in parser.choices():
                tokens[index] = token = token.update(keyword)
            parser.feed_token(token)
        index = len(tokens)
        tree = parser.feed_eof(tokens[-1] if tokens else None)
    except UnexpectedToken:
        raise _Explanation(text, start, tokens, index, parser.parser_state).error() from None
    return tree, tokens


# ---------------------------------------------------------------- syntax errors, explained

# What a number is where a rule wants one, by that rule (a template for greek: its name).
_NUMBER_SLOTS = {
    "money": "a number",
    "percent": "a percent",
    "duration": "a duration like 30m",
    "days": "a number of days",
    "dte": "a number of days",
    "rsi": "an RSI level",
    "greek": "a {} level",
    "put_call_ratio": "a ratio",
    "size": "a number of contracts",
    "version": "a version number",
}
_IDENTS = {"name": "a name (in quotes if it has spaces)", "id": "a rule id", "user": "a user id"}
_ONE_VALUE = {
    "money": "expected one amount like 500k",
    "duration": "expected one duration like 30m",
}
_MISSPELT_AFTER = (">", "<", ">=", "<=", "crosses", "cross", "above", "below")


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word.lower(), sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_condition(word: str) -> str:
    grammar = _grammar()
    hint = _suggest(word, grammar.condition_words)
    if not hint and word.lower() in grammar.option_words:
        hint = f" ('{word.lower()}' is an option: options go after the conditions)"
    return f"unknown condition '{word}'{hint}"


class _Explanation:
    """Why the parser stopped, in the words of the text.

    The parser stops at the first token it cannot take, maybe inside something optional: in
    ``rsi 14 x`` it was still hoping for ``bars`` after ``14``. Reducing what is complete, as
    a fitting token would have, walks out of such places (on copies of the parser's stacks)
    to the first construct that says what it wanted: there, a comparison after ``rsi 14``.
    """

    def __init__(self, text: str, start: str, tokens: list[Token], index: int, state: Any) -> None:
        self.grammar = _grammar()
        self.text = text
        self.start = start
        self.tokens = tokens
        self.index = index
        self.conf = state.parse_conf
        self.stack: list[int] = list(state.state_stack)
        self.values: list[Any] = list(state.value_stack)

    def error(self) -> RuleTextError:
        error = self.misread_symbol()
        while error is None:
            if self.backtrack():
                continue
            error = (
                self.after_keyword()
                or self.in_phrase()
                or self.between_phrases()
                or self.at_the_end()
            )
            if error is None and not self.reduce():
                error = self.at(f"unexpected {self.found}{self.after}")
        return self.earlier_value_error() or error

    # ------------------------------------------------------------ where the parser is

    @property
    def token(self) -> Token | None:
        """The token the parser could not take; None at the end of the text."""
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    @property
    def found(self) -> str:
        return "the end of the text" if self.token is None else repr(self.token.value)

    @property
    def after(self) -> str:
        return f" after '{self.tokens[self.index - 1].value}'" if self.index else ""

    @property
    def word(self) -> str:
        """The token in lower case if it is a word, else ''."""
        text = self.token.value if self.token is not None else ""
        return text.lower() if self.grammar.word.fullmatch(text) else ""

    @property
    def last(self) -> Any:
        return self.values[-1] if self.values else None

    @property
    def last_keyword(self) -> str | None:
        last = self.last
        return self.grammar.text_of.get(last.type) if isinstance(last, Token) else None

    @property
    def shifts(self) -> set[str]:
        """What the parser can take here: keywords and operators as written, else names."""
        text_of = self.grammar.text_of
        return {
            text_of.get(name, name)
            for name, (_, target) in self.conf.states[self.stack[-1]].items()
            if name.isupper() and not isinstance(target, Production)
        }

    @property
    def optional_here(self) -> bool:
        """Whether what is on the stack could be complete: then the shifts are optional."""
        return _likely_reduction(self.conf.states[self.stack[-1]]) is not None

    def at(self, reason: str, token: Token | None = None) -> RuleTextError:
        token = token if token is not None else self.token
        if token is None:
            return RuleTextError(reason, self.text, len(self.text), len(self.text))
        return RuleTextError(reason, self.text, *_span(token))

    # ------------------------------------------------------------ moving

    def backtrack(self) -> bool:
        """``above`` without a side after it is no flow filter: explain it where it stands."""
        shifts = self.shifts
        if self.last_keyword not in ("at", "above", "below") or not shifts:
            return False
        if not shifts <= {"ask", "bid", "mid"}:
            return False
        self.stack.pop()
        self.values.pop()
        self.index -= 1
        return True

    def reduce(self) -> bool:
        """Reduce what is complete on top of the stacks, as a fitting next token would."""
        state = self.stack[-1]
        production = _likely_reduction(self.conf.states[state])
        if production is None or state == self.conf.end_state:
            return False
        keep = len(self.values) - len(production.expansion)
        children = self.values[keep:]
        del self.stack[keep + 1 :]
        del self.values[keep:]
        self.values.append(self.conf.callbacks[production](children))
        self.stack.append(self.conf.states[self.stack[-1]][production.origin.name][1])
        return True

    # ------------------------------------------------------------ what was wanted

    def misread_symbol(self) -> RuleTextError | None:
        """A first word taken for the symbol that is rather a misspelt condition or keyword."""
        tokens = self.tokens
        if self.start != "rule" or not tokens or tokens[0].type != "WORD":
            return None
        first = tokens[0]
        misspelt = first.lower() in self.grammar.reserved
        following = tokens[1].lower() if len(tokens) > 1 else ""
        if self.index == 1:  # prise > 200, not AAPL price > 200
            misspelt = misspelt or following in _MISSPELT_AFTER
        elif self.index == 2:  # prise(threshold=200), not AAPL (price > 200)
            misspelt = misspelt or following == "("
        return self.at(_unknown_condition(first), first) if misspelt else None

    def after_keyword(self) -> RuleTextError | None:
        """Right after a keyword that wants a particular word or value next."""
        keyword, last, shifts = self.last_keyword, self.last, self.shifts
        found, after, word = self.found, self.after, self.word
        if keyword == "priority":
            levels = ", ".join(level.value.lower() for level in Priority)
            return self.at(f"expected a priority ({levels}){after}")
        if keyword == "sessions":
            return self.at(f"expected a session (any, regular, extended){after}, found {found}")
        if keyword in ("regular", "extended") and "hours" in shifts:
            return self.at(f"expected 'hours'{after} ({keyword} hours), found {found}")
        if keyword == "expires":
            return self.at(f"expected a date or an RFC 3339 time like 2026-12-31T00:00:00Z{after}")
        if keyword in _IDENTS and "WORD" in shifts:
            return self.at(f"expected {_IDENTS[keyword]}{after}, found {found}")
        if keyword == "dte" and ">=" in shifts:
            return self.at(f"expected '>=' or '<=' after 'dte', found {found}")
        if keyword == "size" and ">=" in shifts:
            return self.at(f"expected '>=' after 'size', found {found}")
        if keyword == "any" and "symbol" in shifts:  # any is no symbol: read as a condition
            return self.at(_unknown_condition(last), last)
        if shifts == {"("} and _is(last, "condition_type"):  # price_above > 5
            return self.at(_unknown_condition(_keyword_in(last)), _keyword_in(last))
        if shifts == {"WORD", "STRING"}:
            return self.at(f"expected a symbol{after}, found {found}")
        channels, sides = self.grammar.channels, self.grammar.sides
        if channels[0] in shifts:
            hint = _suggest(word, channels)
            return self.at(f"unknown channel {found}{hint} (channels: {', '.join(channels)})")
        if sides[-1] in shifts:
            hint = _suggest(word, sides)
            return self.at(f"unknown side {found}{hint} (sides: {', '.join(sides)})")
        return None

    def in_phrase(self) -> RuleTextError | None:
        """Inside a condition, where a comparison, a number or a value is due."""
        shifts, found, after = self.shifts, self.found, self.after
        if "sweep" in shifts and "price" not in shifts:  # after call, put, otm, ...
            hint = _suggest(self.word, self.grammar.flow_words)
            return self.at(
                "expected sweep, block, premium, unusual volume, repeated hits or put/call"
                f"{after}, found {found}{hint}"
            )
        if (">" in shifts or "<" in shifts) and ">=" not in shifts:
            text = self.token.value if self.token is not None else ""
            if text in (">=", "<="):
                return self.at(f"'{text}' is not supported here: conditions compare strictly")
            words = [label for sign, label in _DIRECTIONS if sign in shifts]
            return self.at(f"expected {' or '.join(words)}{after}, found {found}")
        if {"WORD", "NUMBER", "STRING"} <= shifts:
            return self.at(f"expected a value{after}, found {found}")
        # a number that must come; not the optional 14 of sma 14 or the 3 of unusual volume 3
        if "NUMBER" in shifts and "(" not in shifts and not self.optional_here:
            if self.comparing_close():
                return self.at(
                    "'close' compares with a Bollinger band here: 'close above upper bollinger'"
                )
            return self.at(f"expected {self.number_slot()}{after}")
        return None

    def comparing_close(self) -> bool:
        """``close > 5``: unlike price, close only compares with a Bollinger band."""
        subject = self.values[-2] if len(self.values) > 1 else None
        return (
            _is(self.last, "comparison")
            and _is(subject, "subject")
            and _keyword_in(subject).lower() == "close"
        )

    def number_slot(self) -> str:
        """What a number here would be: the first rule in _NUMBER_SLOTS it would complete."""
        states = self.conf.states
        stack = [*self.stack, states[self.stack[-1]]["NUMBER"][1]]
        while (production := _likely_reduction(states[stack[-1]])) is not None:
            name = production.alias or production.origin.name
            if name == "greek":
                greek = next(value for value in reversed(self.values) if _is(value, "greek_name"))
                return _NUMBER_SLOTS[name].format(_keyword_in(greek).lower())
            if name in _NUMBER_SLOTS:
                return _NUMBER_SLOTS[name]
            del stack[-len(production.expansion) :]
            stack.append(states[stack[-1]][production.origin.name][1])
        return "a number"

    def between_phrases(self) -> RuleTextError | None:
        """Where a condition starts or ends: and, or, parentheses, options."""
        shifts, found, after = self.shifts, self.found, self.after
        text = self.token.value if self.token is not None else ""
        if "price" in shifts:  # where a condition may start
            if text == ")":
                return self.at("unbalanced parenthesis: ')' without a matching '('")
            if self.token is None:
                return self.at(f"expected a condition{after}")
            if self.word:
                return self.at(_unknown_condition(text))
            return self.at(f"expected a condition{after}, found {found}")
        if ")" in shifts and not shifts & {",", "WORD"}:  # (a or b
            if self.token is None:
                return self.at("unbalanced parenthesis: this '(' is never closed", self.opening())
            return self.at(f"expected 'and', 'or' or ')', found {found}")
        if {",", ")"} <= shifts:  # rsi(14, 5m
            if self.token is None:
                return self.at("unbalanced parenthesis: this '(' is never closed", self.opening())
            return self.at(f"expected ','{after}, found {found}")
        if {",", "]"} <= shifts:  # sides=[ask, bid
            return self.at(f"expected ']'{after}, found {found}")
        options = self.grammar.option_words
        if options[0] in shifts:
            if text == ")":
                return self.at("unbalanced parenthesis: ')' without a matching '('")
            hint = _suggest(self.word, options) if self.word else ""
            listed = ", ".join(_OPTION_PHRASES.get(option, option) for option in options)
            return self.at(f"expected 'and', 'or' or an option ({listed}), found {found}{hint}")
        wanted = sorted(shifts & self.grammar.keyword_of.keys(), key=self.grammar.rank.__getitem__)
        if wanted and not self.optional_here:  # after sma: crosses, cross or crossed
            listed = " or ".join(f"'{keyword}'" for keyword in wanted)
            return self.at(f"expected {listed}{after}, found {found}")
        return None

    def at_the_end(self) -> RuleTextError | None:
        """The text goes on after what can be all of it."""
        production = _likely_reduction(self.conf.states[self.stack[-1]])
        if production is None or production.origin.name != self.start:
            return None
        if self.start in _ONE_VALUE:
            reason = _ONE_VALUE[self.start]
        elif self.token is not None and self.token.value == ")":
            reason = "unbalanced parenthesis: ')' without a matching '('"
        else:
            reason = f"expected 'and' or 'or', found {self.found}"
        self.reduce()  # all of it on the stack, for earlier_value_error
        return self.at(reason)

    def opening(self) -> Token:
        """The parenthesis that the end of the text leaves open."""
        return next(v for v in reversed(self.values) if isinstance(v, Token) and v.value == "(")

    def earlier_value_error(self) -> RuleTextError | None:
        """A wrong value before the token the parser stopped at comes first, as the text reads."""
        stop = (
            _span(self.tokens[self.index])[0] if self.index < len(self.tokens) else len(self.text)
        )
        build = _Build(self.text, self.tokens)
        options: list[_Option] = []
        for part in _complete_parts(self.values):
            try:
                result = _transform(build, part)
                if isinstance(result, _Option):
                    options.append(result)
                    build.collect_options(options)
            except RuleTextError as exc:
                return exc if exc.start < stop else None
        return None


_DIRECTIONS = ((">", "'>' (above)"), ("<", "'<' (below)"))
# Options whose first word is half of the phrase: listed as the whole phrase.
_OPTION_PHRASES = {"regular": "regular hours", "extended": "extended hours"}


def _likely_reduction(row: dict[str, tuple[Any, Any]]) -> Production | None:
    """The reduction most next tokens would make here (LALR may offer several)."""
    counts: dict[Production, int] = {}
    for _, target in row.values():
        if isinstance(target, Production):
            counts[target] = counts.get(target, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def _complete_parts(values: list[Any]) -> list[Tree[Token]]:
    """The trees on a value stack, with lark's helper trees (``__rule_star_0``) opened."""
    parts: list[Tree[Token]] = []
    for value in values:
        if isinstance(value, Tree) and value.data.startswith("_"):
            parts += _complete_parts(value.children)
        elif isinstance(value, Tree):
            parts.append(value)
    return parts


def _span(token: Token) -> tuple[int, int]:
    """Where a token is in the text (lark types the positions as optional; ours have them)."""
    return cast(int, token.start_pos), cast(int, token.end_pos)


def _keyword_in(tree: Tree[Token]) -> Token:
    """The keyword of a rule that keeps its keywords (``!`` in the grammar): its first child."""
    return cast(Token, tree.children[0])


def _is(value: Any, rule: str) -> TypeGuard[Tree[Token]]:
    return isinstance(value, Tree) and value.data == rule


# ---------------------------------------------------------------- from the tree to the Rule

_MONEY_UNITS = {"": Decimal(1), "k": Decimal(1000), "m": Decimal(10**6), "b": Decimal(10**9)}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT_WORDS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), "s"),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), "m"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "h"),
    **dict.fromkeys(("d", "day", "days"), "d"),
}
_DIRECTION = {">": "above", "above": "above", "over": "above", "<": "below", "below": "below"}
_DIRECTION |= {"under": "below"}
_GREEKS = ("iv", "delta", "gamma", "theta", "vega")
_RIGHTS = {"call": "C", "calls": "C", "put": "P", "puts": "P"}
_NUMERAL = re.compile(r"([+-]?)(\$?)(\d+(?:\.\d*)?|\.\d+)([A-Za-z%]*)")
_ESCAPE = re.compile(r"\\(.)", re.S)


def _decimal_value(value: Decimal) -> int | float:
    """An integral Decimal as int, anything else as float."""
    return int(value) if value == value.to_integral_value() else float(value)


class _Numeral(NamedTuple):
    """The parts of a number token."""

    number: str  # the digits with their sign, as written
    unit: str  # as written: %, x, k, m, s, ...
    dollar: bool

    @property
    def value(self) -> Decimal:
        return Decimal(self.number)


def _numeral(token: Token) -> _Numeral:
    sign, dollar, digits, unit = cast(re.Match[str], _NUMERAL.fullmatch(token)).groups()
    return _Numeral(sign + digits, unit, bool(dollar))


def _unquoted(token: Token) -> str:
    """A word as written; a quoted string without its quotes and backslashes."""
    if token.type == "STRING":
        return _ESCAPE.sub(r"\1", token.value[1:-1])
    return str(token.value)


@dataclass(frozen=True, slots=True)
class _Scope:
    fields: dict[str, Any]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Option:
    field: str
    value: Any
    keyword: Token
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Arg:
    name: Token | None
    value: Token | list[Token]
    start: Token  # the first token: the name, the value, or the [ of a list


@dataclass(frozen=True, slots=True)
class _Bare:
    """Indicator arguments without parentheses: ``14 bars 5m``."""

    numbers: list[Token]


@dataclass(frozen=True, slots=True)
class _Filter:
    name: str
    value: Any
    token: Token


@dataclass(frozen=True, slots=True)
class _Lookback:
    keyword: Token
    days: int


class _Build(Transformer[Token, Any]):
    """The tree as the dicts of the Rule model, checking what the grammar leaves open.

    Each method gets its rule's children (anonymous keywords dropped, except in the rules the
    grammar marks ``!``) and raises RuleTextError at the token at fault.
    """

    def __init__(self, text: str, tokens: list[Token]) -> None:
        super().__init__(visit_tokens=False)
        self.text = text
        self.tokens = tokens

    def fail(self, reason: str, token: Token) -> NoReturn:
        raise RuleTextError(reason, self.text, *_span(token))

    def token_at(self, start: int) -> Token:
        return next(token for token in self.tokens if token.start_pos == start)

    def token_ending(self, end: int) -> Token:
        return next(token for token in self.tokens if token.end_pos == end)

    # ------------------------------------------------------------ numbers by context

    def plain(self, token: Token, what: str) -> int | float:
        number = _numeral(token)
        if number.dollar:
            self.fail("'$' only goes before money amounts", token)
        if number.unit:
            self.fail(f"{token.value!r} is not {what} (no unit expected here)", token)
        return _decimal_value(number.value)

    def integer(self, token: Token, what: str) -> int:
        value = self.plain(token, what)
        if not isinstance(value, int):
            self.fail(f"expected {what}, found {token.value!r}", token)
        return value

    def amount(self, token: Token, what: str) -> int | float:
        number = _numeral(token)
        unit = number.unit.lower()
        if unit not in _MONEY_UNITS:
            self.fail(f"{token.value!r} is not {what}", token)
        return _decimal_value(number.value * _MONEY_UNITS[unit])

    def to_money(self, token: Token) -> int | float:
        return self.amount(token, "an amount (use k, m or b: 500k, 1m)")

    def to_percent(self, token: Token, *, required: bool = False) -> int | float:
        number = _numeral(token)
        if number.dollar:
            self.fail("'$' only goes before money amounts", token)
        if number.unit != "%" and (required or number.unit):
            self.fail(f"expected a percent like 5%, found {token.value!r}", token)
        return _decimal_value(number.value)

    def to_multiple(self, token: Token) -> int | float:
        number = _numeral(token)
        if number.unit.lower() not in ("", "x") or number.dollar:
            self.fail(f"expected a multiple like 3x, found {token.value!r}", token)
        return _decimal_value(number.value)

    def seconds(self, token: Token, unit: str) -> int:
        number = _numeral(token)
        unit = _UNIT_WORDS.get(unit, unit)
        if not unit:
            if number.value == 0:
                return 0
            self.fail(f"add a unit to {token.value!r}: s, m (minutes), h or d", token)
        if unit not in _DURATION_UNITS or number.dollar:
            self.fail(f"{token.value!r} is not a duration (use s, m, h or d: 30m)", token)
        seconds = number.value * _DURATION_UNITS[unit]
        if seconds < 0 or seconds != seconds.to_integral_value():
            self.fail(f"{token.value!r} is not a whole number of seconds", token)
        return int(seconds)

    def timeframe(self, token: Token) -> str:
        number = _numeral(token)
        unit = number.unit.lower()
        if unit not in _DURATION_UNITS or number.dollar or not number.number.isdigit():
            self.fail(f"{token.value!r} is not a timeframe (use e.g. 1m, 5m, 1h, 1d)", token)
        timeframe = f"{int(number.number)}{unit}"
        try:
            timeframe_seconds(timeframe)
        except ValueError as exc:
            self.fail(str(exc), token)
        return timeframe

    def plain_of(self, token: Token) -> int | float:
        number = _numeral(token)
        if number.unit or number.dollar:
            self.fail(f"{token.value!r} is not a plain number", token)
        return _decimal_value(number.value)

    def duration(self, children: list[Any]) -> int:
        number, *unit_word = children
        unit = unit_word[0].lower() if unit_word else _numeral(number).unit.lower()
        return self.seconds(number, unit)

    def days(self, children: list[Token]) -> int:
        (token,) = children
        number = _numeral(token)
        if number.unit.lower() not in ("", "d") or number.dollar or not number.number.isdigit():
            self.fail(f"expected a number of days, found {token.value!r}", token)
        return int(number.number)

    def unit_word(self, children: list[Token]) -> Token:
        return children[0]

    money = unit_word  # read by the condition: a pnl threshold may be a percent

    # Where the unit alone is wrong, say so here, before a later syntax error is reported.
    def percent(self, children: list[Token]) -> Token:
        (token,) = children
        if _numeral(token).unit:  # without a unit, the condition says more (spread > 5)
            self.to_percent(token)
        return token

    def multiple(self, children: list[Token]) -> int | float:
        return self.to_multiple(children[0])

    def comparison(self, children: list[Token]) -> str:
        return _DIRECTION[children[0].lower()]

    above = comparison

    def direction(self, children: list[Token]) -> str:
        return children[0].lower()

    subject = greek_name = condition_type = moneyness = flow_prefix = unit_word

    # ------------------------------------------------------------ the rule

    def rule(self, children: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Rule's fields, and where in the text each came from (for its errors)."""
        body: dict[str, Any] = {}
        spans: dict[str, tuple[int, int]] = {}
        scope = next((child for child in children if isinstance(child, _Scope)), None)
        if scope is not None:
            body.update(scope.fields)
            spans["symbol"] = spans["symbols"] = (scope.start, scope.end)
        options = [child for child in children if isinstance(child, _Option)]
        body["conditions"] = next(child for child in children if isinstance(child, dict))
        # Between scope and options, with the parentheses the tree leaves out of (a or b).
        begin = scope.end if scope is not None else 0
        until = options[0].start if options else len(self.text)
        inside = [_span(token) for token in self.tokens if begin <= _span(token)[0] < until]
        spans["conditions"] = (inside[0][0], inside[-1][1])
        fields, option_spans = self.collect_options(options)
        return {**body, **fields}, {**spans, **option_spans}

    def collect_options(self, options: list[_Option]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The options' fields and spans; each option once."""
        fields: dict[str, Any] = {}
        spans: dict[str, tuple[int, int]] = {}
        for option in options:
            if option.field in fields:
                self.fail(f"option '{option.keyword}' given twice", option.keyword)
            fields[option.field] = option.value
            spans[option.field] = (option.start, option.end)
        return fields, spans

    def conditions(self, children: list[dict[str, Any]]) -> dict[str, Any]:
        return children[0]

    @v_args(meta=True)
    def every_symbol(self, meta: Meta, children: list[Token]) -> _Scope:
        return _Scope({}, meta.start_pos, meta.end_pos)

    @v_args(meta=True)
    def watchlist(self, meta: Meta, children: list[Token]) -> _Scope:
        return _Scope({"symbols": [_unquoted(c) for c in children]}, meta.start_pos, meta.end_pos)

    @v_args(meta=True)
    def one_symbol(self, meta: Meta, children: list[Token]) -> _Scope:
        return _Scope({"symbol": _unquoted(children[0])}, meta.start_pos, meta.end_pos)

    @v_args(meta=True)
    def bare_symbol(self, meta: Meta, children: list[Token]) -> _Scope:
        (word,) = children
        if word.lower() in _grammar().reserved:
            self.fail(_unknown_condition(word), word)
        return _Scope({"symbol": str(word)}, meta.start_pos, meta.end_pos)

    def expr(self, children: list[dict[str, Any]]) -> dict[str, Any]:
        return _group("any", children)

    def and_expr(self, children: list[dict[str, Any]]) -> dict[str, Any]:
        return _group("all", children)

    @v_args(meta=True)
    def condition(self, meta: Meta, children: list[Any]) -> dict[str, Any]:
        kind, params = children[0]
        try:
            leaf = CONDITION_MODELS[kind].model_validate({"type": kind, **params})
        except ValidationError as exc:
            reason = f"{kind}: {_describe(exc)}"
            raise RuleTextError(reason, self.text, meta.start_pos, meta.end_pos) from None
        return leaf.model_dump(exclude_defaults=False)

    # ------------------------------------------------------------ canonical form

    def canonical(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        token, args = children
        kind = token.lower()
        fields = [name for name in CONDITION_MODELS[kind].model_fields if name != "type"]
        params: dict[str, Any] = {}
        for arg in args:
            if arg.name is None:
                self.fail(
                    f"write {kind} arguments as name=value (parameters: {', '.join(fields)})",
                    arg.start,
                )
            name = str(arg.name)
            if name not in fields:
                self.fail(
                    f"unknown parameter '{name}' for {kind}{_suggest(name, fields)} "
                    f"(parameters: {', '.join(fields)})",
                    arg.name,
                )
            if name in params:
                self.fail(f"parameter '{name}' given twice", arg.name)
            params[name] = self.canonical_value(name, arg.value)
        return kind, params

    def args(self, children: list[_Arg | None]) -> list[_Arg]:
        return [child for child in children if child is not None]

    @v_args(meta=True)
    def arg(self, meta: Meta, children: list[Any]) -> _Arg:
        name, value = children
        return _Arg(name, value, self.token_at(meta.start_pos))

    def value_list(self, children: list[Token | None]) -> list[Token]:
        return [child for child in children if child is not None]

    def canonical_value(self, name: str, value: Token | list[Token]) -> Any:
        if isinstance(value, list):
            return [self.canonical_value(name, item) for item in value]
        if value.type == "STRING":
            return _unquoted(value)
        if value.type == "WORD":
            return None if value.lower() in ("none", "null") else str(value)
        if name == "timeframe":
            return self.timeframe(value)
        unit = _numeral(value).unit.lower()
        if name.endswith("_seconds"):
            return self.plain_of(value) if not unit else self.seconds(value, unit)
        if unit in ("%", "x"):
            return _decimal_value(_numeral(value).value)
        return self.amount(value, "a number (k, m or b scale it: 500k)")

    # ------------------------------------------------------------ indicator arguments

    def bare_args(self, children: list[Token]) -> _Bare:
        return _Bare(children)

    bare_arg = unit_word

    def indicator(self, names: tuple[str, ...], given: Any) -> dict[str, Any]:
        """Indicator parameters from ``(14, 5m)``, ``(period=14)`` or bare ``14 bars 5m``.

        A number with a time unit is the timeframe, one with ``x`` the multiple; plain numbers
        fill the other parameters in order.
        """
        params: dict[str, Any] = {}
        positional = [name for name in names if name not in ("timeframe", "multiple")]

        def assign(name: str, token: Token, value: Any) -> None:
            if name in params:
                self.fail(f"{name} given twice", token)
            params[name] = value

        def place(token: Token) -> None:
            unit = _numeral(token).unit.lower()
            if unit in _DURATION_UNITS and "timeframe" in names:
                assign("timeframe", token, self.timeframe(token))
            elif unit == "x" and "multiple" in names:
                assign("multiple", token, _decimal_value(_numeral(token).value))
            elif unit and "timeframe" in names and unit not in ("x", "%"):
                self.timeframe(token)  # not a time unit: says what a timeframe looks like
            else:
                free = [name for name in positional if name not in params]
                if not free:
                    self.fail(f"too many numbers: parameters are {', '.join(names)}", token)
                assign(free[0], token, self.plain_of(token))

        if isinstance(given, _Bare):
            for token in given.numbers:
                place(token)
        for arg in given if isinstance(given, list) else []:
            if isinstance(arg.value, list):
                self.fail("expected a number, not a list", arg.start)
            if arg.name is None:
                if arg.value.type not in ("NUMBER", "QUANTITY"):
                    self.fail(f"expected a number, found {arg.value.value!r}", arg.value)
                place(arg.value)
                continue
            name = arg.name.lower()
            if name not in names:
                self.fail(
                    f"unknown parameter '{arg.name}' (parameters: {', '.join(names)})", arg.name
                )
            assign(name, arg.name, self.canonical_value(name, arg.value))
        return params

    # ------------------------------------------------------------ price and indicators

    def price_crosses(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        _, direction, money = children
        return f"price_crosses_{direction}", {"threshold": self.to_money(money)}

    def price_crosses_sma(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        _, direction, *args = children
        params = self.indicator(("period", "timeframe"), args[0] if args else None)
        return f"price_crosses_{direction}_sma", params

    def price_compare(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        subject, direction, money = children
        if subject.lower() == "close":
            self.fail(
                "'close' compares with a Bollinger band here: 'close above upper bollinger'",
                money,
            )
        return f"price_{direction}", {"threshold": self.to_money(money)}

    def percent_move(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        *_, way, percent, seconds = children
        return f"percent_move_{way.lower()}", {
            "percent": self.to_percent(percent),
            "window_seconds": seconds,
        }

    def rsi(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        *args, direction, level = children
        params = self.indicator(("period", "timeframe"), args[0] if args else None)
        return f"rsi_{direction}", {"threshold": self.plain(level, "an RSI level"), **params}

    @v_args(meta=True)
    def sma_cross(self, meta: Meta, children: list[Any]) -> tuple[str, dict[str, Any]]:
        split = next(i for i, child in enumerate(children) if isinstance(child, str))
        fast = self.indicator(("period", "timeframe"), children[0] if split else None)
        after = children[split + 1 :]
        slow = self.indicator(("period", "timeframe"), after[0] if after else None)
        params: dict[str, Any] = {}
        if "period" in fast:
            params["fast"] = fast["period"]
        if "period" in slow:
            params["slow"] = slow["period"]
        timeframes = {fast.get("timeframe"), slow.get("timeframe")} - {None}
        if len(timeframes) > 1:
            self.fail("the two SMAs must share one timeframe", self.token_ending(meta.end_pos))
        if timeframes:
            params["timeframe"] = timeframes.pop()
        kind = "sma_cross_up" if children[split] == "above" else "sma_cross_down"
        return kind, params

    def golden_cross(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        which, _, *args = children
        kind = "sma_cross_up" if which.lower() == "golden" else "sma_cross_down"
        return kind, self.indicator(("fast", "slow", "timeframe"), args[0] if args else None)

    def bollinger(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        _, direction, band, _, *args = children
        if (band.lower() == "upper") != (direction == "above"):
            self.fail("say 'above upper' or 'below lower' band", band)
        params = self.indicator(("period", "stddev", "timeframe"), args[0] if args else None)
        return f"bollinger_break_{band.lower()}", params

    def new_extreme(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        _, which, *args = children
        params = self.indicator(("period", "timeframe"), args[0] if args else None)
        return f"new_{which.lower()}", params

    def volume_spike(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        names = ("multiple", "period", "timeframe")
        return "volume_spike", self.indicator(names, children[0] if children else None)

    # ------------------------------------------------------------ options data

    def greek(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        name, direction, level = children
        name = name.lower()
        if name == "iv" and _numeral(level).unit == "%":
            self.fail("write IV in the unit of the feed's iv field, without '%' (iv > 60)", level)
        return f"{name}_{direction}", {"threshold": self.plain(level, f"a {name} level")}

    def iv_rank(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        args = children[0] if isinstance(children[0], list) else None
        _, threshold, *lookback = children[1:] if args is not None else children
        params: dict[str, Any] = {}
        for arg in args or []:
            if (
                isinstance(arg.value, list)
                or arg.value.type not in ("NUMBER", "QUANTITY")
                or (arg.name is not None and arg.name.lower() != "lookback_days")
            ):
                self.fail("iv_rank takes one argument, the lookback in days", arg.start)
            params["lookback_days"] = self.plain_of(arg.value)
        params["threshold"] = self.to_percent(threshold)
        if lookback:
            if "lookback_days" in params:
                self.fail("lookback given twice", lookback[0].keyword)
            params["lookback_days"] = lookback[0].days
        return "iv_rank_above", params

    def lookback(self, children: list[Any]) -> _Lookback:
        return _Lookback(*children)

    def iv_change(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        percent, seconds = children
        return "iv_change_pct", {"percent": self.to_percent(percent), "window_seconds": seconds}

    def spread(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        _, percent = children
        if not _numeral(percent).unit:
            self.fail(f"the spread is a percent of the mid: write {percent}%", percent)
        return "spread_pct_above", {"threshold": self.to_percent(percent, required=True)}

    # ------------------------------------------------------------ options flow

    def flow(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        filters: dict[str, Any] = {}
        sides: list[str] = []

        def put(name: str, value: Any, token: Token) -> None:
            if name in filters and filters[name] != value:
                self.fail(f"{name.replace('_', ' ')} given twice", token)
            filters[name] = value

        kind, params = next(child for child in children if isinstance(child, tuple))
        for child in children:
            if isinstance(child, tuple):
                continue
            if isinstance(child, Token) and child.lower() in _RIGHTS:
                put("right", _RIGHTS[child.lower()], child)
            elif isinstance(child, Token):
                put("moneyness", child.lower(), child)
            elif isinstance(child, _Filter):
                put(child.name, child.value, child.token)
            else:
                sides.extend(child)
        if sides:
            order = _grammar().sides
            filters["sides"] = sorted(set(sides), key=order.index)
        return kind, {**params, **filters}

    def sweep(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        kind = "flow_sweep" if children[0].lower().startswith("sweep") else "flow_block"
        return kind, {"min_premium": self.to_money(children[1])} if len(children) > 1 else {}

    def min_premium(self, children: list[Any]) -> Token:
        return children[-1]  # the amount, after premium > or min premium

    def premium(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        _, money = children
        return "flow_premium_above", {"threshold": self.to_money(money)}

    def unusual_volume(self, children: list[Token]) -> tuple[str, dict[str, Any]]:
        return "unusual_volume", {"ratio": children[0]} if children else {}

    def repeated_hits(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {}
        for child in children:
            if isinstance(child, Token):
                params["count"] = self.integer(child, "a number of prints")
            else:
                params["window_seconds"] = child
        return "flow_repeated_hits", params

    def put_call_ratio(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        direction, ratio, *window = children
        params = {"threshold": self.plain(ratio, "a ratio"), "comparison": direction}
        if window:
            params["window_seconds"] = window[0]
        return "put_call_premium_ratio", params

    def sides(self, children: list[Any]) -> list[str]:
        return [child for child in children[1:] if not isinstance(child, Token)]

    side = direction

    def side_at(self, children: list[Token]) -> list[str]:
        where, side = (child.lower() for child in children)
        name = side if where == "at" else f"{where}_{side}"
        sides = _grammar().sides
        if name not in sides:
            self.fail(f"no side '{where} {side}' (sides: {', '.join(sides)})", children[0])
        return [name]

    def dte(self, children: list[Token]) -> _Filter:
        keyword, sign, number = children
        days = self.integer(number, "a number of days")
        if sign.startswith(">"):
            return _Filter("min_days_to_expiry", days + (sign == ">"), keyword)
        return _Filter("max_days_to_expiry", days - (sign == "<"), keyword)

    def this_week(self, children: list[Token]) -> _Filter:
        return _Filter("expires_this_week", True, children[0])

    def size(self, children: list[Token]) -> _Filter:
        keyword, sign, number = children
        contracts = self.integer(number, "a number of contracts") + (sign == ">")
        return _Filter("min_size", contracts, keyword)

    def atm_band(self, children: list[Token]) -> _Filter:
        return _Filter("atm_band_pct", self.to_percent(children[2]), children[0])

    # ------------------------------------------------------------ positions

    def pnl(self, children: list[Any]) -> tuple[str, dict[str, Any]]:
        direction, amount = children
        number = _numeral(amount)
        if number.unit == "%" and not number.dollar:
            return f"position_pnl_pct_{direction}", {"threshold": _decimal_value(number.value)}
        return f"position_pnl_{direction}", {"threshold": self.to_money(amount)}

    def expiry(self, children: list[int]) -> tuple[str, dict[str, Any]]:
        return "expiry_within_days", {"days": children[0] if children else 0}

    # ------------------------------------------------------------ options

    def option_at(self, meta: Meta, field: str, value: Any, keyword: Token) -> _Option:
        return _Option(field, value, keyword, meta.start_pos, meta.end_pos)

    @v_args(meta=True)
    def cooldown(self, meta: Meta, children: list[Any]) -> _Option:
        keyword, seconds = children
        return self.option_at(meta, "cooldown_seconds", seconds, keyword)

    @v_args(meta=True)
    def priority(self, meta: Meta, children: list[Token]) -> _Option:
        keyword, level = children
        return self.option_at(meta, "priority", level.upper(), keyword)

    @v_args(meta=True)
    def mode(self, meta: Meta, children: list[Token]) -> _Option:
        return self.option_at(meta, "mode", children[0].lower(), children[0])

    @v_args(meta=True)
    def activity(self, meta: Meta, children: list[Token]) -> _Option:
        return self.option_at(meta, "active", children[0].lower() == "active", children[0])

    @v_args(meta=True)
    def sessions(self, meta: Meta, children: list[Token]) -> _Option:
        first, second = children
        value = second if first.lower() == "sessions" else first
        return self.option_at(meta, "sessions", value.lower(), first)

    @v_args(meta=True)
    def expires(self, meta: Meta, children: list[Token]) -> _Option:
        keyword, token = children
        return self.option_at(meta, "expires_at", self.timestamp(token), keyword)

    @v_args(meta=True)
    def ident(self, meta: Meta, children: list[Token]) -> _Option:
        keyword, value = children
        field = {"name": "name", "id": "id", "user": "user_id"}[keyword.lower()]
        return self.option_at(meta, field, _unquoted(value), keyword)

    @v_args(meta=True)
    def channels(self, meta: Meta, children: list[Any]) -> _Option:
        names = [child for child in children[1:] if not isinstance(child, Token)]
        return self.option_at(meta, "channels", names, children[0])

    channel = direction

    @v_args(meta=True)
    def version(self, meta: Meta, children: list[Token]) -> _Option:
        keyword, number = children
        return self.option_at(meta, "version", self.integer(number, "a version number"), keyword)

    def timestamp(self, token: Token) -> datetime:
        text = str(token)
        if len(text) == 10:
            text += "T00:00:00Z"
        text = text[:-1] + "+00:00" if text[-1] in "Zz" else text
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{token.value!r} is not a valid time", token)
        if value.tzinfo is None:
            self.fail("add 'Z' (UTC) or an offset like +02:00 to the time", token)
        return value.astimezone(UTC)


def _transform(build: _Build, tree: Tree[Token]) -> Any:
    try:
        return build.transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, RuleTextError):
            raise exc.orig_exc from None
        raise


def _describe(exc: ValidationError) -> str:
    """A validation error in the words of the rule text: field and reason, no pydantic noise."""
    return describe_validation_error(exc).replace("message: ", "").replace("Value error, ", "")


def _group(operator: str, children: list[dict[str, Any]]) -> dict[str, Any]:
    """One child stays itself; a child with the same operator is merged into the group."""
    if len(children) == 1:
        return children[0]
    flat: list[dict[str, Any]] = []
    for child in children:
        flat.extend(child[operator] if operator in child and "type" not in child else [child])
    return {operator: flat}


# ---------------------------------------------------------------- the API


def parse_conditions(text: str) -> ConditionNode:
    """A condition tree from text without scope or options (``rsi < 30 and iv > 50``)."""
    tree, tokens = _parse(text, "conditions")
    conditions = _transform(_Build(text, tokens), tree)
    return Rule.model_validate(
        {"id": "x", "user_id": "x", "name": "x", "conditions": conditions}
    ).conditions


def parse_rule(text: str, *, user_id: str | None = None, rule_id: str | None = None) -> Rule:
    """The Rule that ``text`` describes; RuleTextError (a ValueError) points at what is wrong.

    ``user_id`` / ``rule_id`` supply the user and id when the text has no ``user`` / ``id``
    option (when both are given they must agree). Without an id, the id is ``r-`` and the
    first 12 hex digits of the SHA-256 of the user id and the whitespace-normalized text, so
    the same text of the same user always names the same rule. Without a name, the name is
    the conditions in words (``condition_name``): no symbol, since the alert title adds it,
    and no options.
    """
    tree, tokens = _parse(text, "rule")
    body, spans = _transform(_Build(text, tokens), tree)
    normalized = " ".join(token.value for token in tokens)
    for field, given in (("user_id", user_id), ("id", rule_id)):
        if given is None:
            continue
        if field in body and body[field] != given:
            option = "user" if field == "user_id" else field
            raise RuleTextError(
                f"the text says {option} {body[field]!r} but {given!r} was given",
                text,
                *spans[field],
            )
        body[field] = given
    if "user_id" not in body:
        raise RuleTextError(
            "no user: add 'user <id>' to the text (or pass a user id)", text, len(text), len(text)
        )
    if "id" not in body:
        digest = hashlib.sha256(f"{body['user_id']}\n{normalized}".encode()).hexdigest()
        body["id"] = f"r-{digest[:12]}"
    named = "name" in body
    body.setdefault("name", "-")  # for now: the name in words needs the validated conditions
    try:
        rule = Rule.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        raise RuleTextError(_describe(exc), text, *spans.get(field, (0, len(text)))) from None
    return rule if named else rule.model_copy(update={"name": condition_name(rule.conditions)})


# ---------------------------------------------------------------- rendering


def format_number(value: float | int) -> str:
    """A number as the shortest text that parses back to the same value, never in e-notation."""
    if isinstance(value, bool):
        raise TypeError("not a number")
    if float(value).is_integer() and abs(value) < 1e16:
        return str(int(value))
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_money(value: float | int) -> str:
    """An amount with the largest scale that keeps it short and exact: 500k, 1.5m, 1250."""
    exact = Decimal(repr(float(value)))
    for unit, scale in (("b", 10**9), ("m", 10**6), ("k", 1000)):
        scaled = exact / scale
        if abs(scaled) >= 1 and scaled == round(scaled, 2):
            return format_number(_decimal_value(scaled.normalize())) + unit
    return format_number(value)


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _word_or_string(value: str) -> str:
    grammar = _grammar()
    if grammar.word.fullmatch(value) and value.lower() not in grammar.symbol_keywords:
        return value
    return json.dumps(value)


def _canonical(leaf: BaseModel) -> str:
    data = leaf.model_dump(exclude_defaults=True)
    kind = getattr(leaf, "type", "")
    args = []
    for name, value in data.items():
        if name == "type":
            continue
        args.append(f"{name}={_canonical_value(name, value)}")
    return f"{kind}({', '.join(args)})"


def _canonical_value(name: str, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_canonical_value(name, item) for item in value) + "]"
    if isinstance(value, str):
        return value if name == "timeframe" else _word_or_string(value)
    if name.endswith("_seconds"):
        return format_duration(int(value))
    return format_number(value)


def _flow_text(leaf: Any, core: str) -> str:
    words = []
    if leaf.moneyness is not None:
        words.append(leaf.moneyness)
    if leaf.right is not None:
        words.append({"C": "call", "P": "put"}[leaf.right])
    words.append(core)
    if leaf.sides:
        words.append("side " + ",".join(leaf.sides))
    if leaf.min_days_to_expiry is not None:
        words.append(f"dte >= {leaf.min_days_to_expiry}")
    if leaf.max_days_to_expiry is not None:
        words.append(f"dte <= {leaf.max_days_to_expiry}")
    if leaf.expires_this_week:
        words.append("expiring this week")
    if leaf.min_size is not None:
        words.append(f"size >= {leaf.min_size}")
    if leaf.atm_band_pct != 1.0:
        words.append(f"atm band {format_number(leaf.atm_band_pct)}%")
    return " ".join(words)


def _natural(leaf: Any) -> str | None:
    kind: str = leaf.type
    above = ">" if kind.endswith(("_above", "_up")) else "<"
    word = "above" if kind.endswith(("_above", "_up", "_upper", "_above_sma")) else "below"
    if kind in ("price_above", "price_below"):
        return f"price {above} {format_money(leaf.threshold)}"
    if kind in ("price_crosses_above", "price_crosses_below"):
        return f"price crosses {word} {format_money(leaf.threshold)}"
    if kind.startswith("percent_move_"):
        direction = kind.rsplit("_", 1)[1]
        return (
            f"{direction} {format_number(leaf.percent)}% in {format_duration(leaf.window_seconds)}"
        )
    if kind in ("rsi_above", "rsi_below"):
        return f"rsi({leaf.period}, {leaf.timeframe}) {above} {format_number(leaf.threshold)}"
    if kind.startswith("price_crosses_") and kind.endswith("_sma"):
        word = "above" if "above" in kind else "below"
        return f"price crosses {word} sma({leaf.period}, {leaf.timeframe})"
    if kind in ("sma_cross_up", "sma_cross_down"):
        word = "above" if kind.endswith("up") else "below"
        return f"sma({leaf.fast}) crosses {word} sma({leaf.slow}, {leaf.timeframe})"
    if kind.startswith("bollinger_break_"):
        band = kind.rsplit("_", 1)[1]
        word = "above" if band == "upper" else "below"
        args = f"{leaf.period}, {format_number(leaf.stddev)}, {leaf.timeframe}"
        return f"close {word} {band} bollinger({args})"
    if kind in ("new_high", "new_low"):
        return f"new {kind[4:]} {leaf.period} bars {leaf.timeframe}"
    if kind == "volume_spike":
        return f"volume_spike {format_number(leaf.multiple)}x {leaf.period} bars {leaf.timeframe}"
    if kind == "iv_change_pct":
        return f"iv change {format_number(leaf.percent)}% in {format_duration(leaf.window_seconds)}"
    if kind == "iv_rank_above":
        return f"iv_rank > {format_number(leaf.threshold)} over {leaf.lookback_days} days"
    if kind.split("_")[0] in _GREEKS and kind.count("_") == 1:
        return f"{kind.split('_')[0]} {above} {format_number(leaf.threshold)}"
    if kind == "spread_pct_above":
        return f"spread > {format_number(leaf.threshold)}%"
    if kind in ("position_pnl_pct_above", "position_pnl_pct_below"):
        return f"pnl {above} {format_number(leaf.threshold)}%"
    if kind in ("position_pnl_above", "position_pnl_below"):
        return f"pnl {above} {format_money(leaf.threshold)}"
    if kind == "expiry_within_days":
        return f"expiry within {leaf.days} days"
    if kind in FLOW_CONDITIONS:
        if kind == "unusual_volume":
            core = f"unusual volume {format_number(leaf.ratio)}x"
        elif kind == "flow_premium_above":
            core = f"premium > {format_money(leaf.threshold)}"
        elif kind in ("flow_sweep", "flow_block"):
            core = kind[5:]
            if leaf.min_premium:
                core += f" premium >= {format_money(leaf.min_premium)}"
        elif kind == "flow_repeated_hits":
            core = f"repeated hits {leaf.count} in {format_duration(leaf.window_seconds)}"
        else:
            sign = ">" if leaf.comparison == "above" else "<"
            window = format_duration(leaf.window_seconds)
            core = f"put/call premium ratio {sign} {format_number(leaf.threshold)} in {window}"
        return _flow_text(leaf, core)
    return None


def format_condition(node: ConditionNode, *, canonical: bool = False) -> str:
    """A condition tree as rule text: natural phrases, or ``type(param=value)`` when asked."""
    if isinstance(node, AllOf | AnyOf):
        operator, children = ("and", node.all) if isinstance(node, AllOf) else ("or", node.any)
        parts = []
        for child in children:
            text = format_condition(child, canonical=canonical)
            parts.append(f"({text})" if isinstance(child, AllOf | AnyOf) else text)
        return f" {operator} ".join(parts)
    text = None if canonical else _natural(node)
    return text if text is not None else _canonical(node)


def format_rule(rule: Rule, *, canonical: bool = False) -> str:
    """The rule as text that ``parse_rule`` turns back into an equal rule."""
    parts: list[str] = []
    if rule.symbols is not None:
        parts.append("watchlist " + ",".join(_word_or_string(s) for s in rule.symbols))
    elif rule.symbol is not None:
        symbol = _word_or_string(rule.symbol)
        parts.append(symbol if symbol == rule.symbol else f"symbol {symbol}")
    else:
        parts.append("any symbol")
    parts.append(format_condition(rule.conditions, canonical=canonical))
    parts.append(f"id {_word_or_string(rule.id)} user {_word_or_string(rule.user_id)}")
    parts.append(f"name {json.dumps(rule.name)}")
    if rule.version != 1:
        parts.append(f"version {rule.version}")
    if rule.priority != Priority.MEDIUM:
        parts.append(f"priority {rule.priority.value.lower()}")
    if rule.mode != "recurring":
        parts.append(rule.mode)
    if rule.cooldown_seconds != 300:
        parts.append(f"cooldown {format_duration(rule.cooldown_seconds)}")
    if rule.expires_at is not None:
        parts.append(f"expires {format_timestamp(rule.expires_at)}")
    if rule.channels is not None:
        parts.append("channels " + ",".join(channel.value for channel in rule.channels))
    if rule.sessions != "any":
        parts.append(f"{rule.sessions} hours")
    if not rule.active:
        parts.append("inactive")
    return " ".join(parts)


# ---------------------------------------------------------------- a rule's name in words

_NAME_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
_SIDE_PAIRS = {
    ("ask", "above_ask"): "at or above the ask",
    ("bid", "below_bid"): "at or below the bid",
}


def _span_words(seconds: int) -> str:
    """A window as people say it: 30 minutes, 1 hour, 90 seconds."""
    unit, size = next((u, s) for u, s in _NAME_UNITS if seconds % s == 0)
    count = seconds // size
    return f"{count} {unit}{'' if count == 1 else 's'}"


def _grouped(value: float) -> str:
    """A number with thousands separators: 1,000,000, 182.5."""
    whole, dot, fraction = format_number(abs(value)).partition(".")
    return f"{'-' if value < 0 else ''}{int(whole):,}{dot}{fraction}"


def _dollars(value: float) -> str:
    """$1M, $250K, -$500, $500.50: the scale in capitals, the sign before the $."""
    sign, amount = "-" if value < 0 else "", abs(value)
    scaled = format_money(amount)
    if scaled[-1].isalpha():
        return f"{sign}${scaled.upper()}"
    return f"{sign}${amount:,.2f}" if amount % 1 else f"{sign}${int(amount):,}"


def _flow_words(leaf: Any, core: str) -> str:
    """A flow condition: what prints, then its filters, comma-separated."""
    kind: str = leaf.type
    words = []
    if leaf.moneyness is not None:
        band = leaf.atm_band_pct
        within = (
            f" (within {format_number(band)}%)" if leaf.moneyness == "atm" and band != 1 else ""
        )
        words.append(leaf.moneyness.upper() + within)
    right = {"C": "call", "P": "put", None: "options"}[leaf.right]
    if kind in ("flow_sweep", "flow_block"):
        words.append(f"{right} {kind[5:]}")
        if leaf.min_premium:
            words.append(f"of {_dollars(leaf.min_premium)} or more")
    elif kind == "flow_premium_above":
        words.append(f"{right} print over {_dollars(leaf.threshold)}")
    elif kind == "flow_repeated_hits":
        words = [f"{leaf.count}", *words, f"{right} prints on one contract in {core}"]
    elif kind == "unusual_volume":
        words = ["unusual", *words, f"{right} volume ({core})"]
    else:
        words.append(f"{right} {core}" if leaf.right else core)
    filters = [" ".join(words)]
    if leaf.sides:
        sides = tuple(leaf.sides)
        shown = " or ".join(SIDE_WORDS[side] for side in sides)
        filters.append(_SIDE_PAIRS.get(sides, shown))
    low, high = leaf.min_days_to_expiry, leaf.max_days_to_expiry
    if low is not None and high is not None:
        filters.append(f"{low} to {high} days to expiry")
    elif high is not None:
        filters.append(f"expiring within {high} days")
    elif low is not None:
        filters.append(f"{low}+ days to expiry")
    if leaf.expires_this_week:
        filters.append("expiring this week")
    if leaf.min_size is not None:
        filters.append(f"{leaf.min_size}+ contracts")
    return ", ".join(filters)


def _leaf_words(leaf: Any) -> str:
    kind: str = leaf.type
    way = "above" if kind.endswith(("_above", "_up", "_upper", "_above_sma")) else "below"
    if kind in ("price_above", "price_below"):
        return f"price {way} {_grouped(leaf.threshold)}"
    if kind in ("price_crosses_above", "price_crosses_below"):
        return f"price crosses {way} {_grouped(leaf.threshold)}"
    if kind.startswith("percent_move_"):
        direction = kind.rsplit("_", 1)[1]
        return f"{direction} {format_number(leaf.percent)}% in {_span_words(leaf.window_seconds)}"
    if kind in ("rsi_above", "rsi_below"):
        return f"RSI({leaf.period}, {leaf.timeframe}) {way} {format_number(leaf.threshold)}"
    if kind.endswith("_sma"):
        return f"price crosses {way} SMA({leaf.period}, {leaf.timeframe})"
    if kind in ("sma_cross_up", "sma_cross_down"):
        cross = {(50, 200, "1d"): "golden cross" if way == "above" else "death cross"}.get(
            (leaf.fast, leaf.slow, leaf.timeframe)
        )
        words = f"SMA {leaf.fast} crosses {way} SMA {leaf.slow} ({leaf.timeframe})"
        return f"{cross}: {words}" if cross else words
    if kind.startswith("bollinger_break_"):
        band = kind.rsplit("_", 1)[1]
        args = f"{leaf.period}, {format_number(leaf.stddev)}, {leaf.timeframe}"
        return f"close {way} the {band} Bollinger band ({args})"
    if kind in ("new_high", "new_low"):
        return f"new {leaf.period}-bar {kind[4:]} ({leaf.timeframe})"
    if kind == "volume_spike":
        multiple = format_number(leaf.multiple)
        return f"volume spike: {multiple}x the {leaf.period}-bar average ({leaf.timeframe})"
    if kind == "iv_change_pct":
        direction = "up" if leaf.percent > 0 else "down"
        change = format_number(abs(leaf.percent))
        return f"IV {direction} {change}% in {_span_words(leaf.window_seconds)}"
    if kind == "iv_rank_above":
        days = leaf.lookback_days
        lookback = "" if days == 252 else f" over {days} days"
        return f"IV rank above {format_number(leaf.threshold)}{lookback}"
    if kind.split("_")[0] in _GREEKS and kind.count("_") == 1:
        name = kind.split("_")[0]
        return f"{'IV' if name == 'iv' else name} {way} {format_number(leaf.threshold)}"
    if kind == "spread_pct_above":
        return f"spread above {format_number(leaf.threshold)}% of mid"
    if kind in ("position_pnl_pct_above", "position_pnl_pct_below"):
        return f"position P&L {way} {format_number(leaf.threshold)}%"
    if kind in ("position_pnl_above", "position_pnl_below"):
        return f"position P&L {way} {_dollars(leaf.threshold)}"
    if kind == "expiry_within_days":
        if leaf.days == 0:
            return "expires today"
        return f"expires within {leaf.days} trading day{'' if leaf.days == 1 else 's'}"
    if kind == "unusual_volume":
        return _flow_words(leaf, f"{format_number(leaf.ratio)}x open interest")
    if kind == "flow_repeated_hits":
        return _flow_words(leaf, _span_words(leaf.window_seconds))
    if kind == "put_call_premium_ratio":
        ratio = f"put/call premium ratio {leaf.comparison} {format_number(leaf.threshold)}"
        return _flow_words(leaf, f"{ratio} over {_span_words(leaf.window_seconds)}")
    return _flow_words(leaf, "")


def _tree_words(node: ConditionNode) -> str:
    if isinstance(node, AllOf | AnyOf):
        operator, children = ("and", node.all) if isinstance(node, AllOf) else ("or", node.any)
        parts = []
        for child in children:
            text = _tree_words(child)
            parts.append(f"({text})" if isinstance(child, AllOf | AnyOf) else text)
        return f" {operator} ".join(parts)
    return _leaf_words(node)


def condition_name(node: ConditionNode) -> str:
    """A rule's conditions in words, for its name: ``price crosses above 260``,
    ``RSI(14, 5m) above 70``, ``call sweep of $1M or more``; at most 255 characters."""
    words = _tree_words(node)
    return words if len(words) <= 255 else words[:254].rstrip() + "…"


# ---------------------------------------------------------------- values for other callers


def parse_money(text: str) -> float:
    """``500k`` -> 500000.0, ``$1.5m`` -> 1500000.0, ``250`` -> 250.0 (``m`` = million)."""
    text = text.strip()
    tree, tokens = _parse(text, "money")
    build = _Build(text, tokens)
    return float(build.to_money(_transform(build, tree)))


def parse_duration(text: str) -> int:
    """``30m`` -> 1800, ``1h`` -> 3600, ``90s`` -> 90, ``0`` -> 0 (``m`` = minutes)."""
    text = text.strip()
    tree, tokens = _parse(text, "duration")
    seconds: int = _transform(_Build(text, tokens), tree)
    return seconds


# ---------------------------------------------------------------- the grammar in docs/rules.md


def grammar_markdown() -> str:
    """The grammar section of docs/rules.md, between DOC_BEGIN and DOC_END: the file itself."""
    grammar = _GRAMMAR.read_text(encoding="utf-8").rstrip("\n")
    return f"{DOC_BEGIN}\n\n```lark\n{grammar}\n```\n\n{DOC_END}"


def update_docs(path: Path) -> bool:
    """Rewrite the grammar section of ``path``; True when it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(DOC_BEGIN), text.index(DOC_END) + len(DOC_END)
    updated = text[:start] + grammar_markdown() + text[end:]
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text


if __name__ == "__main__":  # python -m pipeline.rules.text: refresh docs/rules.md
    docs = Path(__file__).resolve().parents[2] / "docs" / "rules.md"
    print(f"{docs}: {'updated' if update_docs(docs) else 'up to date'}")
