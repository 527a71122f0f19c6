"""Rule text: a compact form of a rule for people who type them, parsed into the Rule model.

Example::

    AAPL price crosses above 200 and (iv_rank > 80 or volume_spike 3x 20 bars 1m)
        cooldown 30m priority high user u-1

A hand-written tokenizer and recursive-descent parser; every rule it builds is validated by
the same pydantic models as a JSON rule (``pipeline/messages.py``, ``pipeline/evaluate/specs.py``).
docs/rules.md documents the grammar with an example per condition type. In EBNF (keywords
are case-insensitive; ``{x}`` repeats, ``[x]`` is optional)::

    rule        = [scope] expr {option} ;
    scope       = "*" | "any" ("symbol" | "symbols")
                | ("watchlist" | "symbols") symbol {"," symbol}
                | ["symbol"] symbol ;          (* a bare symbol must not be a keyword *)
    symbol      = WORD | STRING ;
    expr        = and_expr {"or" and_expr} ;   (* "and" binds tighter than "or" *)
    and_expr    = primary {"and" primary} ;
    primary     = "(" expr ")" | condition ;
    condition   = TYPE "(" [NAME "=" value {"," NAME "=" value}] ")"   (* canonical *)
                | price | indicator | option_leaf | flow | position ;
    value       = NUMBER | WORD | STRING | "none" | "[" [value {"," value}] "]" ;

    price       = "price" cmp money
                | "price" cross ("above" | "below") (money | "sma" [args])
                | ["price"] ("up" | "down") NUMBER ["%"] within duration ;
    indicator   = "rsi" [args] cmp NUMBER
                | "sma" [args] cross ("above" | "below") "sma" [args]
                | ("golden" | "death") "cross" [args]
                | ("close" | "price") (">" | "above") "upper" bollinger
                | ("close" | "price") ("<" | "below") "lower" bollinger
                | "new" ("high" | "low") [args]
                | ("volume_spike" | "volume" "spike") [args] ;
    bollinger   = ("bollinger" | "bb") [args] ;
    args        = "(" [[NAME "="] value {"," [NAME "="] value}] ")"
                | NUMBER ["bars"] {NUMBER ["bars"]} ;
    option_leaf = ("iv" | "delta" | "gamma" | "theta" | "vega") cmp NUMBER
                | ("iv_rank" | "iv" "rank") ["(" value ")"] above NUMBER ["%"]
                  [("over" | "lookback") days]
                | ("iv_change" | "iv" "change") NUMBER ["%"] within duration
                | ("spread" | "spread_pct") above NUMBER "%" ;
    flow        = {"call" | "calls" | "put" | "puts" | "otm" | "itm" | "atm"} flow_core
                  {flow_filter} ;
    flow_core   = ("sweep" | "sweeps" | "block" | "blocks")
                  [("premium" (above | ">=") | "min" "premium") money]
                | "premium" above money
                | ("unusual" "volume" | "unusual_volume") [NUMBER]      (* 3 or 3x *)
                | "repeated" ("hits" | "hit") [NUMBER] [within duration]
                | "put/call" ["premium"] "ratio" cmp NUMBER [within duration] ;
    flow_filter = "side" SIDE {"," SIDE} | "at" ("ask" | "bid" | "mid")
                | "above" "ask" | "below" "bid"
                | "dte" (">=" | ">" | "<=" | "<") NUMBER | "size" (">=" | ">") NUMBER
                | "otm" | "itm" | "atm" | "atm" "band" NUMBER "%" ;
    position    = ["position"] "pnl" cmp (NUMBER "%" | money)
                | "expiry" ("today" | ("within" | "in") days) ;

    option      = "cooldown" duration | "priority" ("low" | "medium" | "high" | "critical")
                | "once" | "recurring" | "active" | "inactive" | "expires" DATETIME
                | ("name" | "id" | "user") (WORD | STRING | NUMBER)
                | "channels" CHANNEL {"," CHANNEL} | "version" NUMBER ;

    cmp         = ">" | "above" | "over" | "<" | "below" | "under" ;
    above       = ">" | "above" | "over" ;
    cross       = "crosses" | "cross" | "crossed" ;
    within      = "in" | "within" | "over" ;
    duration    = NUMBER [UNIT_WORD] ;      (* 30m, 90s, 1h, 2d, 30 minutes; 0 *)
    days        = NUMBER ["trading"] ["day" | "days"] ;                (* or 3d *)
    money       = NUMBER ;                  (* 250, $250, 500k, 1.5m, 2b *)
    SIDE        = "ask" | "bid" | "mid" | "above_ask" | "below_bid" ;
    CHANNEL     = "push" | "email" | "sms" | "voice" | "webhook" | "in_app" ;
    NUMBER      = ["+" | "-"] ["$"] DIGITS ["." DIGITS] [UNIT] ;  (* UNIT: letters or % *)
    WORD        = LETTER {LETTER | DIGIT | "_" | "." | "/" | "@" | "-"} ;
    STRING      = '"' {CHAR} '"' | "'" {CHAR} "'" ;               (* backslash escapes *)
    DATETIME    = YYYY "-" MM "-" DD ["T" hh ":" mm [":" ss ["." FRACTION]] ("Z" | OFFSET)] ;

Numbers carry their unit as a suffix, read by context: a *duration* (after ``in``,
``within``, ``over``, ``cooldown``, and ``*_seconds`` / ``timeframe`` arguments) takes ``s``,
``m``, ``h``, ``d`` (``m`` = minutes; a unit word ``30 minutes`` also works); a *money amount*
(price, premium, pnl thresholds) takes ``k``, ``m``, ``b`` (``m`` = million) and an optional
``$``; a percent takes ``%`` and a multiple ``x``. A bare duration needs a unit (only ``0``
may go without). Text after ``#`` is a comment.

``parse_rule(format_rule(rule))`` gives back an equal rule for every rule this module parses.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from pipeline.evaluate.specs import (
    CONDITION_MODELS,
    FLOW_CONDITIONS,
    AllOf,
    AnyOf,
    ConditionNode,
    timeframe_seconds,
)
from pipeline.messages import Channel, Priority, Rule, describe_validation_error, format_timestamp

__all__ = [
    "RuleTextError",
    "format_condition",
    "format_duration",
    "format_money",
    "format_number",
    "format_rule",
    "parse_conditions",
    "parse_duration",
    "parse_money",
    "parse_rule",
]


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


# ---------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # word, number, string, op, datetime, end
    text: str
    start: int
    end: int
    value: str = ""  # string: the unescaped text; number: the digits with sign
    unit: str = ""  # number: the suffix after the digits (%, x, k, m, s, ...), as written
    dollar: bool = False

    @property
    def low(self) -> str:
        return self.text.lower() if self.kind == "word" else ""

    def is_op(self, *ops: str) -> bool:
        return self.kind == "op" and self.text in ops

    def describe(self) -> str:
        return "the end of the text" if self.kind == "end" else repr(self.text)


_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[Tt]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:?\d{2})?)?"
    r"(?![\w.:-])"
)
_NUMBER = re.compile(r"([+-]?)(\$?)(\d+(?:\.\d*)?|\.\d+)([A-Za-z%]*)")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_./@-]*")
_OPS = (">=", "<=", ">", "<", "(", ")", ",", "=", "*", "[", "]")


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, ending with an ``end`` token; RuleTextError on a stray char."""
    tokens: list[Token] = []
    pos, size = 0, len(text)
    while pos < size:
        char = text[pos]
        if char.isspace():
            pos += 1
            continue
        if char == "#":
            newline = text.find("\n", pos)
            pos = size if newline == -1 else newline
            continue
        if char in "\"'":
            tokens.append(_string_token(text, pos))
            pos = tokens[-1].end
            continue
        if char.isdigit() and (match := _DATETIME.match(text, pos)):
            tokens.append(Token("datetime", match.group(), pos, match.end()))
            pos = match.end()
            continue
        match = _NUMBER.match(text, pos)
        if match and (char.isdigit() or char in "+-$."):
            sign, dollar, digits, unit = match.groups()
            tokens.append(
                Token("number", match.group(), pos, match.end(), sign + digits, unit, bool(dollar))
            )
            pos = match.end()
            continue
        if match := _WORD.match(text, pos):
            word = match.group().rstrip(".-/")
            tokens.append(Token("word", word, pos, pos + len(word)))
            pos += len(word)
            continue
        op = next((op for op in _OPS if text.startswith(op, pos)), None)
        if op is None:
            raise RuleTextError(f"unexpected character {char!r}", text, pos, pos + 1)
        tokens.append(Token("op", op, pos, pos + len(op)))
        pos += len(op)
    tokens.append(Token("end", "", size, size))
    return tokens


def _string_token(text: str, start: int) -> Token:
    quote, pos, out = text[start], start + 1, []
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if char == quote:
            return Token("string", text[start : pos + 1], start, pos + 1, "".join(out))
        out.append(char)
        pos += 1
    raise RuleTextError("unterminated string: no closing quote", text, start, start + 1)


# ---------------------------------------------------------------- vocabulary

_MONEY_UNITS = {"": Decimal(1), "k": Decimal(1000), "m": Decimal(10**6), "b": Decimal(10**9)}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT_WORDS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), "s"),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), "m"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "h"),
    **dict.fromkeys(("d", "day", "days"), "d"),
}
_ABOVE = {">": "above", "above": "above", "over": "above", "<": "below", "below": "below"}
_ABOVE |= {"under": "below"}
_SIDES = ("ask", "bid", "mid", "above_ask", "below_bid")
_GREEKS = ("iv", "delta", "gamma", "theta", "vega")
_FLOW_PREFIX = {"call": "C", "calls": "C", "put": "P", "puts": "P"}
_MONEYNESS = ("otm", "itm", "atm")
_OPTION_WORDS = tuple(
    [
        "cooldown",
        "priority",
        "once",
        "recurring",
        "expires",
        "name",
        "id",
        "user",
        "channels",
        "version",
        "active",
        "inactive",
    ]
)
_PHRASE_WORDS = [
    "price",
    "close",
    "rsi",
    "sma",
    "golden",
    "death",
    "new",
    "volume_spike",
    "volume",
    "up",
    "down",
    "iv",
    "iv_rank",
    "iv_change",
    "delta",
    "gamma",
    "theta",
    "vega",
    "spread",
    "spread_pct",
    "unusual",
    "unusual_volume",
    "premium",
    "sweep",
    "sweeps",
    "block",
    "blocks",
    "repeated",
    "put/call",
    "pnl",
    "position",
    "expiry",
]
CONDITION_WORDS = frozenset([*_PHRASE_WORDS, *_FLOW_PREFIX, *_MONEYNESS, *CONDITION_MODELS])
_SCOPE_WORDS = ("any", "watchlist", "symbols", "symbol")
_KEYWORDS = CONDITION_WORDS | set(_SCOPE_WORDS) | set(_OPTION_WORDS) | {"and", "or"}


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word.lower(), sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _decimal_value(value: Decimal) -> int | float:
    """An integral Decimal as int, anything else as float."""
    return int(value) if value == value.to_integral_value() else float(value)


# ---------------------------------------------------------------- the parser


@dataclass
class _Arg:
    name: Token | None
    value: Token | list[Token]
    start: Token


@dataclass
class _Span:
    start: int
    end: int


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.spans: dict[str, _Span] = {}

    # ------------------------------------------------------------ token access

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.peek()
        if token.kind != "end":
            self.pos += 1
        return token

    @property
    def previous(self) -> Token:
        return self.tokens[self.pos - 1] if self.pos else self.peek()

    def at(self, *words: str) -> bool:
        return self.peek().low in words

    def accept(self, *words: str) -> Token | None:
        return self.take() if self.at(*words) else None

    def accept_op(self, *ops: str) -> Token | None:
        return self.take() if self.peek().is_op(*ops) else None

    def fail(self, reason: str, token: Token | None = None, end: Token | None = None) -> NoReturn:
        token = token or self.peek()
        raise RuleTextError(reason, self.text, token.start, (end or token).end)

    def after(self) -> str:
        return f" after '{self.previous.text}'" if self.pos else ""

    def expect(self, *words: str) -> Token:
        if self.at(*words):
            return self.take()
        wanted = " or ".join(f"'{word}'" for word in words)
        self.fail(f"expected {wanted}{self.after()}, found {self.peek().describe()}")

    def expect_op(self, op: str) -> Token:
        if self.peek().is_op(op):
            return self.take()
        self.fail(f"expected '{op}'{self.after()}, found {self.peek().describe()}")

    # ------------------------------------------------------------ numbers by context

    def number_token(self, what: str = "a number") -> Token:
        token = self.peek()
        if token.kind != "number":
            self.fail(f"expected {what}{self.after()}")
        return self.take()

    def _amount(self, token: Token, units: dict[str, Decimal], what: str) -> int | float:
        unit = token.unit.lower()
        if unit not in units:
            self.fail(f"{token.text!r} is not {what}", token)
        return _decimal_value(Decimal(token.value) * units[unit])

    def plain(self, what: str = "a number") -> int | float:
        token = self.number_token(what)
        if token.dollar:
            self.fail("'$' only goes before money amounts", token)
        if token.unit:
            self.fail(f"{token.text!r} is not {what} (no unit expected here)", token)
        return _decimal_value(Decimal(token.value))

    def money(self) -> int | float:
        token = self.number_token("a number")
        return self._amount(token, _MONEY_UNITS, "an amount (use k, m or b: 500k, 1m)")

    def percent(self, *, required: bool = False) -> int | float:
        token = self.number_token("a percent")
        if token.dollar:
            self.fail("'$' only goes before money amounts", token)
        if token.unit != "%" and (required or token.unit):
            self.fail(f"expected a percent like 5%, found {token.text!r}", token)
        return _decimal_value(Decimal(token.value))

    def multiple(self) -> int | float:
        token = self.number_token("a multiple like 3x")
        if token.unit.lower() not in ("", "x") or token.dollar:
            self.fail(f"expected a multiple like 3x, found {token.text!r}", token)
        return _decimal_value(Decimal(token.value))

    def integer(self, what: str = "a whole number") -> int:
        token = self.peek()
        value = self.plain(what)
        if not isinstance(value, int):
            self.fail(f"expected {what}, found {token.text!r}", token)
        return value

    def duration(self) -> int:
        """Seconds from ``30m``, ``90s``, ``1h``, ``2d``, ``30 minutes`` or ``0``."""
        token = self.number_token("a duration like 30m")
        unit = token.unit.lower()
        if not unit and self.peek().low in _UNIT_WORDS:
            unit = self.take().low
        return self.seconds_of(token, unit)

    def seconds_of(self, token: Token, unit: str) -> int:
        unit = _UNIT_WORDS.get(unit, unit)
        value = Decimal(token.value)
        if not unit:
            if value == 0:
                return 0
            self.fail(f"add a unit to {token.text!r}: s, m (minutes), h or d", token)
        if unit not in _DURATION_UNITS or token.dollar:
            self.fail(f"{token.text!r} is not a duration (use s, m, h or d: 30m)", token)
        seconds = value * _DURATION_UNITS[unit]
        if seconds < 0 or seconds != seconds.to_integral_value():
            self.fail(f"{token.text!r} is not a whole number of seconds", token)
        return int(seconds)

    def timeframe_of(self, token: Token) -> str:
        unit = token.unit.lower()
        if unit not in _DURATION_UNITS or token.dollar or not token.value.isdigit():
            self.fail(f"{token.text!r} is not a timeframe (use e.g. 1m, 5m, 1h, 1d)", token)
        timeframe = f"{int(token.value)}{unit}"
        try:
            timeframe_seconds(timeframe)
        except ValueError as exc:
            self.fail(str(exc), token)
        return timeframe

    def days(self) -> int:
        """``3 days``, ``3 trading days``, ``3d`` or ``3``."""
        token = self.number_token("a number of days")
        if token.unit.lower() not in ("", "d") or token.dollar or not token.value.isdigit():
            self.fail(f"expected a number of days, found {token.text!r}", token)
        if not token.unit:
            self.accept("trading")
            self.accept("day", "days")
        return int(token.value)

    def comparison(self, *, allowed: tuple[str, ...] = ("above", "below")) -> str:
        token = self.peek()
        direction = _ABOVE.get(token.text.lower()) if token.kind in ("op", "word") else None
        if token.is_op(">=", "<="):
            self.fail(f"'{token.text}' is not supported here: conditions compare strictly", token)
        if direction is None or direction not in allowed:
            words = " or ".join(
                {"above": "'>' (above)", "below": "'<' (below)"}[d] for d in allowed
            )
            self.fail(f"expected {words}{self.after()}, found {token.describe()}")
        self.take()
        return direction

    def ident(self, what: str) -> str:
        token = self.take()
        if token.kind in ("word", "string", "number"):
            return token.value if token.kind == "string" else token.text
        self.fail(f"expected {what}{self.after()}, found {token.describe()}", token)

    # ------------------------------------------------------------ the rule

    def rule(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        first = self.peek()
        body.update(self.scope())
        self.spans["symbol"] = self.spans["symbols"] = _Span(first.start, self.previous.end)
        start = self.peek()
        if start.kind == "end":
            self.fail(f"expected a condition{self.after()}")
        body["conditions"] = self.expression()
        self.spans["conditions"] = _Span(start.start, self.previous.end)
        body.update(self.options())
        return body

    def scope(self) -> dict[str, Any]:
        token, following = self.peek(), self.peek(1)
        if token.is_op("*"):
            self.take()
            return {}
        if token.low == "any" and following.low in ("symbol", "symbols"):
            self.pos += 2
            return {}
        if token.low in ("watchlist", "symbols"):
            self.take()
            symbols = [self.symbol()]
            while self.accept_op(","):
                symbols.append(self.symbol())
            return {"symbols": symbols}
        if token.low == "symbol":
            self.take()
            return {"symbol": self.symbol()}
        if token.kind == "string":
            return {"symbol": self.symbol()}
        if token.kind != "word" or token.low in _KEYWORDS:
            return {}
        # A word that is no keyword: a symbol, unless it reads like a misspelt condition.
        misspelt = following.is_op(">", "<", ">=", "<=") or following.low in (
            "crosses",
            "cross",
            "above",
            "below",
        )
        if following.is_op("("):  # AAPL (a or b), but not prise(threshold=1) or rsj(14) < 30
            inner = self.peek(2)
            misspelt = not (inner.is_op("(") or inner.low in CONDITION_WORDS)
        if misspelt:
            self.fail(f"unknown condition '{token.text}'{_suggest(token.text, CONDITION_WORDS)}")
        return {"symbol": self.symbol()}

    def symbol(self) -> str:
        token = self.peek()
        if token.kind == "string":
            return self.take().value
        if token.kind == "word":
            return self.take().text
        self.fail(f"expected a symbol{self.after()}, found {token.describe()}")

    def expression(self) -> dict[str, Any]:
        children = [self.and_expression()]
        while self.accept("or"):
            children.append(self.and_expression())
        return _group("any", children)

    def and_expression(self) -> dict[str, Any]:
        children = [self.primary()]
        while self.accept("and"):
            children.append(self.primary())
        return _group("all", children)

    def primary(self) -> dict[str, Any]:
        opening = self.accept_op("(")
        if opening is not None:
            node = self.expression()
            if not self.peek().is_op(")"):
                if self.peek().kind == "end":
                    self.fail("unbalanced parenthesis: this '(' is never closed", opening)
                self.fail(f"expected 'and', 'or' or ')', found {self.peek().describe()}")
            self.take()
            return node
        token = self.peek()
        if token.is_op(")"):
            self.fail("unbalanced parenthesis: ')' without a matching '('")
        if token.kind == "end":
            self.fail(f"expected a condition{self.after()}")
        if token.kind != "word":
            self.fail(f"expected a condition{self.after()}, found {token.describe()}")
        start = self.pos
        kind, params = self.condition()
        return self.leaf(kind, params, start)

    def leaf(self, kind: str, params: dict[str, Any], start: int) -> dict[str, Any]:
        model = CONDITION_MODELS[kind]
        try:
            leaf = model.model_validate({"type": kind, **params})
        except ValidationError as exc:
            first, last = self.tokens[start], self.previous
            raise RuleTextError(
                f"{kind}: {_describe(exc)}", self.text, first.start, last.end
            ) from None
        return leaf.model_dump(exclude_defaults=False)

    # ------------------------------------------------------------ conditions

    def condition(self) -> tuple[str, dict[str, Any]]:
        token = self.peek()
        word = token.low
        if word in CONDITION_MODELS and self.peek(1).is_op("("):
            return self.canonical()
        handler = self._HANDLERS.get(word)
        if handler is not None:
            return handler(self)
        if word in _FLOW_PREFIX or word in _MONEYNESS:
            return self.flow()
        hint = _suggest(word, CONDITION_WORDS)
        if not hint and word in _OPTION_WORDS:
            hint = f" ('{word}' is an option: options go after the conditions)"
        self.fail(f"unknown condition '{token.text}'{hint}")

    def canonical(self) -> tuple[str, dict[str, Any]]:
        kind = self.take().low
        model = CONDITION_MODELS[kind]
        fields = [name for name in model.model_fields if name != "type"]
        params: dict[str, Any] = {}
        for arg in self.arguments():
            if arg.name is None:
                self.fail(f"write {kind} arguments as name=value (parameters: {', '.join(fields)})")
            name = arg.name.text
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

    def arguments(self) -> list[_Arg]:
        """``( [name=]value, ... )``; the opening parenthesis is next."""
        opening = self.expect_op("(")
        args: list[_Arg] = []
        if self.accept_op(")"):
            return args
        while True:
            start = self.peek()
            name = None
            if start.kind == "word" and self.peek(1).is_op("="):
                name = self.take()
                self.take()
            value: Token | list[Token]
            if self.accept_op("["):
                value = []
                while not self.peek().is_op("]"):
                    value.append(self.value_token())
                    if not self.accept_op(","):
                        break
                self.expect_op("]")
            else:
                value = self.value_token()
            args.append(_Arg(name, value, start))
            if self.accept_op(")"):
                return args
            if self.peek().kind == "end":
                self.fail("unbalanced parenthesis: this '(' is never closed", opening)
            self.expect_op(",")

    def value_token(self) -> Token:
        token = self.peek()
        if token.kind in ("number", "word", "string"):
            return self.take()
        self.fail(f"expected a value{self.after()}, found {token.describe()}")

    def canonical_value(self, name: str, value: Token | list[Token]) -> Any:
        if isinstance(value, list):
            return [self.canonical_value(name, item) for item in value]
        if value.kind == "string":
            return value.value
        if value.kind == "word":
            return None if value.low in ("none", "null") else value.text
        if name == "timeframe":
            return self.timeframe_of(value)
        unit = value.unit.lower()
        if name.endswith("_seconds"):
            return self.plain_of(value) if not unit else self.seconds_of(value, unit)
        if unit in ("%", "x"):
            return _decimal_value(Decimal(value.value))
        return self._amount(value, _MONEY_UNITS, "a number (k, m or b scale it: 500k)")

    def plain_of(self, token: Token) -> int | float:
        if token.unit or token.dollar:
            self.fail(f"{token.text!r} is not a plain number", token)
        return _decimal_value(Decimal(token.value))

    def indicator_args(self, names: tuple[str, ...]) -> dict[str, Any]:
        """Indicator parameters as ``(14, 5m)``, ``(period=14)`` or bare ``14 bars 5m``.

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
            unit = token.unit.lower()
            if unit in _DURATION_UNITS and "timeframe" in names:
                assign("timeframe", token, self.timeframe_of(token))
            elif unit == "x" and "multiple" in names:
                assign("multiple", token, _decimal_value(Decimal(token.value)))
            elif unit and "timeframe" in names and unit not in ("x", "%"):
                self.timeframe_of(token)  # not a time unit: says what a timeframe looks like
            else:
                free = [name for name in positional if name not in params]
                if not free:
                    self.fail(f"too many numbers: parameters are {', '.join(names)}", token)
                assign(free[0], token, self.plain_of(token))

        if self.peek().is_op("("):
            for arg in self.arguments():
                if isinstance(arg.value, list):
                    self.fail("expected a number, not a list", arg.start)
                if arg.name is None:
                    if arg.value.kind != "number":
                        self.fail(f"expected a number, found {arg.value.describe()}", arg.value)
                    place(arg.value)
                    continue
                name = arg.name.text.lower()
                if name not in names:
                    self.fail(
                        f"unknown parameter '{arg.name.text}' (parameters: {', '.join(names)})",
                        arg.name,
                    )
                assign(name, arg.name, self.canonical_value(name, arg.value))
            return params
        while self.peek().kind == "number":
            token = self.take()
            place(token)
            if not token.unit:
                self.accept("bars", "bar")
        return params

    # natural phrases, one method per leading word

    def price(self) -> tuple[str, dict[str, Any]]:
        subject = self.take()
        if self.accept("crosses", "cross", "crossed"):
            direction = self.expect("above", "below").low
            if self.at("sma"):
                self.take()
                return f"price_crosses_{direction}_sma", self.indicator_args(
                    ("period", "timeframe")
                )
            return f"price_crosses_{direction}", {"threshold": self.money()}
        if self.at("up", "down"):
            return self.percent_move()
        direction = self.comparison()
        if self.at("upper", "lower"):
            band = self.take()
            if (band.low == "upper") != (direction == "above"):
                self.fail("say 'above upper' or 'below lower' band", band)
            self.expect("bollinger", "bb")
            args = self.indicator_args(("period", "stddev", "timeframe"))
            return f"bollinger_break_{band.low}", args
        if subject.low == "close":
            self.fail("'close' compares with a Bollinger band here: 'close above upper bollinger'")
        return f"price_{direction}", {"threshold": self.money()}

    def percent_move(self) -> tuple[str, dict[str, Any]]:
        direction = self.take().low
        percent = self.percent()
        self.expect("in", "within", "over")
        return f"percent_move_{direction}", {"percent": percent, "window_seconds": self.duration()}

    def rsi(self) -> tuple[str, dict[str, Any]]:
        self.take()
        params = self.indicator_args(("period", "timeframe"))
        direction = self.comparison()
        return f"rsi_{direction}", {"threshold": self.plain("an RSI level"), **params}

    def sma(self) -> tuple[str, dict[str, Any]]:
        self.take()
        fast = self.indicator_args(("period", "timeframe"))
        self.expect("crosses", "cross", "crossed")
        direction = self.expect("above", "below").low
        self.expect("sma")
        slow = self.indicator_args(("period", "timeframe"))
        params: dict[str, Any] = {}
        if "period" in fast:
            params["fast"] = fast["period"]
        if "period" in slow:
            params["slow"] = slow["period"]
        timeframes = {fast.get("timeframe"), slow.get("timeframe")} - {None}
        if len(timeframes) > 1:
            self.fail("the two SMAs must share one timeframe", self.previous)
        if timeframes:
            params["timeframe"] = timeframes.pop()
        return ("sma_cross_up" if direction == "above" else "sma_cross_down"), params

    def golden_death(self) -> tuple[str, dict[str, Any]]:
        kind = "sma_cross_up" if self.take().low == "golden" else "sma_cross_down"
        self.expect("cross")
        return kind, self.indicator_args(("fast", "slow", "timeframe"))

    def new_extreme(self) -> tuple[str, dict[str, Any]]:
        self.take()
        which = self.expect("high", "low").low
        return f"new_{which}", self.indicator_args(("period", "timeframe"))

    def volume(self) -> tuple[str, dict[str, Any]]:
        if self.take().low == "volume":
            self.expect("spike")
        return "volume_spike", self.indicator_args(("multiple", "period", "timeframe"))

    def greek(self) -> tuple[str, dict[str, Any]]:
        name = self.take().low
        if name == "iv" and self.at("rank"):
            return self.iv_rank()
        if name == "iv" and self.at("change"):
            return self.iv_change()
        direction = self.comparison()
        token = self.peek()
        if name == "iv" and token.kind == "number" and token.unit == "%":
            self.fail("write IV in the unit of the feed's iv field, without '%' (iv > 60)", token)
        return f"{name}_{direction}", {"threshold": self.plain(f"a {name} level")}

    def iv_rank(self) -> tuple[str, dict[str, Any]]:
        self.take()
        params: dict[str, Any] = {}
        if self.peek().is_op("("):
            for arg in self.arguments():
                if (
                    isinstance(arg.value, list)
                    or arg.value.kind != "number"
                    or (arg.name is not None and arg.name.low != "lookback_days")
                ):
                    self.fail("iv_rank takes one argument, the lookback in days", arg.start)
                params["lookback_days"] = self.plain_of(arg.value)
        self.comparison(allowed=("above",))
        params["threshold"] = self.percent()
        if self.accept("over", "lookback"):
            if "lookback_days" in params:
                self.fail("lookback given twice", self.previous)
            params["lookback_days"] = self.days()
        return "iv_rank_above", params

    def iv_change(self) -> tuple[str, dict[str, Any]]:
        self.take()
        percent = self.percent()
        self.expect("in", "within", "over")
        return "iv_change_pct", {"percent": percent, "window_seconds": self.duration()}

    def spread(self) -> tuple[str, dict[str, Any]]:
        self.take()
        self.comparison(allowed=("above",))
        token = self.peek()
        if token.kind == "number" and not token.unit:
            self.fail(f"the spread is a percent of the mid: write {token.text}%", token)
        return "spread_pct_above", {"threshold": self.percent(required=True)}

    def pnl(self) -> tuple[str, dict[str, Any]]:
        if self.take().low == "position":
            self.expect("pnl")
        direction = self.comparison()
        token = self.peek()
        if token.kind == "number" and token.unit == "%" and not token.dollar:
            self.take()
            return f"position_pnl_pct_{direction}", {
                "threshold": _decimal_value(Decimal(token.value))
            }
        return f"position_pnl_{direction}", {"threshold": self.money()}

    def expiry(self) -> tuple[str, dict[str, Any]]:
        self.take()
        if self.accept("today"):
            return "expiry_within_days", {"days": 0}
        self.expect("within", "in")
        return "expiry_within_days", {"days": self.days()}

    def flow(self) -> tuple[str, dict[str, Any]]:
        filters: dict[str, Any] = {}
        spans: dict[str, Token] = {}

        def put(name: str, value: Any, token: Token) -> None:
            if name in filters and filters[name] != value:
                self.fail(f"{name.replace('_', ' ')} given twice", token)
            filters[name] = value
            spans[name] = token

        while self.at(*_FLOW_PREFIX, *_MONEYNESS):
            token = self.take()
            if token.low in _MONEYNESS:
                put("moneyness", token.low, token)
            else:
                put("right", _FLOW_PREFIX[token.low], token)
        token = self.peek()
        word = token.low
        params: dict[str, Any]
        if word in ("sweep", "sweeps", "block", "blocks"):
            self.take()
            kind = "flow_sweep" if word.startswith("sweep") else "flow_block"
            params = {}
            if self.at("premium", "min"):
                if self.take().low == "min":
                    self.expect("premium")
                elif not self.accept_op(">=", ">"):
                    self.expect("above", "over")
                params["min_premium"] = self.money()
        elif word == "premium":
            self.take()
            self.comparison(allowed=("above",))
            kind, params = "flow_premium_above", {"threshold": self.money()}
        elif word in ("unusual", "unusual_volume"):
            self.take()
            if word == "unusual":
                self.expect("volume")
            kind, params = "unusual_volume", {}
            if self.peek().kind == "number":
                params["ratio"] = self.multiple()
        elif word == "repeated":
            self.take()
            self.expect("hits", "hit")
            kind, params = "flow_repeated_hits", {}
            if self.peek().kind == "number":
                params["count"] = self.integer("a number of prints")
            if self.accept("in", "within", "over"):
                params["window_seconds"] = self.duration()
        elif word == "put/call":
            self.take()
            self.accept("premium")
            self.expect("ratio")
            comparison = self.comparison()
            kind = "put_call_premium_ratio"
            params = {"threshold": self.plain("a ratio"), "comparison": comparison}
            if self.accept("in", "within", "over"):
                params["window_seconds"] = self.duration()
        else:
            cores = ("sweep", "block", "premium", "unusual", "repeated", "put/call")
            self.fail(
                f"expected sweep, block, premium, unusual volume, repeated hits or put/call"
                f"{self.after()}, found {token.describe()}{_suggest(word, cores)}"
            )
        self.flow_filters(put)
        return kind, {**params, **filters}

    def flow_filters(self, put: Callable[[str, Any, Token], None]) -> None:
        sides: list[str] = []
        while True:
            token = self.peek()
            word = token.low
            if word == "side":
                self.take()
                sides.append(self.side())
                while self.accept_op(","):
                    sides.append(self.side())
            elif word in ("at", "above", "below") and self.peek(1).low in ("ask", "bid", "mid"):
                self.take()
                side = self.take().low
                name = side if word == "at" else f"{word}_{side}"
                if name not in _SIDES:
                    self.fail(f"no side '{word} {side}' (sides: {', '.join(_SIDES)})", token)
                sides.append(name)
            elif word == "dte":
                self.take()
                op = self.peek()
                if not op.is_op(">=", ">", "<=", "<"):
                    self.fail(f"expected '>=' or '<=' after 'dte', found {op.describe()}")
                self.take()
                days = self.integer("a number of days")
                if op.text.startswith(">"):
                    put("min_days_to_expiry", days + (op.text == ">"), token)
                else:
                    put("max_days_to_expiry", days - (op.text == "<"), token)
            elif word == "size":
                self.take()
                op = self.peek()
                if not op.is_op(">=", ">"):
                    self.fail(f"expected '>=' after 'size', found {op.describe()}")
                self.take()
                put("min_size", self.integer("a number of contracts") + (op.text == ">"), token)
            elif word == "atm" and self.peek(1).low == "band":
                self.pos += 2
                put("atm_band_pct", self.percent(), token)
            elif word in _MONEYNESS:
                put("moneyness", self.take().low, token)
            else:
                break
        if sides:
            put("sides", sorted(set(sides), key=_SIDES.index), self.previous)

    def side(self) -> str:
        token = self.take()
        if token.low not in _SIDES:
            self.fail(
                f"unknown side {token.describe()}{_suggest(token.low, _SIDES)} "
                f"(sides: {', '.join(_SIDES)})",
                token,
            )
        return token.low

    _HANDLERS: dict[str, Callable[[_Parser], tuple[str, dict[str, Any]]]] = {
        "price": price,
        "close": price,
        "up": percent_move,
        "down": percent_move,
        "rsi": rsi,
        "sma": sma,
        "golden": golden_death,
        "death": golden_death,
        "new": new_extreme,
        "volume": volume,
        "volume_spike": volume,
        **dict.fromkeys(_GREEKS, greek),
        "iv_rank": iv_rank,
        "iv_change": iv_change,
        "spread": spread,
        "spread_pct": spread,
        "pnl": pnl,
        "position": pnl,
        "expiry": expiry,
        **dict.fromkeys(
            ("sweep", "sweeps", "block", "blocks", "premium", "unusual", "unusual_volume"), flow
        ),
        "repeated": flow,
        "put/call": flow,
    }

    # ------------------------------------------------------------ options

    def options(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}

        def put(field: str, value: Any, token: Token) -> None:
            if field in fields:
                self.fail(f"option '{token.text}' given twice", token)
            fields[field] = value
            self.spans[field] = _Span(token.start, self.previous.end)

        while self.peek().kind != "end":
            token = self.peek()
            word = token.low
            if word not in _OPTION_WORDS:
                if token.is_op(")"):
                    self.fail("unbalanced parenthesis: ')' without a matching '('")
                hint = _suggest(word, _OPTION_WORDS) if word else ""
                self.fail(
                    f"expected 'and', 'or' or an option ({', '.join(_OPTION_WORDS)}), "
                    f"found {token.describe()}{hint}"
                )
            self.take()
            if word == "cooldown":
                value: Any = self.duration()
                put("cooldown_seconds", value, token)
            elif word == "priority":
                level = self.peek()
                names = [p.value.lower() for p in Priority]
                if level.low not in names:
                    self.fail(f"expected a priority ({', '.join(names)}){self.after()}")
                self.take()
                put("priority", level.low.upper(), token)
            elif word in ("once", "recurring"):
                put("mode", word, token)
            elif word in ("active", "inactive"):
                put("active", word == "active", token)
            elif word == "expires":
                put("expires_at", self.timestamp(), token)
            elif word == "name":
                put("name", self.ident("a name (in quotes if it has spaces)"), token)
            elif word == "id":
                put("id", self.ident("a rule id"), token)
            elif word == "user":
                put("user_id", self.ident("a user id"), token)
            elif word == "version":
                put("version", self.integer("a version number"), token)
            elif word == "channels":
                channels = [self.channel()]
                while self.accept_op(","):
                    channels.append(self.channel())
                put("channels", channels, token)
        return fields

    def channel(self) -> str:
        token = self.take()
        names = [c.value for c in Channel]
        if token.low not in names:
            self.fail(
                f"unknown channel {token.describe()}{_suggest(token.low, names)} "
                f"(channels: {', '.join(names)})",
                token,
            )
        return token.low

    def timestamp(self) -> datetime:
        token = self.take()
        if token.kind != "datetime":
            self.fail(
                f"expected a date or an RFC 3339 time like 2026-12-31T00:00:00Z{self.after()}",
                token,
            )
        text = token.text
        if len(text) == 10:
            text += "T00:00:00Z"
        text = text[:-1] + "+00:00" if text[-1] in "Zz" else text
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{token.text!r} is not a valid time", token)
        if value.tzinfo is None:
            self.fail("add 'Z' (UTC) or an offset like +02:00 to the time", token)
        return value.astimezone(UTC)


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
    parser = _Parser(text)
    if parser.peek().kind == "end":
        parser.fail("expected a condition")
    tree = parser.expression()
    if parser.peek().kind != "end":
        if parser.peek().is_op(")"):
            parser.fail("unbalanced parenthesis: ')' without a matching '('")
        parser.fail(f"expected 'and' or 'or', found {parser.peek().describe()}")
    return Rule.model_validate(
        {"id": "x", "user_id": "x", "name": "x", "conditions": tree}
    ).conditions


def parse_rule(text: str, *, user_id: str | None = None, rule_id: str | None = None) -> Rule:
    """The Rule that ``text`` describes; RuleTextError (a ValueError) points at what is wrong.

    ``user_id`` / ``rule_id`` supply the user and id when the text has no ``user`` / ``id``
    option (when both are given they must agree). Without an id, the id is ``r-`` and the
    first 12 hex digits of the SHA-256 of the user id and the whitespace-normalized text, so
    the same text of the same user always names the same rule. Without a name, the name is
    the text itself (whitespace collapsed, at most 255 characters).
    """
    parser = _Parser(text)
    body = parser.rule()
    end = parser.peek()
    normalized = " ".join(token.text for token in parser.tokens if token.kind != "end")
    for field, given in (("user_id", user_id), ("id", rule_id)):
        if given is None:
            continue
        if field in body and body[field] != given:
            span = parser.spans[field]
            option = "user" if field == "user_id" else field
            raise RuleTextError(
                f"the text says {option} {body[field]!r} but {given!r} was given",
                text,
                span.start,
                span.end,
            )
        body[field] = given
    if "user_id" not in body:
        raise RuleTextError(
            "no user: add 'user <id>' to the text (or pass a user id)", text, end.start, end.end
        )
    if "id" not in body:
        digest = hashlib.sha256(f"{body['user_id']}\n{normalized}".encode()).hexdigest()
        body["id"] = f"r-{digest[:12]}"
    body.setdefault("name", " ".join(text.split())[:255])
    try:
        return Rule.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        span = parser.spans.get(field, _Span(0, len(text)))
        raise RuleTextError(_describe(exc), text, span.start, span.end) from None


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
    if _WORD.fullmatch(value) and value.lower() not in _KEYWORDS and value[-1] not in ".-/":
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
    if not rule.active:
        parts.append("inactive")
    return " ".join(parts)


# ---------------------------------------------------------------- values for other callers


def parse_money(text: str) -> float:
    """``500k`` -> 500000.0, ``$1.5m`` -> 1500000.0, ``250`` -> 250.0 (``m`` = million)."""
    parser = _Parser(text.strip())
    value = parser.money()
    if parser.peek().kind != "end":
        parser.fail("expected one amount like 500k")
    return float(value)


def parse_duration(text: str) -> int:
    """``30m`` -> 1800, ``1h`` -> 3600, ``90s`` -> 90, ``0`` -> 0 (``m`` = minutes)."""
    parser = _Parser(text.strip())
    value = parser.duration()
    if parser.peek().kind != "end":
        parser.fail("expected one duration like 30m")
    return value
