"""Bar indicators per symbol: incremental, event-time, shared between rules (ARCHITECTURE.md §5).

Plain Python, no Bytewax and no numpy: the rule engine calls this on every event of a symbol and
Bytewax pickles it in every recovery snapshot, so the state is small plain objects (``__slots__``
classes, deques of floats, no lambdas).

Bars
    An event ``(ts, price, size)`` belongs to the bar ``[floor(ts, timeframe), +timeframe)``,
    buckets aligned on the UTC epoch. A bar's close is the price of its latest event (by ``ts``;
    among equal ``ts`` the later arrival), its volume the sum of ``size`` (``None`` counts 0). A bar
    with no events does not exist: nothing is filled in. A bar closes when an event at or past its
    end arrives, or when ``advance_to(watermark)`` is called with a watermark at or past its end;
    every indicator of that timeframe updates at that close.

    Late events: an event whose bar starts before the bar currently open (or before the last
    watermark given to ``advance_to``) is *late*: that bar has closed or been skipped, history is
    not rewritten, so the event is not added to any bar. It is counted in ``late_events``. An
    out-of-order event inside the open bar is added normally.

Indicators (TA-Lib's definitions; each is ``None`` until defined)
    ``sma``         mean of the last ``period`` closes; first value at ``period`` closes.
    ``ema``         seeded with the SMA of the first ``period`` closes, then
                    ``ema = (close - ema) * 2 / (period + 1) + ema``; first value at ``period``.
    ``rsi``         Wilder: the first average gain / loss is the simple mean of the first
                    ``period`` changes, then ``avg = (avg * (period - 1) + change) / period``;
                    ``100 * gain / (gain + loss)``; first value at ``period + 1`` closes. Where
                    TA-Lib says 0 because no close has ever moved (0 / 0) this says ``None``.
    ``bbands``      ``Bands(lower, middle, upper)``: middle = SMA(period), upper / lower = middle
                    ± ``stddev`` x the *population* standard deviation of the last ``period``
                    closes; first value at ``period`` closes.
    ``highest``     the highest of the ``period`` closes *before* the last closed bar (the last
                    one not included); first value at ``period + 1`` closes. A new N-bar high is
                    ``last_close(tf) > value(highest)``.
    ``lowest``      mirrored.
    ``volume_avg``  the mean volume of the ``period`` bars before the last closed bar; first value
                    at ``period + 1`` bars. A volume spike is
                    ``last_bar_volume(tf) >= multiple * value(volume_avg)``.

    A cross of a over b at the last closed bar is ``a_prev <= b_prev and a > b`` with
    ``a = last_close(tf)`` / ``value(spec)`` and ``a_prev = previous_close(tf)`` /
    ``previous_value(spec)``.

Sharing and cost
    One ``BarSeries`` per (symbol, timeframe) keeps the last closes and volumes, as many as its
    longest indicator needs (``period + 1``, at least 2). Each ``IndicatorSpec`` is computed once
    per symbol however many rules read it: ``acquire`` / ``release`` count its users, the last
    ``release`` drops it, and a series without indicators is dropped with its history. A spec
    acquired while its series already has history is warmed up from that history (as far back as
    the series keeps), so it does not wait for ``period`` new bars when the bars are known.
    Timeframes are keyed by their string: ``"60s"`` and ``"1m"`` are two series.

    Per event: one bucket comparison per timeframe. Per bar close: O(1) amortized per indicator
    (running sums, refreshed exactly from the window every ``period`` bars so rounding errors
    cannot accumulate; the Bollinger variance uses sums of deviations from an anchor near the
    mean, so it does not cancel catastrophically for large prices; highest / lowest use a
    monotonic deque).

API
    ``IndicatorSpec(kind, timeframe, period, stddev=0.0)``   hashable key; ``stddev`` only for
                                                             ``bbands`` (and required there)
    ``SymbolIndicators()``
        ``.acquire(spec) -> None`` / ``.release(spec) -> None`` (KeyError if not acquired)
        ``.on_event(ts, price, size) -> list[BarClose]``  bars closed by this event, ordered by
            end then timeframe length, *before* the event is added to its own bar
        ``.advance_to(watermark) -> list[BarClose]``      bars whose end <= watermark
        ``.value(spec)`` / ``.previous_value(spec) -> float | Bands | None``  after the last
            closed bar / the bar before it; ``None`` also when ``spec`` is not acquired
        ``.last_close(tf)`` / ``.previous_close(tf)`` / ``.last_bar_volume(tf) -> float | None``
        ``.refcount(spec) -> int``, ``.specs() -> list[IndicatorSpec]``, ``.timeframes()``,
        ``.bars_closed(tf) -> int``, ``.late_events -> int``
    ``BarClose(timeframe, start, end, close, volume)``   what a closing bar reports
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import NamedTuple

from pipeline.evaluate.specs import timeframe_seconds

KINDS = frozenset({"sma", "ema", "rsi", "bbands", "highest", "lowest", "volume_avg"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class IndicatorSpec:
    """Which indicator, on which bars: the key it is shared under."""

    kind: str
    timeframe: str
    period: int
    stddev: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown indicator kind {self.kind!r} (one of {sorted(KINDS)})")
        timeframe_seconds(self.timeframe)  # raises ValueError when not a timeframe
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 1:
            raise ValueError(f"period must be an integer >= 1, not {self.period!r}")
        if self.kind == "bbands":
            if not (math.isfinite(self.stddev) and self.stddev > 0):
                raise ValueError(f"bbands needs a finite stddev > 0, not {self.stddev!r}")
        elif self.stddev != 0:
            raise ValueError(f"stddev is only for bbands, not {self.kind}")


class Bands(NamedTuple):
    lower: float
    middle: float
    upper: float


Value = float | Bands | None


@dataclass(frozen=True, slots=True)
class BarClose:
    """A bar that has just closed; the indicators of its timeframe include it."""

    timeframe: str
    start: datetime
    end: datetime
    close: float
    volume: float


# ---------------------------------------------------------------- indicators


def _window_sum(values: deque[float], period: int) -> float:
    """Exact (correctly rounded) sum of the last ``period`` values."""
    return math.fsum(islice(values, len(values) - period, None))


class _Indicator:
    """Base: ``update`` is called once per closed bar, after the bar is in the windows."""

    __slots__ = ("period", "count", "value", "previous")

    def __init__(self, period: int) -> None:
        self.period = period
        self.count = 0  # bars seen
        self.value: Value = None
        self.previous: Value = None

    def update(self, closes: deque[float], volumes: deque[float]) -> None:
        raise NotImplementedError

    def window(self) -> int:
        """How many of the last closes / volumes ``update`` reads."""
        return self.period + 1


class _Sma(_Indicator):
    __slots__ = ("total", "since_refresh")

    def __init__(self, period: int) -> None:
        super().__init__(period)
        self.total = 0.0
        self.since_refresh = 0

    def update(self, closes: deque[float], volumes: deque[float]) -> None:
        p = self.period
        self.count += 1
        if self.count <= p:
            self.total += closes[-1]
        else:
            self.since_refresh += 1
            if self.since_refresh >= p:
                self.since_refresh = 0
                self.total = _window_sum(closes, p)
            else:  # TA-Lib's order: drop the oldest, then add the newest
                self.total = (self.total - closes[-p - 1]) + closes[-1]
        self.previous = self.value
        self.value = self.total / p if self.count >= p else None


class _Ema(_Indicator):
    __slots__ = ("k", "ema")

    def __init__(self, period: int) -> None:
        super().__init__(period)
        self.k = 2.0 / (period + 1)
        self.ema = 0.0  # the sum of the first closes until seeded

    def window(self) -> int:
        return 1

    def update(self, closes: deque[float], volumes: deque[float]) -> None:
        close = closes[-1]
        self.count += 1
        self.previous = self.value
        if self.count < self.period:
            self.ema += close
            return
        if self.count == self.period:
            self.ema = (self.ema + close) / self.period
        else:
            self.ema = (close - self.ema) * self.k + self.ema
        self.value = self.ema


class _Rsi(_Indicator):
    __slots__ = ("gain", "loss")

    def __init__(self, period: int) -> None:
        super().__init__(period)
        self.gain = 0.0
        self.loss = 0.0

    def window(self) -> int:
        return 2

    def update(self, closes: deque[float], volumes: deque[float]) -> None:
        self.count += 1
        self.previous = self.value
        if self.count == 1:
            return
        p = self.period
        change = closes[-1] - closes[-2]
        if self.count <= p + 1:  # seeding: sums of the first ``period`` changes
            if change < 0:
                self.loss -= change
            else:
                self.gain += change
            if self.count < p + 1:
                return
            self.gain /= p
            self.loss /= p
        else:  # Wilder smoothing, in TA-Lib's order of operations
            self.loss *= p - 1
            self.gain *= p - 1
            if change < 0:
                self.loss -= change
            else:
                self.gain += change
            self.loss /= p
            self.gain /= p
        total = self.gain + self.loss
        self.value = 100.0 * (self.gain / total) if total != 0 else None


class _Bbands(_Indicator):
    """Sums of ``close - anchor`` and its square over the window, ``anchor`` ≈ the mean."""

    __slots__ = ("stddev", "anchor", "s1", "s2", "since_refresh")

    def __init__(self, period: int, stddev: float) -> None:
        super().__init__(period)
        self.stddev = stddev
        self.anchor = 0.0
        self.s1 = 0.0
        self.s2 = 0.0
        self.since_refresh = 0

    def update(self, closes: deque[float], volumes: deque[float]) -> None:
        p = self.period
        close = closes[-1]
        self.count += 1
        self.previous = self.value
        if self.count == 1:
            self.anchor = close
        if self.count > p:
            self.since_refresh += 1
        if self.count == p or self.since_refresh >= p:
            self.since_refresh = 0
            window = list(islice(closes, len(closes) - p, None))
            self.anchor = math.fsum(window) / p
            self.s1 = math.fsum(x - self.anchor for x in window)
            self.s2 = math.fsum((x - self.anchor) * (x - self.anchor) for x in window)
        else:
            new = close - self.anchor
            self.s1 += new
            self.s2 += new * new
            if self.count > p:
                old = closes[-p - 1] - self.anchor
                self.s1 -= old
                self.s2 -= old * old
        if self.count < p:
            return
        mean_offset = self.s1 / p
        variance = self.s2 / p - mean_offset * mean_offset
        width = self.stddev * math.sqrt(variance) if variance > 0 else 0.0
        middle = self.anchor + mean_offset
        self.value = Bands(middle - width, middle, middle + width)


class _Extreme(_Indicator):
    """Highest (or lowest) of the ``period`` closes before the last one: a monotonic deque."""

    __slots__ = ("high", "candidates")

    def __init__(self, period: int, high: bool) -> None:
        super().__init__(period)
        self.high = high
        self.candidates: deque[tuple[int, float]] = deque()  # (bar number, close), monotonic

    def window(self) -> int:
        return 1

    def update(self, closes: deque[float], volumes: deque[float]) -> None:
        index = self.count
        self.count += 1
        candidates = self.candidates
        while candidates and candidates[0][0] < index - self.period:
            candidates.popleft()
        self.previous = self.value
        self.value = candidates[0][1] if index >= self.period else None
        close = closes[-1]
        if self.high:
            while candidates and candidates[-1][1] <= close:
                candidates.pop()
        else:
            while candidates and candidates[-1][1] >= close:
                candidates.pop()
        candidates.append((index, close))


class _VolumeAvg(_Indicator):
    """Mean volume of the ``period`` bars before the last one."""

    __slots__ = ("total", "since_refresh")

    def __init__(self, period: int) -> None:
        super().__init__(period)
        self.total = 0.0  # volume of the last min(count, period) bars
        self.since_refresh = 0

    def update(self, closes: deque[float], volumes: deque[float]) -> None:
        p = self.period
        self.count += 1
        self.previous = self.value
        self.value = self.total / p if self.count > p else None
        if self.count <= p:
            self.total += volumes[-1]
            return
        self.since_refresh += 1
        if self.since_refresh >= p:
            self.since_refresh = 0
            self.total = _window_sum(volumes, p)
        else:
            self.total = (self.total - volumes[-p - 1]) + volumes[-1]


def _make(spec: IndicatorSpec) -> _Indicator:
    kind, period = spec.kind, spec.period
    if kind == "sma":
        return _Sma(period)
    if kind == "ema":
        return _Ema(period)
    if kind == "rsi":
        return _Rsi(period)
    if kind == "bbands":
        return _Bbands(period, spec.stddev)
    if kind in ("highest", "lowest"):
        return _Extreme(period, high=kind == "highest")
    return _VolumeAvg(period)


# ---------------------------------------------------------------- bars


class BarSeries:
    """The bars of one (symbol, timeframe): the open bar, recent closes, the indicators."""

    __slots__ = (
        "timeframe",
        "seconds",
        "closes",
        "volumes",
        "bar_start",
        "bar_close",
        "bar_volume",
        "bar_last_us",
        "horizon",
        "bars",
        "late_events",
        "indicators",
        "users",
    )

    def __init__(self, timeframe: str) -> None:
        self.timeframe = timeframe
        self.seconds = timeframe_seconds(timeframe)
        self.closes: deque[float] = deque(maxlen=2)
        self.volumes: deque[float] = deque(maxlen=2)
        self.bar_start: int | None = None  # epoch seconds of the open bar
        self.bar_close = 0.0
        self.bar_volume = 0.0
        self.bar_last_us = 0  # epoch microseconds of the open bar's latest event
        self.horizon: int | None = None  # bars starting before this are closed or skipped
        self.bars = 0  # bars closed
        self.late_events = 0
        self.indicators: dict[IndicatorSpec, _Indicator] = {}
        self.users: dict[IndicatorSpec, int] = {}

    # ------------------------------------------------------------ registration

    def _resize(self) -> None:
        size = max([2, *(ind.window() for ind in self.indicators.values())])
        if size != self.closes.maxlen:
            self.closes = deque(self.closes, maxlen=size)
            self.volumes = deque(self.volumes, maxlen=size)

    def acquire(self, spec: IndicatorSpec) -> None:
        if spec in self.users:
            self.users[spec] += 1
            return
        indicator = _make(spec)
        # Warm up from the history this series keeps, as if it had been there all along.
        closes: deque[float] = deque(maxlen=indicator.window() + 1)
        volumes: deque[float] = deque(maxlen=indicator.window() + 1)
        for close, volume in zip(self.closes, self.volumes, strict=True):
            closes.append(close)
            volumes.append(volume)
            indicator.update(closes, volumes)
        self.users[spec] = 1
        self.indicators[spec] = indicator
        self._resize()

    def release(self, spec: IndicatorSpec) -> None:
        left = self.users[spec] - 1
        if left > 0:
            self.users[spec] = left
            return
        del self.users[spec]
        del self.indicators[spec]
        self._resize()

    # ------------------------------------------------------------ events

    def add(self, seconds: int, micros: int, price: float, volume: float) -> BarClose | None:
        """Add one event; returns the bar it closed, if any."""
        start = seconds - seconds % self.seconds
        if start == self.bar_start:
            self.bar_volume += volume
            if micros >= self.bar_last_us:
                self.bar_close = price
                self.bar_last_us = micros
            return None
        horizon = self.horizon
        if horizon is not None and start < horizon:
            self.late_events += 1
            return None
        closed = self._close() if self.bar_start is not None else None
        self.bar_start = self.horizon = start
        self.bar_close = price
        self.bar_volume = volume
        self.bar_last_us = micros
        return closed

    def advance_to(self, seconds: int) -> BarClose | None:
        """The watermark is at ``seconds``: close the open bar if it ends by then."""
        start = seconds - seconds % self.seconds
        if self.horizon is None or start > self.horizon:
            self.horizon = start
        if self.bar_start is not None and self.bar_start + self.seconds <= seconds:
            return self._close()
        return None

    def _close(self) -> BarClose:
        start = self.bar_start
        assert start is not None
        close, volume = self.bar_close, self.bar_volume
        self.closes.append(close)
        self.volumes.append(volume)
        for indicator in self.indicators.values():
            indicator.update(self.closes, self.volumes)
        self.bars += 1
        self.bar_start = None
        return BarClose(
            self.timeframe,
            _EPOCH + timedelta(seconds=start),
            _EPOCH + timedelta(seconds=start + self.seconds),
            close,
            volume,
        )


def _sorted(closed: list[tuple[int, int, BarClose]]) -> list[BarClose]:
    if len(closed) > 1:
        closed.sort(key=lambda item: (item[0], item[1], item[2].timeframe))
    return [bar for _, _, bar in closed]


class SymbolIndicators:
    """All bar series and indicators of one symbol."""

    __slots__ = ("series",)

    def __init__(self) -> None:
        self.series: dict[str, BarSeries] = {}

    # ------------------------------------------------------------ registration

    def acquire(self, spec: IndicatorSpec) -> None:
        """One more user of ``spec``; created (warmed up from known bars) for the first."""
        series = self.series.get(spec.timeframe)
        if series is None:
            series = self.series[spec.timeframe] = BarSeries(spec.timeframe)
        series.acquire(spec)

    def release(self, spec: IndicatorSpec) -> None:
        """One user less; the last one drops the indicator (and the series when it was the
        last of its timeframe). KeyError when ``spec`` is not acquired."""
        series = self.series.get(spec.timeframe)
        if series is None or spec not in series.users:
            raise KeyError(spec)
        series.release(spec)
        if not series.users:
            del self.series[spec.timeframe]

    def refcount(self, spec: IndicatorSpec) -> int:
        series = self.series.get(spec.timeframe)
        return 0 if series is None else series.users.get(spec, 0)

    def specs(self) -> list[IndicatorSpec]:
        return [spec for series in self.series.values() for spec in series.users]

    def timeframes(self) -> list[str]:
        return list(self.series)

    # ------------------------------------------------------------ events

    def on_event(self, ts: datetime, price: float, size: float | None) -> list[BarClose]:
        """Bars this event closes (ordered by end, then timeframe length), then the event is
        added to its own bar. Naive ``ts`` are taken as UTC."""
        if not self.series:
            return []
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        delta = ts - _EPOCH
        seconds = delta.days * 86400 + delta.seconds
        micros = seconds * 1_000_000 + delta.microseconds
        price = float(price)
        volume = 0.0 if size is None else float(size)
        closed: list[tuple[int, int, BarClose]] | None = None
        for series in self.series.values():
            start = series.bar_start
            bar = series.add(seconds, micros, price, volume)
            if bar is not None and start is not None:
                if closed is None:
                    closed = []
                closed.append((start + series.seconds, series.seconds, bar))
        return [] if closed is None else _sorted(closed)

    def advance_to(self, watermark: datetime) -> list[BarClose]:
        """Close every open bar that ends at or before ``watermark``; later events for bars
        before it are late."""
        if watermark.tzinfo is None:
            watermark = watermark.replace(tzinfo=UTC)
        delta = watermark - _EPOCH
        seconds = delta.days * 86400 + delta.seconds
        closed: list[tuple[int, int, BarClose]] = []
        for series in self.series.values():
            start = series.bar_start
            bar = series.advance_to(seconds)
            if bar is not None and start is not None:
                closed.append((start + series.seconds, series.seconds, bar))
        return _sorted(closed)

    # ------------------------------------------------------------ reading

    def _indicator(self, spec: IndicatorSpec) -> _Indicator | None:
        series = self.series.get(spec.timeframe)
        return None if series is None else series.indicators.get(spec)

    def value(self, spec: IndicatorSpec) -> Value:
        """After the last closed bar; ``Bands`` for bbands; None until defined (or unknown)."""
        indicator = self._indicator(spec)
        return None if indicator is None else indicator.value

    def previous_value(self, spec: IndicatorSpec) -> Value:
        """As of the bar before the last closed bar."""
        indicator = self._indicator(spec)
        return None if indicator is None else indicator.previous

    def _recent(self, timeframe: str, back: int, volume: bool = False) -> float | None:
        series = self.series.get(timeframe)
        if series is None:
            return None
        values = series.volumes if volume else series.closes
        return values[-back] if len(values) >= back else None

    def last_close(self, timeframe: str) -> float | None:
        return self._recent(timeframe, 1)

    def previous_close(self, timeframe: str) -> float | None:
        return self._recent(timeframe, 2)

    def last_bar_volume(self, timeframe: str) -> float | None:
        return self._recent(timeframe, 1, volume=True)

    def bars_closed(self, timeframe: str) -> int:
        series = self.series.get(timeframe)
        return 0 if series is None else series.bars

    @property
    def late_events(self) -> int:
        return sum(series.late_events for series in self.series.values())
