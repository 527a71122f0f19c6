"""Plain-English rules: a sentence a trader types, read as rule text.

"alert me when AAPL drops below 180" becomes ``AAPL price < 180``, which ``parse_rule`` then
parses: the formal grammar (``grammar.lark``) stays the one definition of a rule, and this
module only rewrites phrases into it. The reading is deterministic: a fixed list of patterns
over the lowercased sentence, tried in order, each consuming the words it matched so that a
later, looser pattern (a bare price level) cannot take the words of an earlier one (an RSI
level). Words no pattern used and that are not filler are reported, so a person sees what
was ignored.

Chart words ("on the 5 minute chart", "daily") apply to every indicator of the sentence.
Words that name a time ("until Friday", "today only") count from a ``now`` the caller may
give, in New York's days. A phrase that rule text cannot say exactly ("puts expiring this
week": the flow filters count days from each print) is refused with the reason, never
approximated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cache

from pipeline.market_calendar import EXCHANGE_TZ, session_bounds
from pipeline.messages import Rule
from pipeline.rules.text import RuleTextError, format_duration, format_rule, parse_rule

__all__ = [
    "EnglishRuleError",
    "Reading",
    "Understood",
    "parse_english",
    "read_english",
    "understand",
]


class EnglishRuleError(ValueError):
    """The sentence could not be read as a rule; the message says what was understood.

    ``english`` is whether it read as English at all (a filler phrase or a condition was
    found): when not, the text was more likely rule text with a mistake, and the rule text
    error (with its caret) is the better one to show.

    ``understood`` is the rule text read so far and ``unused`` the words nothing used, for
    callers that show them apart from the message (the API's problem members); ``formal`` is
    the error of the text read as rule text, when ``understand`` tried that first.
    """

    def __init__(
        self,
        message: str,
        *,
        english: bool = True,
        understood: str = "",
        unused: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.english = english
        self.understood = understood
        self.unused = unused
        self.formal: RuleTextError | None = None


class _Refusal(Exception):
    """A phrase was recognised but says something rule text cannot say exactly."""


@dataclass(frozen=True)
class Reading:
    """What a sentence was read as: the formal text, and the words nothing used."""

    formal: str
    unused: tuple[str, ...]


@dataclass(frozen=True)
class English:
    rule: Rule
    formal: str
    canonical: str
    unused: tuple[str, ...]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that look like tickers but are the vocabulary of the sentence.
_NOT_TICKERS = _words(
    "I A ME OK RTH RSI IV IVR SMA EMA MA DMA BB ATM OTM ITM DTE OI PNL ET PM AM ASAP ALERT US USD "
    "AND OR HOD LOD VWAP MACD ETF IF WHEN THE MY PUT CALL PUTS CALLS SWEEP SWEEPS BLOCK"
)
_TICKER = re.compile(r"\$?([A-Z]{1,5}(?:\.[A-Z])?)(?:'s|’s)?")
_CASHTAG = re.compile(r"\$([A-Za-z]{1,5})")
# Words that carry no meaning of their own here: used silently.
_NOISE = _words(
    "the a an please stock stocks shares share it its of to that and or , . ! ? ; : ' ( ) s "
    "when whenever if then just has have had there is are about with dollars bucks"
)
_TOKEN = re.compile(
    r"\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}(?:/\d{2,4})?|"
    # a number ends at a digit: "180," and "180." at a sentence's end are the number 180
    r"\$?[+-]?(?:\d(?:[\d,]*\d)?(?:\.\d+)?|\.\d+)[A-Za-z%]*|[A-Za-z$][A-Za-z0-9.'’/&-]*[A-Za-z0-9]"
    r"|[A-Za-z]|>=|<=|[<>%(),.!?;:]"
)
_SCALES = {"thousand": "k", "grand": "k", "k": "k", "million": "m", "mm": "m", "mil": "m",
           "m": "m", "billion": "b", "bn": "b", "b": "b"}  # fmt: skip
_NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                 "seven": "7", "eight": "8", "nine": "9", "ten": "10", "fifteen": "15",
                 "twenty": "20", "thirty": "30", "fifty": "50"}  # fmt: skip

N = r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)"
MONEY = rf"\$?{N}[kmb]?"
UNIT = (
    r"(?:seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d|weeks?|wks?|w|"
    r"months?|years?|yrs?)"
)
DUR = (
    rf"(?:(?:the )?(?:last |past |next )?(?:{N}|an?|half an?) ?{UNIT}\b"
    rf"|(?:the )?(?:last|past) {UNIT}\b)"
)
VERB = (
    r"(?:(?:is|are|goes|go|gets|get|moves|move|trades|trade|stays|heads|reads|prints|climbs|"
    r"climb|rise|drop|fall|dip|sink|slide|rally|rises|jumps|spikes|surges|pops|rallies|drops|falls|dips|sinks|slides|declines|slips|"
    r"tanks|runs|pushes|trading|getting|going|rising|dropping|falling|moving|comes in|"
    r"hits|reaches|goes up|goes down|moves up|moves down|is trading|is now|trades at) )?"
)
ABOVE = (
    r"(?:above|over|exceeds|tops|greater than|higher than|more than|bigger than|past|north of|>=?)"
)
BELOW = r"(?:below|under|beneath|less than|lower than|smaller than|south of|<=?)"
CMP = rf"{VERB}(?:(?P<above>{ABOVE})|(?P<below>{BELOW})) (?:the )?"
CROSS = (
    r"(?:crosses|cross|crossed|crossing|breaks|break|broke|breaking|breaks out|breaks down|"
    r"punches|pierces|slices|cuts|blasts|busts) (?P<down>down )?(?:(?:out|up) )?"
    r"(?:(?P<xabove>above|over|through|past|into)|(?P<xbelow>below|under|beneath)) (?:the |its )?"
)
MA = r"(?:simple moving average|moving average|ma|sma|dma)"
SUBJECT = r"(?:(?:the )?(?:price|stock|shares|it|share price|underlying)(?: price)? )?"


def _seconds(amount: str, unit: str) -> int:
    count = {"a": 1.0, "an": 1.0, "half a": 0.5, "half an": 0.5}.get(amount.strip())
    value = float(amount) if count is None else count
    u = unit.rstrip("s") if unit not in ("s", "secs") else "s"
    size = {"": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
            "hr": 3600, "hour": 3600, "d": 86400, "day": 86400, "w": 604800, "wk": 604800,
            "week": 604800, "month": 2592000, "year": 31536000, "yr": 31536000}[u]  # fmt: skip
    return round(value * size)


_DUR_PARTS = re.compile(rf"(?:the )?(?:last |past |next )?(?P<n>{N}|an?|half an?)? ?(?P<u>{UNIT})$")


def _duration(text: str) -> str:
    match = _DUR_PARTS.search(text.strip())
    if match is None:
        raise ValueError(text)
    return format_duration(_seconds(match["n"] or "1", match["u"]))


def _timeframe(amount: str | None, unit: str) -> str:
    seconds = _seconds(amount or "1", unit)
    return format_duration(seconds) if seconds != 604800 else "7d"


def _plain(number: str) -> str:
    return number.lstrip("$").rstrip("%")


@dataclass
class _Context:
    now: datetime
    symbols: list[str] = field(default_factory=list)
    timeframe: str | None = None
    # a phrase that names its own scope: an option contract, or every option position
    scope: str | None = None


Build = Callable[[re.Match[str], _Context], str]


def _cmp(match: re.Match[str]) -> str:
    groups = match.groupdict()
    if groups.get("xabove") or groups.get("xbelow"):
        return ">" if _xdir(match) == "above" else "<"
    return ">" if groups["above"] else "<"


def _xdir(match: re.Match[str]) -> str:
    return "below" if match["xbelow"] or match["down"] else "above"


def _indicator(period: str | None, timeframe: str | None, ctx: _Context) -> str:
    tf = timeframe or ctx.timeframe
    parts = [p for p in (period, tf) if p]
    return f"({', '.join(parts)})" if parts else ""


def _period_unit(period: str | None, unit: str | None) -> tuple[str | None, str | None]:
    """``50-day`` is 50 daily bars, ``20 bar`` 20 bars of the sentence's chart, but
    ``5-minute`` and ``4-hour`` are the chart: 5-minute bars."""
    if unit is None or unit.startswith(("bar", "period")):
        return period, None
    if unit.startswith(("day", "week")):
        return period, _timeframe(None, unit)
    return None, _timeframe(period, unit)


def _rsi_args(period: str | None, tf: str | None, ctx: _Context) -> str:
    # the grammar takes the period first: a chart alone needs the default period spelt out
    return _indicator(period or ("14" if tf or ctx.timeframe else None), tf, ctx)


def _rsi(m: re.Match[str], ctx: _Context) -> str:
    period, tf = _period_unit(m["p"] or m["p2"], m["pu"])
    return f"rsi{_rsi_args(period, tf, ctx)} {_cmp(m)} {_plain(m['n'])}"


def _rsi_named(m: re.Match[str], ctx: _Context) -> str:
    period, tf = _period_unit(m["p"], m["pu"])
    level = m["n"] or ("70" if m["kind"] == "overbought" else "30")
    sign = ">" if m["kind"] == "overbought" else "<"
    return f"rsi{_rsi_args(period, tf, ctx)} {sign} {level}"


def _price_sma(m: re.Match[str], ctx: _Context) -> str:
    period, tf = _period_unit(m["p"] or m["p2"] or m["p2b"] or "20", m["pu"])
    if tf is None and m["ma"] == "dma":
        tf = "1d"
    return f"price crosses {_xdir(m)} sma{_indicator(period, tf, ctx)}"


def _sma_cross(m: re.Match[str], ctx: _Context) -> str:
    _, tf = _period_unit(m["p"], m["pu"])
    tf = tf or ctx.timeframe
    fast, slow = sorted((int(m["p"]), int(m["q"])))
    suffix = f", {tf}" if tf else ""
    return f"sma({fast}) crosses {_xdir(m)} sma({slow}{suffix})"


def _golden(m: re.Match[str], ctx: _Context) -> str:
    return f"{m['gd']} cross" + (f" {ctx.timeframe}" if ctx.timeframe else "")


def _bollinger(m: re.Match[str], ctx: _Context) -> str:
    upper = m["band"] in ("upper", "top")
    args = [a for a in (m["bp"], m["bs"], ctx.timeframe) if a]
    suffix = f"({', '.join(args)})" if args else ""
    if upper:
        return f"close above upper bollinger{suffix}"
    return f"close below lower bollinger{suffix}"


def _new_extreme(m: re.Match[str], ctx: _Context) -> str:
    if m["n"] is None:
        return f"new {m['hl']}" + (f" {ctx.timeframe}" if ctx.timeframe else "")
    count = int(m["n"])
    unit = m["u"]
    if unit.startswith("bar"):
        return f"new {m['hl']} {count} bars" + (f" {ctx.timeframe}" if ctx.timeframe else "")
    # trading days: 5 a week, 21 a month, 252 a year (52 weeks is 252, as traders mean it)
    bars = {"day": count, "week": 252 if count == 52 else count * 5, "month": count * 21,
            "year": count * 252}[unit.rstrip("s")]  # fmt: skip
    return f"new {m['hl']} {bars} bars 1d"


def _volume_spike(m: re.Match[str], ctx: _Context) -> str:
    parts = []
    if m["x"]:
        parts.append(f"{m['x']}x")
    if m["p"]:
        parts.append(f"{m['p']} bars")
    if ctx.timeframe:
        parts.append(ctx.timeframe)
    return " ".join(["volume spike", *parts])


def _iv_rank(m: re.Match[str], ctx: _Context) -> str:
    text = f"iv_rank > {_plain(m['n'])}"
    if m["days"]:
        text += f" over {m['days']} days"
    elif m["span"]:
        days = {"year": 252, "1 year": 252, "52 weeks": 252, "6 months": 126}[m["span"]]
        text += f" over {days} days"
    return text


def _iv_change(m: re.Match[str], ctx: _Context) -> str:
    down = m["verb"] in ("drops", "falls", "crush", "crushes", "collapses", "down", "sinks",
                         "declines", "dips", "crush of", "drop", "fall", "drops by")  # fmt: skip
    sign = "-" if down else ""
    return f"iv change {sign}{_plain(m['n'])}% in {_duration(m['dur'])}"


def _greek(m: re.Match[str], ctx: _Context) -> str:
    name = "iv" if m["g"].startswith(("iv", "implied")) else m["g"]
    return f"{name} {_cmp(m)} {_plain(m['n'])}"


def _spread(m: re.Match[str], ctx: _Context) -> str:
    return f"spread > {_plain(m['n'])}%"


_RIGHT = {"call": "call", "calls": "call", "put": "put", "puts": "put"}
_MONEYNESS = {"otm": "otm", "out of the money": "otm", "itm": "itm", "in the money": "itm",
              "atm": "atm", "at the money": "atm"}  # fmt: skip


def _flow_prefix(m: re.Match[str]) -> str:
    words = []
    if m["mny"]:
        words.append(_MONEYNESS[m["mny"]])
    if m["right"]:
        words.append(_RIGHT[m["right"]])
    return " ".join(words + [""])


def _sweep(m: re.Match[str], ctx: _Context) -> str:
    kind = "sweep" if m["kind"].startswith("sweep") else "block"
    text = _flow_prefix(m) + kind
    if m["m"]:
        text += f" premium >= {_plain(m['m'])}"
    return text


def _premium(m: re.Match[str], ctx: _Context) -> str:
    return _flow_prefix(m) + f"premium > {_plain(m['m'])}"


def _unusual(m: re.Match[str], ctx: _Context) -> str:
    return "unusual volume" + (f" {m['x']}x" if m["x"] else "")


def _repeated(m: re.Match[str], ctx: _Context) -> str:
    count = _NUMBER_WORDS.get(m["c"], m["c"])
    return f"repeated hits {count} in {_duration(m['dur'])}"


def _put_call(m: re.Match[str], ctx: _Context) -> str:
    text = f"put/call premium ratio {_cmp(m)} {_plain(m['n'])}"
    if m["dur"]:
        text += f" in {_duration(m['dur'])}"
    return text


def _percent_move(m: re.Match[str], ctx: _Context) -> str:
    up = m["dir"] in _UP_MOVES
    return f"{'up' if up else 'down'} {_plain(m['n'])}% in {_duration(m['dur'])}"


def _price_cross(m: re.Match[str], ctx: _Context) -> str:
    return f"price crosses {_xdir(m)} {_plain(m['n'])}"


def _price_level(m: re.Match[str], ctx: _Context) -> str:
    return f"price {_cmp(m)} {_plain(m['n'])}"


# ---------------------------------------------------------------- positions

_GAIN = r"(?:is |are |has |have |goes |gets )?(?:up|gains?|gained|made|making|green|in profit)"
_LOSS = (
    r"(?:is |are |has |have |goes |gets )?(?:down|loses?|lost|losing|drops?|dropped|falls?|fell|"
    r"red|in the red|underwater)"
)
# "my TSLA position", "my shares", "my long": the symbol itself is not among the words
_HOLDER = (
    r"(?:my|our) (?:(?:long|short|whole|entire|open) )?"
    r"(?:(?:position|holding|share|stake|trade|investment)s? )?"
)
_I_AM = r"(?:i'm|i am|im|we're|we are|i've|i have|we've)(?: (?:now|currently|sitting))?"
_ON_POSITION = r"(?: (?:on|in) (?:my|the|this) (?:position|shares|holding|stake|trade))?"
_AMOUNT = rf"(?:by )?(?:more than |over |at least )?(?P<n>[+-]?{N}%|[+-]?\$?{N}[kmb]?)(?: or more)?"


def _unsigned(number: str, *, negative_means: str) -> str:
    """The amount without its sign; a sign that contradicts the words is refused."""
    if number.startswith("-") and negative_means != "loss":
        raise _Refusal(f"'{number}' is a loss, but the words say a gain")
    return number.lstrip("+-")


def _position_move(m: re.Match[str], ctx: _Context) -> str:
    if m["gain"]:
        return f"pnl > {_unsigned(m['n'], negative_means='gain')}"
    return f"pnl < -{_unsigned(m['n'], negative_means='loss')}"


def _position_signed(m: re.Match[str], ctx: _Context) -> str:
    amount = m["n"]
    return f"pnl < {amount}" if amount.startswith("-") else f"pnl > {amount.lstrip('+')}"


def _position_level(m: re.Match[str], ctx: _Context) -> str:
    sign = _cmp(m)
    amount = m["n"]
    if m["what"] != "loss":
        return f"pnl {sign} {amount}"
    # a loss is the P&L with its sign turned: a loss above 500 is a P&L below -500
    if amount.startswith(("-", "+")):
        raise _Refusal(f"a loss of '{amount}': write the loss as a positive amount")
    return f"pnl {'<' if sign == '>' else '>'} -{amount}"


def _stop(m: re.Match[str], ctx: _Context) -> str:
    if m["take"]:
        return f"pnl > {_unsigned(m['n'], negative_means='gain')}"
    return f"pnl < -{_unsigned(m['n'], negative_means='loss')}"


_MONTHS = {name: number for number, names in enumerate(
    ("jan january", "feb february", "mar march", "apr april", "may", "jun june", "jul july",
     "aug august", "sep sept september", "oct october", "nov november", "dec december"), 1)
    for name in names.split()}  # fmt: skip
_WEEKDAYS = {name: number for number, names in enumerate(
    ("mon monday", "tue tues tuesday", "wed wednesday", "thu thur thurs thursday", "fri friday",
     "sat saturday", "sun sunday")) for name in names.split()}  # fmt: skip
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_WEEKDAY = "|".join(sorted(_WEEKDAYS, key=len, reverse=True))
DATE = (
    rf"(?:(?P<mon>{_MONTH})\.? (?P<day>\d{{1,2}})(?:st|nd|rd|th)?(?: (?P<year>20\d\d))?"
    rf"|(?P<day2>\d{{1,2}})(?:st|nd|rd|th)? (?:of )?(?P<mon2>{_MONTH})(?: (?P<year2>20\d\d))?"
    r"|(?P<mm>\d{1,2})/(?P<dd>\d{1,2})(?:/(?P<yy>\d{2}|\d{4}))?"
    r"|(?P<iso>\d{4}-\d{2}-\d{2}))"
)


def _date(m: re.Match[str], today: date) -> date:
    """The date a DATE match names; without a year, the next such date from today on."""
    if m["iso"]:
        try:
            return date.fromisoformat(m["iso"])
        except ValueError:
            raise _Refusal(f"{m[0]!r} is not a date") from None
    if m["mm"]:
        month, day, year = int(m["mm"]), int(m["dd"]), m["yy"]
        year = (f"20{year}" if year and len(year) == 2 else year) or None
    else:
        month = _MONTHS[m["mon"] or m["mon2"]]
        day = int(m["day"] or m["day2"])
        year = m["year"] or m["year2"]
    try:
        if year is not None:
            return date(int(year), month, day)
        found = date(today.year, month, day)
        return found if found >= today else date(today.year + 1, month, day)
    except ValueError:
        raise _Refusal(f"{m[0]!r} is not a date") from None


def _contract_expiry(m: re.Match[str], ctx: _Context) -> str:
    g = m.groupdict()
    within = "today" if g["today"] else f"within {1 if g['tomorrow'] else int(g['d'])} days"
    if g.get("strike") is None:
        if ctx.symbols:
            # a rule on AAPL sees AAPL's ticks, not those of its option contracts
            raise _Refusal(
                "a rule on a stock does not see its options: name the contract "
                "('my AAPL Jan 16 200 calls') or say 'any of my options'"
            )
        ctx.scope = "any symbol"
        return f"expiry {within}"
    if len(ctx.symbols) != 1:
        raise _Refusal("name the one symbol of the contract ('my AAPL Jan 16 200 calls')")
    if not any(g[name] for name in ("mon", "mon2", "mm", "iso")):
        raise _Refusal(
            "the contract needs its expiry date to be named ('my AAPL Jan 16 200 calls')"
        )
    expiry = _date(m, ctx.now.astimezone(EXCHANGE_TZ).date())
    strike = round(float(g["strike"]) * 1000)
    if not 0 < strike < 10**8:
        raise _Refusal(f"no option has the strike {g['strike']}")
    right = "C" if g["right"].startswith("c") else "P"
    ctx.scope = f'"{ctx.symbols[0]:<6}{expiry:%y%m%d}{right}{strike:08d}"'
    return f"expiry {within}"


_EXPIRE_VERB = r"(?:expire|expires|expiring|are expiring|is expiring|will expire|expire on)"
_EXPIRE_WHEN = (
    rf"{_EXPIRE_VERB} (?:(?:in|within) (?P<d>\d+) (?:trading )?days?|(?P<today>today)|"
    r"(?P<tomorrow>tomorrow))"
)


_UP_MOVES = _words(
    "up rises rise gains gain jumps jump climbs climb rallies rally spikes spike surges surge "
    "pops pop rips soars runs"
) | {"is up", "goes up", "moves up", "trades up"}
_DOWN_MOVES = _words(
    "down drops drop falls fall dips dip sinks sink slides slide declines decline loses lose "
    "tanks tank plunges plunge plummets craters slips"
)
_DOWN_PHRASES = {"is down", "goes down", "moves down", "trades down"}
_MOVE = "|".join(sorted(_UP_MOVES | _DOWN_MOVES | _DOWN_PHRASES, key=len, reverse=True))

# Conditions, tried in this order; each consumes the words it matched.
_CONDITIONS: list[tuple[str, Build]] = [
    (rf"(?:(?:any|big|large|huge|massive|whale|unusual|giant) )?"
     rf"(?:(?P<mny>out of the money|in the money|at the money|otm|itm|atm) )?"
     rf"(?:(?P<right>calls?|puts?) )?(?:options? )?(?P<kind>sweeps?|block trades?|blocks?)"
     rf"(?: (?:of|over|above|worth|at least|bigger than|larger than|greater than|more than|>=?)"
     rf"(?: (?:over|more than))? (?P<m>{MONEY})(?: (?:in )?(?:premium|notional))?)?", _sweep),
    (rf"(?:(?P<mny>out of the money|in the money|at the money|otm|itm|atm) )?"
     rf"(?:(?P<right>calls?|puts?) )?(?:options? )?(?:prints?|trades?|orders?|flow|buys?)? ?"
     rf"(?:with )?(?:a )?premium (?:of )?{ABOVE} (?P<m>{MONEY})", _premium),
    (rf"(?:(?P<mny>out of the money|in the money|at the money|otm|itm|atm) )?"
     # "trades over 1,000" alone is a price: a print needs "call", "put" or "option"
     rf"(?:(?P<right>calls?|puts?) (?:options? )?|options? )(?:prints?|trades?|orders?|buys?) "
     rf"(?:of |worth )?{ABOVE} (?P<m>{MONEY})(?: (?:in )?premium)?", _premium),
    (rf"put[/ -](?:to[- ])?call (?:premium )?ratio (?:of )?{CMP}(?P<n>{N})"
     rf"(?: (?:in|over|within) (?P<dur>{DUR}))?", _put_call),
    (rf"unusual (?:options? )?(?:volume|activity)(?: (?:of |at )?(?P<x>{N}) ?(?:x|times)"
     rf"(?: (?:the )?(?:open interest|oi))?)?", _unusual),
    (rf"(?:same contract |contract )?(?:gets )?(?:hit|hits|bought|traded|printed|repeated hits)"
     rf" (?P<c>\d+|two|three|four|five|ten) (?:times )?(?:in|within) (?P<dur>{DUR})", _repeated),
    (rf"(?:iv|implied volatility|implied vol|vol) ?rank (?:is |goes |gets |hits )?"
     rf"{ABOVE} (?P<n>{N}%?)(?: (?:over|lookback|on|in) (?:the )?(?:last |past )?"
     rf"(?:(?P<days>\d+) (?:trading )?days|(?P<span>year|1 year|52 weeks|6 months)))?", _iv_rank),
    (rf"(?:the )?(?:iv|implied volatility|implied vol) (?P<verb>crush of|crush|crushes|collapses|"
     rf"drops by|drops|falls|drop|fall|down|sinks|declines|dips|rises|jumps|spikes|up|climbs|"
     rf"gains|pops|surges) (?:by )?(?:more than |over )?(?P<n>{N})% (?:or more )?"
     rf"(?:in|within|over) (?P<dur>{DUR})", _iv_change),
    (rf"(?P<g>iv|implied volatility|implied vol|delta|gamma|theta|vega) {CMP}(?P<n>{N}%?)", _greek),
    (rf"(?:the )?(?:bid[- /]ask |bid ask )?spread (?:widens |gets |goes |is |blows out )?"
     rf"(?:to |beyond |wider than |{ABOVE} )?(?P<n>{N})%", _spread),
    (r"(?:a )?(?P<gd>golden|death) cross", _golden),
    (rf"(?:the )?(?P<p>\d+)[ -]?(?:(?P<pu>day|period|bar|week|hour|minute)s? )?(?:{MA} )?"
     rf"{CROSS}(?P<q>\d+)(?: (?:day|period|bar|week|hour|minute)s?(?: {MA})?| {MA})", _sma_cross),
    (rf"{SUBJECT}{CROSS}(?:(?P<p>\d+)[ -]?(?:(?P<pu>day|period|bar|week|hour|minute)s? )?)?"
     rf"(?P<ma>{MA})(?: \( (?P<p2>\d+) \)| (?P<p2b>\d+))?", _price_sma),
    (rf"{SUBJECT}(?:closes? |goes |breaks |moves |trades |pierces |pokes |is |gets )?"
     rf"(?:above |over |outside |through |below |under |beneath )?(?:the )?"
     rf"(?P<band>upper|lower|top|bottom) (?:bollinger|bb)(?: bands?)?"
     rf"(?: \( (?P<bp>\d+) , (?P<bs>{N}) \))?", _bollinger),
    (rf"(?:(?:(?P<p>\d+)[ -]?(?:(?P<pu>day|period|bar|hour|minute)s? )?)?rsi "
     rf"(?:\( (?P<p2>\d+) \) )?)?(?:is |gets |goes |getting |becomes |turns )?"
     rf"(?P<kind>overbought|oversold)(?: (?:at|above|below|over|under) (?P<n>{N}))?", _rsi_named),
    (rf"(?:(?P<p>\d+)[ -]?(?:(?P<pu>day|period|bar|hour|minute)s? )?)?rsi"
     rf"(?: \( (?P<p2>\d+) \))? (?:{CMP}|{CROSS})(?P<n>{N})", _rsi),
    (r"(?:makes |hits |sets |prints |reaches |at |is at )?(?:a )?(?:fresh |new )"
     r"(?:(?P<n>\d+)[ -]?(?P<u>days?|weeks?|months?|years?|bars?) )?(?P<hl>high|low)s?",
     _new_extreme),
    (r"(?:makes |hits |sets |prints |reaches |at |is at )?(?:a )?(?P<n>\d+)[ -]?"
     r"(?P<u>days?|weeks?|months?|years?|bars?) (?P<hl>high|low)s?", _new_extreme),
    (rf"volume (?:spikes?|surges?|jumps|explodes|is|goes|hits)(?: (?:to |over |above )?(?P<x>{N})"
     rf" ?(?:x|times)(?: (?:the )?(?:(?P<p>\d+)[ -]?(?:bar|period|day)s? )?"
     rf"(?:average|avg|normal|usual)(?: volume)?)?)?", _volume_spike),
    (rf"(?P<x>{N}) ?(?:x|times) (?:the )?(?:(?P<p>\d+)[ -]?(?:bar|period|day)s? )?"
     rf"(?:average|avg|normal|usual) volume", _volume_spike),
    (r"(?:stop (?:me )?out (?:at |if (?:it |i'm |i am )?(?:hits? |reaches |is )?)?"
     r"|(?:(?:with|set|put|use) )?(?:an? )?stop[- ]?loss (?:at|of) "
     rf"|(?P<take>take) (?:profits?|gains?) (?:at|of) )(?P<n>[+-]?{N}%)(?: down| loss)?", _stop),
    (rf"(?:stop (?:me )?out (?:if|when|once) )?(?:{_HOLDER}|{_I_AM} )"
     rf"(?:(?P<gain>{_GAIN})|(?P<loss>{_LOSS})) {_AMOUNT}{_ON_POSITION}", _position_move),
    # a signed level: "my AMZN position gets to -15%" (without the sign, up or down is a guess)
    (rf"{_HOLDER}(?:is |gets |goes )?(?:to |at |hits |reaches )(?P<n>[+-]{N}%|[+-]\$?{N}[kmb]?)",
     _position_signed),
    (rf"(?:{_HOLDER})?(?:unrealized |open |total )?(?P<what>pnl|p&l|p/l|profit and loss)"
     rf"{_ON_POSITION} {CMP}(?P<n>[+-]?{N}%|[+-]?{MONEY})", _position_level),
    (rf"{_HOLDER}(?:unrealized |open |total )?(?P<what>profit|gain|return|loss)"
     rf"{_ON_POSITION} {CMP}(?P<n>[+-]?{N}%|[+-]?{MONEY})", _position_level),
    (rf"{SUBJECT}(?P<dir>{_MOVE}) (?:by )?(?:more than |over |at least )?(?P<n>{N})% "
     rf"(?:or more )?(?:in|within|over|during) (?P<dur>{DUR})", _percent_move),
    (rf"{SUBJECT}{CROSS}(?P<n>{MONEY})", _price_cross),
    (rf"{SUBJECT}{CMP}(?P<n>{MONEY})", _price_level),
]  # fmt: skip

# An option position's expiry, read before the flow filters take "expire within 3 days".
_CONTRACT_CONDITIONS: list[tuple[str, Build]] = [
    (rf"my (?:(?:{DATE}) )?(?P<strike>{N}) ?(?P<right>calls?|puts?|c|p) "
     rf"(?:options? |contracts? )?{_EXPIRE_WHEN}", _contract_expiry),
    (rf"(?:any (?:of )?)?my (?:options?|option positions?|contracts?) {_EXPIRE_WHEN}",
     _contract_expiry),
]  # fmt: skip

_TIMEFRAMES = [
    rf"(?:on|using|with|from|for) (?:the |a )?(?P<n>\d+)? ?(?P<u>{UNIT}) "
    r"(?:chart|timeframe|time frame|candles?|candlesticks?|bars?)",
    r"(?:on|using) (?:the |a )?(?P<q>\d+[smhd]|daily|hourly|weekly)"
    r"(?: chart| timeframe| candles| bars)?",
    rf"(?P<n>\d+) ?(?P<u>{UNIT}) (?:chart|timeframe|candles?|candlesticks?)",
    r"(?P<n>\d+)[ -]?(?P<u>minute|min|hour|hr)s? (?=rsi|bollinger|volume)",
    r"(?P<q>daily|hourly|weekly)(?: chart| candles)?",
]

_EXTRA = (
    r"(?:pre-?market|pre market|premarket|after-?hours|after hours|post-?market|post market"
    r"|extended hours|extended session)"
)
_OPTIONS: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (r"(?:with |at |as )?(?:a )?(?P<p>low|medium|normal|high|critical|top|urgent) priority",
     lambda m: "priority " + {"normal": "medium", "top": "critical", "urgent": "high"}.get(
         m["p"], m["p"])),
    (r"(?:it'?s )?(?:urgent|asap)", lambda m: "priority high"),
    (rf"(?:at most|no more than|not more than|max|maximum) (?:once|one alert) "
     rf"(?:an?|per|every) (?P<d>{DUR}|{UNIT})", lambda m: f"cooldown {_duration(m['d'])}"),
    (rf"(?:with )?(?:a )?cooldown (?:of )?(?P<d>{DUR})", lambda m: f"cooldown {_duration(m['d'])}"),
    (rf"(?:wait|quiet|silence|snooze) (?:for )?(?P<d>{DUR}) (?:between|after)(?: alerts)?",
     lambda m: f"cooldown {_duration(m['d'])}"),
    (r"(?:just |only )?(?:once|one time|a single time)(?: only)?", lambda m: "once"),
    (r"every time|each time|repeatedly", lambda m: "recurring"),
    # sessions: "extended" runs from pre-market to the end of post-market, so "including
    # pre-market" also takes in post-market; no session value is pre-market alone
    (r"(?:only )?(?:during|in|within) (?:the )?(?:regular|normal|market|trading|open|core) "
     r"(?:market |trading )?(?:hours|session)(?: only)?|(?:regular|normal|market|trading|core) "
     r"(?:market |trading )?hours only|only (?:during|in) (?:regular |market |trading )?hours"
     r"|(?:while|when) the market is open|rth(?: only)?", lambda m: "regular hours"),
    (rf"(?:including|incl|plus|with|also|even) (?:the )?{_EXTRA}(?: (?:and|or|&) "
     rf"(?:the )?{_EXTRA})?(?: (?:trading|hours|session))?(?: too| as well)?"
     r"|(?:during |in )?(?:the )?extended (?:trading )?(?:hours|session)(?: too| as well)?",
     lambda m: "extended hours"),
    (r"24/7|around the clock|any time of (?:the )?day|at any hour|day and night|all sessions|"
     r"in any session", lambda m: "sessions any"),
]  # fmt: skip

# ---------------------------------------------------------------- flow filters in words

_DAYS_OR_WEEKS = r"(?P<n>\d+) (?P<u>days?|weeks?)"
_EXPIRING = r"(?:expiring|expire|expires|that expire|with expiry|with expiration|expiration)"
_TO_EXPIRY = r"(?:to|until|till|before) (?:expiry|expiration)"


def _days(m: re.Match[str]) -> int:
    return int(m["n"]) * (7 if m["u"].startswith("week") else 1)


def _dte_at_most(m: re.Match[str]) -> str:
    return f"dte <= {_days(m)}"


def _dte_below(m: re.Match[str]) -> str:
    return f"dte < {_days(m)}"


def _dte_above(m: re.Match[str]) -> str:
    return f"dte {'>=' if m['least'] else '>'} {_days(m)}"


def _dte_compare(m: re.Match[str]) -> str:
    sign = {"under": "<", "below": "<", "less than": "<", "fewer than": "<", "<": "<",
            "<=": "<=", "at most": "<=", "over": ">", "above": ">", "more than": ">",
            ">": ">", ">=": ">=", "at least": ">="}[m["cmp"]]  # fmt: skip
    return f"dte {sign} {m['n']}"


def _calendar_expiry(m: re.Match[str]) -> str:
    raise _Refusal(
        f"'{m[0]}' names a date, but the flow filters count the days from each print to its "
        "expiry: say 'expiring this week' or 'expiring within 5 days' (dte <= 5)"
    )


def _contracts(number: str) -> int:
    return round(float(number[:-1]) * 1000) if number.endswith("k") else round(float(number))


_SIDES = {"ask": "ask", "offer": "ask", "bid": "bid", "mid": "mid", "midpoint": "mid"}

# Flow filters, read before the conditions so that "over 500 contracts" is never a price;
# they go after the one flow phrase of the sentence.
_FILTERS: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (rf"{_EXPIRING} this week", lambda m: "expiring this week"),
    (rf"{_EXPIRING} (?:this|next) (?:week|month|friday)|{_EXPIRING} (?:on |by )?"
     rf"(?:{_WEEKDAY}|{DATE})", _calendar_expiry),
    (r"(?:0 ?dte|zero dte|same[- ]day expiry|expiring today)", lambda m: "dte <= 0"),
    (r"expiring tomorrow", lambda m: "dte >= 1 dte <= 1"),
    (rf"{_EXPIRING} (?:within (?:the next )?|in the next ){_DAYS_OR_WEEKS}", _dte_at_most),
    (rf"{_EXPIRING} in {_DAYS_OR_WEEKS} or (?:less|sooner|fewer)", _dte_at_most),
    (rf"{_EXPIRING} in (?:less than|under|fewer than) {_DAYS_OR_WEEKS}", _dte_below),
    (rf"with (?:less than|under|fewer than) {_DAYS_OR_WEEKS} {_TO_EXPIRY}", _dte_below),
    (rf"{_EXPIRING} in (?:more than|over|(?P<least>at least)) {_DAYS_OR_WEEKS}", _dte_above),
    (rf"with (?:more than|over|(?P<least>at least)) {_DAYS_OR_WEEKS} {_TO_EXPIRY}", _dte_above),
    (rf"{_EXPIRING} (?:in )?between (?P<a>\d+) and (?P<b>\d+) days|with (?P<a2>\d+) to "
     rf"(?P<b2>\d+) days {_TO_EXPIRY}",
     lambda m: f"dte >= {m['a'] or m['a2']} dte <= {m['b'] or m['b2']}"),
    (r"(?:with )?dte (?:is |of )?(?P<cmp>under|below|less than|fewer than|<=?|at most|over|"
     r"above|more than|>=?|at least) (?P<n>\d+)", _dte_compare),
    (r"(?P<cmp>under|below|less than|fewer than|over|above|more than|at least) (?P<n>\d+) ?dte",
     _dte_compare),
    (r"(?P<n>\d+) ?dte or (?:less|fewer)", lambda m: f"dte <= {m['n']}"),
    (r"(?:of |for |with )?(?:(?P<least>at least|>=)|over|more than|above|>) (?P<n>\d+k?) "
     r"(?:contracts|lots)",
     lambda m: f"size {'>=' if m['least'] else '>'} {_contracts(m['n'])}"),
    (r"(?:of |for |with )?(?P<n>\d+k?) (?:contracts|lots) or more",
     lambda m: f"size >= {_contracts(m['n'])}"),
    (r"(?:with )?size (?:of )?(?:(?P<least>at least|>=)|over|above|more than|>) (?P<n>\d+k?)",
     lambda m: f"size {'>=' if m['least'] else '>'} {_contracts(m['n'])}"),
    (r"(?:(?:bought|paid|traded|filled|executed|printed|sold) )?"
     r"(?P<w>at|on|above|below) (?:the )?(?P<s>ask|offer|bid|midpoint|mid)",
     lambda m: f"{'at' if m['w'] == 'on' else m['w']} {_SIDES[m['s']]}"),
    (r"(?:hitting|hit|hits|sold into) (?:the )?bid", lambda m: "at bid"),
    (r"(?:lifting|lifts|lifted|taking|takes|took) (?:the )?(?:ask|offer)", lambda m: "at ask"),
    # the sweep and block phrases read "otm call sweeps" themselves; this is the word elsewhere
    (r"(?:that are |which are )?(?P<mny>out of the money|in the money|"
     r"at the money|otm|itm|atm)", lambda m: _MONEYNESS[m["mny"]]),
]  # fmt: skip

# After the conditions, the words left that say which contracts: they join the flow phrase.
_LEFT_RIGHT = r"(?P<right>calls?|puts?)(?: options?| contracts?)?"

# ---------------------------------------------------------------- the rule's end


def _day_end(day: date) -> datetime:
    """Midnight at the end of ``day`` in New York, where the market's days are."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=EXCHANGE_TZ)


def _today(now: datetime) -> date:
    return now.astimezone(EXCHANGE_TZ).date()


def _until_weekday(m: re.Match[str], now: datetime) -> datetime:
    if m["next"]:
        raise _Refusal(f"'{m[0]}' could be this week's or next week's: give the date")
    today = _today(now)
    ahead = (_WEEKDAYS[m["wd"]] - today.weekday()) % 7
    if ahead == 0:
        raise _Refusal(f"today is {m['wd']}: say 'today only' or give the date")
    return _day_end(today + timedelta(days=ahead))


def _until_week_end(m: re.Match[str], now: datetime) -> datetime:
    today = _today(now)
    if today.weekday() > 4:
        raise _Refusal("the trading week is over: give the date")
    return _day_end(today + timedelta(days=4 - today.weekday()))


def _until_close(m: re.Match[str], now: datetime) -> datetime:
    bounds = session_bounds(_today(now))
    if bounds is None or now >= bounds.close:
        raise _Refusal("the market is not open today: give the date")
    return bounds.close


def _until_date(m: re.Match[str], now: datetime) -> datetime:
    day = _date(m, _today(now))
    if day < _today(now):
        raise _Refusal(f"{m['until']} {day:%Y-%m-%d} is past")
    return _day_end(day)


def _for_next(m: re.Match[str], now: datetime) -> datetime:
    try:
        return now + timedelta(seconds=_seconds(m["n"] or "1", m["u"]))
    except OverflowError:
        raise _Refusal(f"'{m[0]}' ends after the last date a rule may have") from None


_UNTIL = r"(?P<until>until|till|til|through|thru|up to|good (?:until|till|through))"
_SHORT_UNIT = (
    r"(?:seconds?|secs?|minutes?|mins?|hours?|hrs?|h|days?|d|weeks?|wks?)"  # no months: not fixed
)

# The rule's end (``expires``): dates and days are New York's, the market's.
_EXPIRES: list[tuple[str, Callable[[re.Match[str], datetime], datetime]]] = [
    (r"(?:(?:for |just for |only for )?today only|only (?:for )?today|just (?:for )?today|"
     r"for today|for the rest of (?:the day|today)|(?:until|till|through) (?:the )?end of "
     r"(?:the )?day|until eod|through today)", lambda m, now: _day_end(_today(now))),
    (r"(?:until|till|through) (?:the )?end of tomorrow|(?:until|till|through) tomorrow",
     lambda m, now: _day_end(_today(now) + timedelta(days=1))),
    (r"(?:until|till|through|before|by) (?:the )?(?:market close|close|closing bell|bell|"
     r"market closes)",
     _until_close),
    (rf"{_UNTIL} (?:the )?end of (?:the |this )?week|(?:for )?this week only|"
     r"for the rest of the week", _until_week_end),
    (rf"{_UNTIL} (?:the )?(?:end of )?(?:(?P<next>next )|this )?(?P<wd>{_WEEKDAY})",
     _until_weekday),
    (rf"{_UNTIL} (?:the )?(?:end of )?{DATE}", _until_date),
    (rf"for the next (?:(?P<n>{N}|an?|half an?) ?)?(?P<u>{_SHORT_UNIT})\b", _for_next),
    (rf"for (?P<n>{N}|an?) more (?P<u>{_SHORT_UNIT})\b", _for_next),
]  # fmt: skip


def _expires(at: datetime) -> str:
    return f"expires {at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


_FILLER = re.compile(
    r"(?:(?:hey|hi|ok|okay|yo) )?(?:please )?(?:(?:can|could|would) you )?(?:please )?"
    r"(?:(?:alert|notify|ping|tell|warn|text|email|message|buzz|remind|wake) me"
    r"|let me know|i want to know|i'?d like to know|i want an alert|give me an? (?:alert|heads up)"
    r"|send me an? (?:alert|notification)|(?:set|create|add|make) (?:up )?an? (?:alert|rule)"
    r"|watch for|heads up|alert)(?: please)?"
    r"(?: (?:if|when|whenever|as soon as|in case|the moment|for|that|on))?"
)

_VOCABULARY = _words(
    "rsi iv ivr sma ema ma dma moving average bollinger bb delta gamma theta vega spread "
    "sweep sweeps block blocks premium volume rank high low cross golden death call calls put "
    "puts ratio oversold overbought percent chart candles minute minutes hour hourly daily "
    "weekly day days above below over under crosses breaks "
    # positions, the rule's end, sessions, contracts: left over, they mean a misreading
    "my position positions pnl p&l p/l profit loss stop stop-loss today tomorrow tonight "
    "until till through week weeks month months year years next expiring expire expires "
    "expiry expiration dte contracts ask bid mid offer strike market session sessions hours "
    "premarket pre-market extended after-hours monday tuesday wednesday thursday friday "
    "saturday sunday deep price > < >= <= "
    # rule text's own option words: left over, the text was rule text with a mistake
    "user id name channels version active inactive cooldown priority sessions watchlist symbol "
    "close closes open opens before"
)

# "4pm", "9:30am", "noon": the rule's end is a day's end, the close or a span, never a clock time
_TIME_OF_DAY = re.compile(r"\d{1,2}(?::\d{2})?(?:am|pm)|am|pm|noon|midnight|o'clock")

_FILLER_ANYWHERE = re.compile(r"\b(?:as soon as|the moment|in case|if|when|whenever)\b")


@cache
def _whole_words(pattern: str) -> re.Pattern[str]:
    # matches start and end at word edges, so "on" is never the start of "once"
    return re.compile(rf"(?<![^ ])(?:{pattern})(?![^ ])")


class _Sentence:
    """The sentence as lowercased tokens, with the tokens each match consumes."""

    def __init__(self, text: str) -> None:
        self.originals: list[str] = []
        norms: list[str] = []
        self.symbols: list[str] = []
        raw = _TOKEN.findall(text)
        for i, token in enumerate(raw):
            ticker = _TICKER.fullmatch(token) or _CASHTAG.fullmatch(token)
            if ticker and (token.startswith("$") or ticker[1] not in _NOT_TICKERS):
                self.symbols.append(ticker[1].upper())
                # "on AMD", "for NVDA": the preposition belongs to the symbol
                if norms and norms[-1] in ("on", "for", "in", "about", "of"):
                    norms[-1] = ""
                continue
            norm = token.lower().replace("’", "'")
            if norm.endswith("'s"):
                norm = norm[:-2]
            next_word = raw[i + 1].lower() if i + 1 < len(raw) else ""
            number = re.fullmatch(r"(\$?)([+-]?[\d,]*\.?\d+)([a-z%]*)", norm)
            if number:
                digits = number[2].replace(",", "")
                suffix = number[3]
                suffix = {"pct": "%", "mm": "m", "bn": "b"}.get(suffix, suffix)
                norm = digits + suffix
                if not suffix and next_word in _SCALES and next_word not in ("m", "b", "k"):
                    norm += _SCALES[next_word]
                    raw[i + 1] = ""
                elif not suffix and next_word in ("percent", "pct", "%"):
                    norm += "%"
                    raw[i + 1] = ""
            elif norm in _NUMBER_WORDS and next_word and re.match(r"\d|%", next_word) is None:
                if next_word in ("times", "percent") or re.match(UNIT + "$", next_word):
                    norm = _NUMBER_WORDS[norm]
            elif norm == "" or token == "":
                continue
            # "5-minute", "50-day": the number and its unit as two words
            for part in re.split(r"(?<=\d)-(?=[a-z])", norm):
                self.originals.append(token)
                norms.append(part)
        keep = [(o, n) for o, n in zip(self.originals, norms, strict=True) if n]
        self.originals = [o for o, _ in keep]
        self.norms = [n for _, n in keep]
        self.used = [False] * len(self.norms)

    def take(
        self, pattern: str | re.Pattern[str], *, start_only: bool = False
    ) -> re.Match[str] | None:
        """The first match of ``pattern`` on whole, unused words; its words become used."""
        taken = self.take_span(pattern, start_only=start_only)
        return None if taken is None else taken[0]

    def take_span(
        self, pattern: str | re.Pattern[str], *, start_only: bool = False
    ) -> tuple[re.Match[str], int, int] | None:
        """As ``take``, with the indexes of the first word taken and of the word after the last.

        Used words leave the view, so the words around them meet: "RSI on the 1 hour chart
        goes above 75" reads as "RSI goes above 75" once the chart words are taken, and "call
        sweeps expiring within 30 days over $1M" as "call sweeps over $1M".
        """
        compiled = _whole_words(pattern if isinstance(pattern, str) else pattern.pattern)
        view, offsets = self._view()
        finder = [compiled.match(view)] if start_only else compiled.finditer(view)
        for match in finder:
            if match is None or match.end() == match.start():
                continue
            taken = [i for start, i in offsets if match.start() <= start < match.end()]
            for index in taken:
                self.used[index] = True
            return match, taken[0], taken[-1] + 1
        return None

    def _view(self) -> tuple[str, list[tuple[int, int]]]:
        """The unused words as one string, and each one's offset in it with its index."""
        words, offsets, offset = [], [], 0
        for index, (norm, used) in enumerate(zip(self.norms, self.used, strict=True)):
            if not used:
                words.append(norm)
                offsets.append((offset, index))
                offset += len(norm) + 1
        return " ".join(words), offsets

    def unused(self) -> tuple[str, ...]:
        return tuple(
            original
            for original, norm, used in zip(self.originals, self.norms, self.used, strict=True)
            if not used and norm not in _NOISE
        )

    def between(self, end: int, start: int) -> list[str]:
        """The words from index ``end`` up to ``start``."""
        return self.norms[end:start]


def read_english(text: str, *, now: datetime | None = None) -> Reading:
    """The formal rule text a sentence says; EnglishRuleError when it names no condition.

    ``now`` (aware; default the clock) is what "today only" and "until Friday" count from.
    """
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None:
        raise ValueError("now must carry its timezone")
    sentence = _Sentence(text)
    # a leading "once" means "when"; elsewhere it is the mode (below)
    sentence.take(r"once", start_only=True)
    filler = False
    while sentence.take(_FILLER) is not None:
        filler = True
    every = sentence.take(
        r"any (?:stock|symbol|ticker|name)s?|every (?:stock|symbol|ticker)|anything"
    )
    context = _Context(now, list(dict.fromkeys(sentence.symbols)))
    for pattern in _TIMEFRAMES:
        match = sentence.take(pattern)
        if match is not None:
            groups = match.groupdict()
            quick = groups.get("q")
            if quick is not None:
                context.timeframe = {"daily": "1d", "hourly": "1h", "weekly": "7d"}.get(
                    quick, quick
                )
            else:
                context.timeframe = _timeframe(groups.get("n"), groups["u"])
            break
    options: list[str] = []
    refusals: list[str] = []
    for option, build_option in _OPTIONS:
        match = sentence.take(option)
        if match is not None:
            options.append(build_option(match))
    for pattern, end in _EXPIRES:
        while (match := sentence.take(pattern)) is not None:
            try:
                options.append(_expires(end(match, now)))
            except _Refusal as refusal:
                refusals.append(str(refusal))
    found: list[tuple[int, int, str, bool]] = []
    _conditions(sentence, _COMPILED_CONTRACTS, context, found, refusals)
    filters: list[str] = []
    for pattern, build_filter in _FILTERS:
        while (match := sentence.take(pattern)) is not None:
            try:
                filters.append(build_filter(match))
            except _Refusal as refusal:
                refusals.append(str(refusal))
    _conditions(sentence, _COMPILED, context, found, refusals)
    found.sort()
    flows = [index for index, item in enumerate(found) if item[3]]
    if flows and any(item[2].startswith("price ") for item in found):
        # "call sweeps that ... over $1M": the amount may be the premium, read as a price
        refusals.append("a price level and option flow in one sentence: write two rules")
    if len(flows) == 1:
        found[flows[0]] = (
            *found[flows[0]][:2],
            _with_filters(sentence, found[flows[0]][2], filters, refusals),
            True,
        )
    elif filters:
        refusals.append(
            f"the option filters ({' '.join(filters)}) need one flow condition to go with: "
            "sweeps, blocks, premium over N, ..."
        )
    while sentence.take(_FILLER_ANYWHERE) is not None:
        pass
    scope = context.scope or _scope(sentence)
    if scope is None and every is not None:
        scope = "any symbol"
    parts: list[str] = []
    for index, (first, _end, phrase, _flow) in enumerate(found):
        if index:
            gap = sentence.between(found[index - 1][1], first)
            parts.append("or" if "or" in gap else "and")
        parts.append(phrase)
    understood = " ".join(p for p in [scope or "", *parts, *options] if p)
    unused = sentence.unused()

    def refuse(reason: str, *, english: bool = True) -> EnglishRuleError:
        return EnglishRuleError(
            _not_understood(understood, unused, reason),
            english=english,
            understood=understood,
            unused=unused,
        )

    if refusals:
        raise refuse("; ".join(refusals))
    if not found:
        raise refuse("no condition (a price level, a % move, RSI, ...)", english=filler)
    if scope is None:
        raise refuse("no symbol (write it in capitals: AAPL)")
    # A rule word left over means a phrase was misread (RSI taken for a price level):
    # refusing is better than a rule that watches the wrong thing.
    left = [
        word
        for word in unused
        if word.lower().strip("$%") in _VOCABULARY or _TIME_OF_DAY.fullmatch(word.lower())
    ]
    if left:
        raise refuse(f"not sure what {' '.join(left)!r} means here")
    return Reading(" ".join([scope, *parts, *options]), unused)


def _conditions(
    sentence: _Sentence,
    conditions: list[tuple[re.Pattern[str], Build]],
    context: _Context,
    found: list[tuple[int, int, str, bool]],
    refusals: list[str],
) -> None:
    """Take every phrase of ``conditions``: (first word, word after, rule text, is flow)."""
    for condition, build in conditions:
        while (taken := sentence.take_span(condition)) is not None:
            match, first, end = taken
            try:
                phrase = build(match, context)
            except _Refusal as refusal:
                refusals.append(str(refusal))
                continue
            found.append((first, end, phrase, build in _FLOW))


def _with_filters(sentence: _Sentence, phrase: str, filters: list[str], refusals: list[str]) -> str:
    """The flow phrase with the sentence's filters and the contract words left around it."""
    prefix: list[str] = []
    while (match := sentence.take(_LEFT_RIGHT)) is not None:
        right = _RIGHT[match["right"]]
        if right in prefix or re.search(rf"\b{right}\b", phrase):
            continue
        if prefix or re.search(r"\b(?:call|put)\b", phrase):
            refusals.append("both calls and puts: write two rules, or neither word")
        prefix.append(right)
    return " ".join([*prefix, phrase, *filters])


def _scope(sentence: _Sentence) -> str | None:
    symbols = list(dict.fromkeys(sentence.symbols))
    if not symbols:
        return None
    if len(symbols) == 1:
        return symbols[0]
    return "watchlist " + ",".join(symbols)


def _not_understood(understood: str, unused: tuple[str, ...], missing: str) -> str:
    parts = [f"could not read this as a rule: {missing}", f"understood: {understood or 'nothing'}"]
    if unused:
        parts.append(f"words not used: {' '.join(unused)}")
    parts.append("write rule text instead, e.g. 'AAPL price < 180' (docs/rules.md, Rule text)")
    return "; ".join(parts)


def parse_english(
    text: str,
    *,
    user_id: str | None = None,
    rule_id: str | None = None,
    now: datetime | None = None,
) -> English:
    """The rule a sentence describes, the canonical text of it and the words not used."""
    reading = read_english(text, now=now)
    try:
        rule = parse_rule(reading.formal, user_id=user_id, rule_id=rule_id)
    except RuleTextError as exc:
        raise EnglishRuleError(
            f"read as {reading.formal!r}, which is not a valid rule: {exc.reason}",
            understood=reading.formal,
            unused=reading.unused,
        ) from None
    return English(rule, reading.formal, format_rule(rule), reading.unused)


@dataclass(frozen=True)
class Understood:
    """A rule read from what a person typed: rule text, or else a plain-English sentence.

    ``canonical`` and ``unused`` are set only for a sentence: the rule text it was read as,
    and the words nothing used, which every caller shows so a misreading is visible.
    """

    rule: Rule
    canonical: str | None = None
    unused: tuple[str, ...] = ()


def understand(
    text: str,
    *,
    user_id: str | None = None,
    rule_id: str | None = None,
    now: datetime | None = None,
) -> Understood:
    """The rule of ``text``: rule text first, then plain English (dates counted from ``now``).

    Raises the rule text's error (with its caret) when the text does not read as English at
    all, and an ``EnglishRuleError`` that names both readings when it does.
    """
    try:
        return Understood(parse_rule(text, user_id=user_id, rule_id=rule_id))
    except RuleTextError as formal_error:
        try:
            english = parse_english(text, user_id=user_id, rule_id=rule_id, now=now)
        except EnglishRuleError as exc:
            if not exc.english:
                raise formal_error from None
            where = str(formal_error).splitlines()[0].removeprefix("rule text: ").rstrip(":")
            both = EnglishRuleError(
                f"{exc}; as rule text: {where}", understood=exc.understood, unused=exc.unused
            )
            both.formal = formal_error
            raise both from None
        return Understood(english.rule, english.canonical, english.unused)


_COMPILED = [(_whole_words(pattern), build) for pattern, build in _CONDITIONS]
_COMPILED_CONTRACTS = [(_whole_words(p), build) for p, build in _CONTRACT_CONDITIONS]
_FLOW: frozenset[Build] = frozenset((_sweep, _premium, _unusual, _repeated, _put_call))
