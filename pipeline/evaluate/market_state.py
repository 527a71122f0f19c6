"""What the rules of one symbol need to remember about its market, and nothing more.

Each window keeps only what its longest user needs: the price extremes over each requested
``window_seconds`` (monotonic deques), IV history as far back as the longest IV-change window,
one closing IV per day for the longest IV-rank lookback, and flow prints as far back as the
longest flow window. Windows are shared by every rule that asks for the same length and are
dropped when the last one goes (``acquire`` / ``release``).

Flow windows (``flow_repeated_hits``, ``put_call_premium_ratio``) are kept incrementally: one
``FlowWindow`` per (window length, filter set) holds the prints that passed the filters with
their premium per right and their number per contract, adding each print once and evicting it
once, so a print costs constant work per distinct window whatever the window's length. Their
reads give exactly what scanning the retained prints (``flow``) gives; when they cannot (prints
out of ts order, a read older than the window's last eviction) the read scans instead.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple, TypeVar

from pipeline.evaluate.indicators import SymbolIndicators
from pipeline.evaluate.specs import FlowFilters
from pipeline.messages import OptionsFlow, Tick, derived_fields

_K = TypeVar("_K")


@dataclass(slots=True)
class ExtremaWindow:
    """Lowest and highest price within the last ``seconds`` (the current event included)."""

    seconds: int
    lows: deque[tuple[datetime, float]] = field(default_factory=deque)
    highs: deque[tuple[datetime, float]] = field(default_factory=deque)

    def add(self, ts: datetime, price: float) -> None:
        while self.lows and self.lows[-1][1] >= price:
            self.lows.pop()
        self.lows.append((ts, price))
        while self.highs and self.highs[-1][1] <= price:
            self.highs.pop()
        self.highs.append((ts, price))
        cutoff = ts - timedelta(seconds=self.seconds)
        while self.lows[0][0] < cutoff:
            self.lows.popleft()
        while self.highs[0][0] < cutoff:
            self.highs.popleft()

    @property
    def low(self) -> float | None:
        return self.lows[0][1] if self.lows else None

    @property
    def high(self) -> float | None:
        return self.highs[0][1] if self.highs else None


# ---------------------------------------------------------------- flow filters


def passes_filters(leaf: FlowFilters, print_: OptionsFlow, underlying_price: float | None) -> bool:
    if not passes_fixed_filters(leaf, print_):
        return False
    if leaf.moneyness is not None:
        spot = print_.underlying_price or underlying_price
        if (
            spot is None
            or moneyness(print_.right, print_.strike, spot, leaf.atm_band_pct) != leaf.moneyness
        ):
            return False
    return True


def passes_fixed_filters(leaf: FlowFilters, print_: OptionsFlow, days: int | None = None) -> bool:
    """Every filter but moneyness (the one that can depend on the spot at the event); ``days``
    to expiry when known."""
    if leaf.right is not None and print_.right != leaf.right:
        return False
    if leaf.sides is not None and print_.side not in leaf.sides:
        return False
    if leaf.min_size is not None and print_.size < leaf.min_size:
        return False
    low, high, this_week = leaf.min_days_to_expiry, leaf.max_days_to_expiry, leaf.expires_this_week
    if low is not None or high is not None or this_week:
        if days is None:
            days = days_to_expiry(print_)
        if low is not None and days < low:
            return False
        if high is not None and days > high:
            return False
        if this_week and not 0 <= days <= 6 - print_.ts.weekday():  # by the print's Sunday
            return False
    return True


def moneyness(right: str, strike: float, spot: float, atm_band_pct: float) -> str:
    """``atm`` within ``atm_band_pct`` of spot; else a call is ``itm`` below spot, a put above."""
    if abs(strike / spot - 1) * 100 <= atm_band_pct:
        return "atm"
    in_the_money = strike < spot if right == "C" else strike > spot
    return "itm" if in_the_money else "otm"


@lru_cache(maxsize=4096)
def _expiry_date(expiry: str) -> date:
    return datetime.fromisoformat(expiry).date()


def days_to_expiry(print_: OptionsFlow) -> int:
    return (_expiry_date(print_.expiry) - print_.ts.date()).days


# ---------------------------------------------------------------- flow windows

# Premiums are summed exactly: a float is n / 2**e for integers n and e (e <= 1074), so a window
# keeps its sums as integers in units of 2**-E, E the finest e it has seen. Adding and evicting
# prints as the window slides then never drifts (a float running sum would, and could flip a
# ratio against its threshold), and a sum read as a float is the exact sum correctly rounded,
# whatever the window's history -- the same float a scan gives. Summing floats in print order
# gives that same value whenever it is exact (whole-dollar premiums, prices in 1/4s...).


class Premium(NamedTuple):
    numerator: int
    exponent: int  # the premium is numerator / 2**exponent


def exact_premium(value: float) -> Premium:
    numerator, denominator = value.as_integer_ratio()
    return Premium(numerator, denominator.bit_length() - 1)


def premium_value(total: int, exponent: int) -> float:
    """An exact sum kept in units of 2**-exponent, correctly rounded (int / int is)."""
    return total / (1 << exponent)


class FlowEntry(NamedTuple):
    """A retained print with what every window needs of it, computed once."""

    ts: datetime
    print_: OptionsFlow
    premium: Premium
    days: int  # calendar days from the print's date to its expiry


FlowKey = tuple[object, ...]


def flow_filter_key(filters: FlowFilters) -> FlowKey:
    """Filter sets that select the same prints have equal keys."""
    return (
        filters.right,
        None if filters.sides is None else frozenset(filters.sides),
        filters.min_size,
        filters.min_days_to_expiry,
        filters.max_days_to_expiry,
        bool(filters.expires_this_week),
        filters.moneyness,
        filters.atm_band_pct if filters.moneyness is not None else None,
    )


@dataclass(slots=True, eq=False)
class FlowFilter:
    """One filter set of a symbol and the windows (by length) that use it."""

    filters: FlowFilters
    windows: dict[int, FlowWindow] = field(default_factory=dict)

    def add(self, entry: FlowEntry) -> None:
        filters = self.filters
        if not passes_fixed_filters(filters, entry.print_, entry.days):
            return
        print_ = entry.print_
        loose = False
        if filters.moneyness is not None:
            if print_.underlying_price:
                spot = print_.underlying_price
                if moneyness(print_.right, print_.strike, spot, filters.atm_band_pct) != (
                    filters.moneyness
                ):
                    return
            else:
                loose = True
        for window in self.windows.values():
            window.add(entry, loose)


Group = tuple[str, float]  # (right, strike): what moneyness depends on besides the spot


@dataclass(slots=True, eq=False)
class FlowWindow:
    """The prints of the last ``seconds`` that pass one filter set: put and call premium sums
    and the number of prints per contract, updated as prints come and go.

    A print without ``underlying_price`` is *loose* under a moneyness filter: whether it passes
    depends on the symbol's last price at the read, so it is kept apart, grouped by (right,
    strike), and decided at each read (the premium sums of the loose prints that pass are
    cached for the last spot read and updated as loose prints come and go).
    """

    seconds: int
    filters: FlowFilters
    span: timedelta = field(init=False)
    horizon: datetime | None = None  # prints before it may have been evicted
    entries: deque[FlowEntry] = field(default_factory=deque)  # in ts order, as the sums below
    exponent: int = 0  # sums are in units of 2**-exponent
    puts: int = 0
    calls: int = 0
    hits: dict[str, int] = field(default_factory=dict)  # contract -> prints
    loose: deque[FlowEntry] = field(default_factory=deque)
    loose_premium: dict[Group, list[int]] = field(default_factory=dict)  # [prints, premium]
    loose_hits: dict[str, Counter[Group]] = field(default_factory=dict)
    loose_spot: float | None = None  # the spot loose_puts / loose_calls are for, None: stale
    loose_puts: int = 0
    loose_calls: int = 0
    # The last premium read (spot, premiums): most reads (of other leaves at the same event, or
    # at the next print when no print came or went) find the same prints. Any change to the
    # window's prints clears it.
    read: tuple[float | None, tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        self.span = timedelta(seconds=self.seconds)

    def add(self, entry: FlowEntry, loose: bool) -> None:
        numerator, exponent = entry.premium
        if exponent > self.exponent:
            self._rescale(exponent)
        premium = numerator << (self.exponent - exponent)
        if loose:
            self._count_loose(entry, premium, 1)
            self.loose.append(entry)
        else:  # _count's add, inline: this runs for each window a print passes
            self.read = None
            print_ = entry.print_
            if print_.right == "P":
                self.puts += premium
            else:
                self.calls += premium
            hits = self.hits
            hits[print_.contract] = hits.get(print_.contract, 0) + 1
            self.entries.append(entry)
        self.evict(entry.ts - self.span)

    def evict(self, cutoff: datetime) -> None:
        """Forget the prints before ``cutoff`` (both deques are in ts order)."""
        if self.horizon is None or cutoff > self.horizon:
            self.horizon = cutoff
        entries, loose = self.entries, self.loose
        while entries and entries[0].ts < cutoff:
            entry = entries.popleft()
            numerator, exponent = entry.premium
            self._count(entry, -(numerator << (self.exponent - exponent)), -1)
        while loose and loose[0].ts < cutoff:
            entry = loose.popleft()
            numerator, exponent = entry.premium
            self._count_loose(entry, -(numerator << (self.exponent - exponent)), -1)

    def _count(self, entry: FlowEntry, premium: int, step: int) -> None:
        self.read = None
        print_ = entry.print_
        if print_.right == "P":
            self.puts += premium
        else:
            self.calls += premium
        count = self.hits.get(print_.contract, 0) + step
        if count:
            self.hits[print_.contract] = count
        else:
            del self.hits[print_.contract]

    def _count_loose(self, entry: FlowEntry, premium: int, step: int) -> None:
        self.read = None
        print_ = entry.print_
        group = (print_.right, print_.strike)
        totals = self.loose_premium.setdefault(group, [0, 0])
        totals[0] += step
        totals[1] += premium
        if not totals[0]:
            del self.loose_premium[group]
        per_contract = self.loose_hits.setdefault(print_.contract, Counter())
        per_contract[group] += step
        if not per_contract[group]:
            del per_contract[group]
            if not per_contract:
                del self.loose_hits[print_.contract]
        if self.loose_spot is not None and self._passes(group, self.loose_spot):
            if print_.right == "P":
                self.loose_puts += premium
            else:
                self.loose_calls += premium

    def _rescale(self, exponent: int) -> None:
        shift, self.exponent = exponent - self.exponent, exponent
        self.puts <<= shift
        self.calls <<= shift
        self.loose_puts <<= shift
        self.loose_calls <<= shift
        for totals in self.loose_premium.values():
            totals[1] <<= shift

    def _passes(self, group: Group, spot: float) -> bool:
        right, strike = group
        return moneyness(right, strike, spot, self.filters.atm_band_pct) == self.filters.moneyness

    def premiums(self, cutoff: datetime, spot: float | None) -> tuple[float, float]:
        """(put, call) premium of the prints from ``cutoff`` on, loose ones judged at ``spot``."""
        entries = self.entries
        if (entries and entries[0].ts < cutoff) or (self.loose and self.loose[0].ts < cutoff):
            self.evict(cutoff)
        elif self.horizon is None or cutoff > self.horizon:
            self.horizon = cutoff
        read = self.read
        if read is not None and read[0] == spot:
            return read[1]
        puts, calls = self.puts, self.calls
        if self.loose_premium and spot is not None:
            if self.loose_spot != spot:
                self.loose_spot, self.loose_puts, self.loose_calls = spot, 0, 0
                for group, (_, premium) in self.loose_premium.items():
                    if self._passes(group, spot):
                        if group[0] == "P":
                            self.loose_puts += premium
                        else:
                            self.loose_calls += premium
            puts += self.loose_puts
            calls += self.loose_calls
        premiums = premium_value(puts, self.exponent), premium_value(calls, self.exponent)
        self.read = (spot, premiums)
        return premiums

    def contract_hits(self, cutoff: datetime, print_: OptionsFlow, spot: float | None) -> int:
        """Prints on ``print_``'s contract from ``cutoff`` on, loose ones judged at ``spot``."""
        self.evict(cutoff)
        hits = self.hits.get(print_.contract, 0)
        groups = self.loose_hits.get(print_.contract)
        if groups and spot is not None:
            hits += sum(count for group, count in groups.items() if self._passes(group, spot))
        return hits


_OPTION_FIELDS = ("iv", "delta", "gamma", "theta", "vega")


@dataclass(slots=True)
class SymbolState:
    symbol: str
    last_price: float | None = None
    previous_price: float | None = None
    last_ts: datetime | None = None
    # Latest known option fields: a tick that omits one keeps the previous value.
    iv: float | None = None
    bid: float | None = None
    ask: float | None = None
    delta: float | None = None
    gamma: float | None = None
    theta: float | None = None
    vega: float | None = None
    # Which of those the job derived (pipeline/evaluate/greeks.py) rather than the feed sent.
    derived: frozenset[str] = frozenset()
    indicators: SymbolIndicators = field(default_factory=SymbolIndicators)
    extrema: dict[int, ExtremaWindow] = field(default_factory=dict)
    extrema_users: Counter[int] = field(default_factory=Counter)
    iv_history: deque[tuple[datetime, float]] = field(default_factory=deque)
    iv_windows: Counter[int] = field(default_factory=Counter)
    daily_iv: deque[tuple[date, float]] = field(default_factory=deque)
    iv_rank_lookbacks: Counter[int] = field(default_factory=Counter)
    flow: deque[FlowEntry] = field(default_factory=deque)
    flow_windows: Counter[int] = field(default_factory=Counter)
    # Incremental flow windows, by filter set then length, and how many leaves use each.
    flow_filters: dict[FlowKey, FlowFilter] = field(default_factory=dict)
    flow_window_users: Counter[tuple[int, FlowKey]] = field(default_factory=Counter)
    # The windows leaves read, by the leaf's identity (value hashes of leaves are slow) and the
    # length (one filter set is read over several); the leaf is kept with its window so that
    # its id cannot be reused while it is here.
    flow_window_of: dict[tuple[int, int], tuple[FlowFilters, FlowWindow]] = field(
        default_factory=dict
    )
    # How many times a window was replaced (``_reset``): a window held since is stale.
    flow_resets: int = 0
    # Adjacent pairs of ``flow`` out of ts order: while there are any, the windows (which evict
    # from the left by ts) are not kept and reads scan ``flow``; they are rebuilt after.
    flow_unordered: int = 0

    # ------------------------------------------------------------ registration

    def acquire_extrema(self, seconds: int) -> None:
        self.extrema_users[seconds] += 1
        self.extrema.setdefault(seconds, ExtremaWindow(seconds))

    def release_extrema(self, seconds: int) -> None:
        if _release(self.extrema_users, seconds):
            del self.extrema[seconds]

    def acquire_iv_window(self, seconds: int) -> None:
        self.iv_windows[seconds] += 1

    def release_iv_window(self, seconds: int) -> None:
        if _release(self.iv_windows, seconds) and not self.iv_windows:
            self.iv_history.clear()

    def acquire_iv_rank(self, days: int) -> None:
        self.iv_rank_lookbacks[days] += 1

    def release_iv_rank(self, days: int) -> None:
        if _release(self.iv_rank_lookbacks, days) and not self.iv_rank_lookbacks:
            self.daily_iv.clear()

    def acquire_flow_window(self, seconds: int, filters: FlowFilters) -> None:
        self.flow_windows[seconds] += 1
        key = flow_filter_key(filters)
        self.flow_window_users[seconds, key] += 1
        group = self.flow_filters.get(key)
        if group is None:
            group = self.flow_filters[key] = FlowFilter(filters)
        if seconds not in group.windows:
            window = group.windows[seconds] = FlowWindow(seconds, filters)
            if not self.flow_unordered:  # else built when the prints are in order again
                self._fill(group, window)

    def release_flow_window(self, seconds: int, filters: FlowFilters) -> None:
        key = flow_filter_key(filters)
        if _release(self.flow_window_users, (seconds, key)):
            group = self.flow_filters[key]
            gone = group.windows.pop(seconds)
            if not group.windows:
                del self.flow_filters[key]
            for leaf_id, (_, window) in list(self.flow_window_of.items()):
                if window is gone:
                    del self.flow_window_of[leaf_id]
        if _release(self.flow_windows, seconds) and not self.flow_windows:
            self.flow.clear()
            self.flow_unordered = 0

    def _fill(self, group: FlowFilter, window: FlowWindow) -> None:
        """Start a window from the retained prints, as a scan of them would read them."""
        windows, group.windows = group.windows, {window.seconds: window}
        for entry in self.flow:
            group.add(entry)
        group.windows = windows

    # ------------------------------------------------------------ events

    def on_tick(self, tick: Tick) -> None:
        self.previous_price, self.last_price, self.last_ts = self.last_price, tick.price, tick.ts
        for window in self.extrema.values():
            window.add(tick.ts, tick.price)
        for name in ("bid", "ask", "delta", "gamma", "theta", "vega"):
            value = getattr(tick, name)
            if value is not None:
                setattr(self, name, value)
        if tick.iv is not None:
            self._on_iv(tick.ts, tick.iv)
        marked = derived_fields(tick)
        if marked or self.derived:
            # A field the tick sent replaces its old value's origin with its own.
            sent = {name for name in _OPTION_FIELDS if getattr(tick, name) is not None}
            self.derived = (self.derived - sent) | marked

    def _on_iv(self, ts: datetime, iv: float) -> None:
        self.iv = iv
        if self.iv_windows:
            self.iv_history.append((ts, iv))
            cutoff = ts - timedelta(seconds=max(self.iv_windows))
            # Keep one observation at or before the cutoff: it is the reference for the window.
            while len(self.iv_history) > 1 and self.iv_history[1][0] <= cutoff:
                self.iv_history.popleft()
        if self.iv_rank_lookbacks:
            day = ts.date()
            if self.daily_iv and self.daily_iv[-1][0] == day:
                self.daily_iv[-1] = (day, iv)
            else:
                self.daily_iv.append((day, iv))
            oldest = day - timedelta(days=max(self.iv_rank_lookbacks) - 1)
            while self.daily_iv[0][0] < oldest:
                self.daily_iv.popleft()

    def on_flow(self, print_: OptionsFlow) -> None:
        if not self.flow_windows:
            return
        flow = self.flow
        entry = FlowEntry(
            print_.ts, print_, exact_premium(print_.effective_premium), days_to_expiry(print_)
        )
        was_ordered = not self.flow_unordered
        if flow and print_.ts < flow[-1].ts:
            self.flow_unordered += 1
        flow.append(entry)
        cutoff = print_.ts - timedelta(seconds=max(self.flow_windows))
        while flow[0].ts < cutoff:
            first = flow.popleft()
            if flow[0].ts < first.ts:
                self.flow_unordered -= 1
        if self.flow_unordered:
            if was_ordered:  # their entries are no longer in ts order: drop them until then
                for group in self.flow_filters.values():
                    for seconds in group.windows:
                        self._reset(group, seconds)
        elif not was_ordered:
            for group in self.flow_filters.values():
                for seconds in group.windows:
                    self._fill(group, self._reset(group, seconds))
        else:
            for group in self.flow_filters.values():
                group.add(entry)

    def _reset(self, group: FlowFilter, seconds: int) -> FlowWindow:
        """An empty window in place of ``group``'s window of ``seconds`` (for the leaves too)."""
        old = group.windows[seconds]
        new = group.windows[seconds] = FlowWindow(seconds, group.filters)
        self.flow_resets += 1
        for leaf_id, (leaf, window) in list(self.flow_window_of.items()):
            if window is old:
                self.flow_window_of[leaf_id] = (leaf, new)
        return new

    # ------------------------------------------------------------ reading

    def flow_premiums(
        self, seconds: int, filters: FlowFilters, ts: datetime
    ) -> tuple[float, float]:
        """(put, call) premium of the retained prints passing ``filters`` with ts in
        ``[ts - seconds, ts]``, moneyness judged with the last price for prints without one."""
        # flow_window's common case, inline: a ratio's window is read at every print.
        found = self.flow_window_of.get((id(filters), seconds))
        if found is not None and found[0] is filters and not self.flow_unordered:
            window: FlowWindow | None = found[1]
        else:
            window = self.flow_window(seconds, filters)
        if window is not None and (not self.flow or self.flow[-1].ts <= ts):
            cutoff = ts - window.span
            if window.horizon is None or cutoff >= window.horizon:
                return window.premiums(cutoff, self.last_price)
        cutoff = ts - timedelta(seconds=seconds)
        puts, calls = 0, 0  # in units of 2**-1074: exact for any float
        for entry in self.flow:
            if cutoff <= entry.ts <= ts and passes_filters(filters, entry.print_, self.last_price):
                numerator, exponent = entry.premium
                if entry.print_.right == "P":
                    puts += numerator << (1074 - exponent)
                else:
                    calls += numerator << (1074 - exponent)
        return premium_value(puts, 1074), premium_value(calls, 1074)

    def flow_hits(self, seconds: int, filters: FlowFilters, print_: OptionsFlow) -> int:
        """Retained prints on ``print_``'s contract passing ``filters`` with ts at or after
        ``print_.ts - seconds`` (later ones included), moneyness as in ``flow_premiums``."""
        window = self.flow_window(seconds, filters)
        if window is not None:  # prints in ts order: none is later than the newest
            cutoff = print_.ts - window.span
            if window.horizon is None or cutoff >= window.horizon:
                return window.contract_hits(cutoff, print_, self.last_price)
        cutoff = print_.ts - timedelta(seconds=seconds)
        return sum(
            1
            for entry in self.flow
            if entry.print_.contract == print_.contract
            and entry.ts >= cutoff
            and passes_filters(filters, entry.print_, self.last_price)
        )

    def flow_window(self, seconds: int, filters: FlowFilters) -> FlowWindow | None:
        """The window kept for ``filters`` over ``seconds``, unless reads must scan (until
        ``flow_resets`` changes or prints come out of order)."""
        if self.flow_unordered:
            return None
        found = self.flow_window_of.get((id(filters), seconds))
        if found is not None and found[0] is filters:
            return found[1]
        group = self.flow_filters.get(flow_filter_key(filters))
        window = None if group is None else group.windows.get(seconds)
        if window is not None:
            self.flow_window_of[id(filters), seconds] = (filters, window)
        return window

    def iv_at_or_before(self, ts: datetime) -> float | None:
        reference = None
        for observed_at, iv in self.iv_history:
            if observed_at > ts:
                break
            reference = iv
        return reference

    def iv_rank(self, lookback_days: int, today: date) -> float | None:
        """(IV - lowest) / (highest - lowest) x 100 over the daily closing IVs of the lookback."""
        if self.iv is None:
            return None
        oldest = today - timedelta(days=lookback_days - 1)
        values = [iv for day, iv in self.daily_iv if day >= oldest]
        if len(values) < 2:
            return None
        low, high = min(values), max(values)
        if high == low:
            return None
        return (self.iv - low) / (high - low) * 100


def _release(users: Counter[_K], key: _K) -> bool:
    """Count one user less; True when it was the last."""
    users[key] -= 1
    if users[key] <= 0:
        del users[key]
        return True
    return False
