"""What the rules of one symbol need to remember about its market, and nothing more.

Each window keeps only what its longest user needs: the price extremes over each requested
``window_seconds`` (monotonic deques), IV history as far back as the longest IV-change window,
one closing IV per day for the longest IV-rank lookback, and flow prints as far back as the
longest flow window. Windows are shared by every rule that asks for the same length and are
dropped when the last one goes (``acquire`` / ``release``).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from pipeline.evaluate.indicators import SymbolIndicators
from pipeline.messages import OptionsFlow, Tick


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
    indicators: SymbolIndicators = field(default_factory=SymbolIndicators)
    extrema: dict[int, ExtremaWindow] = field(default_factory=dict)
    extrema_users: Counter[int] = field(default_factory=Counter)
    iv_history: deque[tuple[datetime, float]] = field(default_factory=deque)
    iv_windows: Counter[int] = field(default_factory=Counter)
    daily_iv: deque[tuple[date, float]] = field(default_factory=deque)
    iv_rank_lookbacks: Counter[int] = field(default_factory=Counter)
    flow: deque[OptionsFlow] = field(default_factory=deque)
    flow_windows: Counter[int] = field(default_factory=Counter)

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

    def acquire_flow_window(self, seconds: int) -> None:
        self.flow_windows[seconds] += 1

    def release_flow_window(self, seconds: int) -> None:
        if _release(self.flow_windows, seconds) and not self.flow_windows:
            self.flow.clear()

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
        self.flow.append(print_)
        cutoff = print_.ts - timedelta(seconds=max(self.flow_windows))
        while self.flow[0].ts < cutoff:
            self.flow.popleft()

    # ------------------------------------------------------------ reading

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


def _release(users: Counter[int], key: int) -> bool:
    """Count one user less; True when it was the last."""
    users[key] -= 1
    if users[key] <= 0:
        del users[key]
        return True
    return False
