"""Event time without a broker: progress markers, watermarks, the start-up gate, and the two
stateful steps that use them (EvaluateShard, DeskShard), plus the safety net."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pipeline.config import Topics
from pipeline.evaluate.engine import EvaluateShard
from pipeline.evaluate.routing import RuleRouter, all_shards
from pipeline.event_time import Progress, ProgressReporter, ReferenceGate, Watermark, WatermarkJoin
from pipeline.messages import DeadLetter, Feedback, Notification, Tick, TriggeredAlert
from pipeline.personalize.desk import AlertOutcome, DeskShard, Dispatch, PersonalizationConfig
from pipeline.safety import SafetyNet
from tests.unit.helpers import T0, alert, at, rule, tick

MARKET = frozenset({"ticks#0", "ticks#1"})
RULES = frozenset({"rules#0"})
NET = SafetyNet("test", Topics())


def marker(part: str, seconds: float | None, *, caught_up: bool = False, idle: bool = False):
    newest = None if seconds is None else at(seconds)
    return Progress(part, newest, caught_up, idle, to="shard-0000")


# ---------------------------------------------------------------- markers


def test_a_partition_reports_at_once_on_a_change_else_at_most_twice_a_second() -> None:
    reporter = ProgressReporter("ticks#0", idle_after=10, bounded=False)
    first = reporter.after_batch(at(1), 5, at_end=False, now=100.0)
    assert first == Progress("ticks#0", at(1), False, False)
    assert reporter.after_batch(at(2), 5, at_end=False, now=100.1) is None  # throttled
    assert reporter.after_batch(None, 0, at_end=True, now=100.2) == Progress(
        "ticks#0", at(2), True, False
    )  # caught up: a change goes at once
    assert reporter.after_batch(None, 0, at_end=True, now=105.0) is None
    idle = reporter.after_batch(None, 0, at_end=True, now=110.2)
    assert idle == Progress("ticks#0", at(2), True, True)  # quiet for idle_after seconds
    assert reporter.after_batch(at(3), 1, at_end=True, now=111.0) == Progress(
        "ticks#0", at(3), True, False
    )  # a record: active again


def test_a_bounded_partition_at_its_end_is_idle_for_good() -> None:
    reporter = ProgressReporter("ticks#0", idle_after=10, bounded=True)
    assert reporter.after_batch(at(5), 3, at_end=True, now=0.0) == Progress(
        "ticks#0", at(5), True, True
    )
    assert reporter.after_batch(None, 0, at_end=True, now=0.1) is None


# ---------------------------------------------------------------- watermarks and the gate


def test_the_watermark_is_the_slowest_active_partition_and_never_goes_back() -> None:
    join = WatermarkJoin(MARKET)
    join.observe("ticks#0", at(50), caught_up=False)
    assert join.watermark is None  # ticks#1 has not reported
    join.observe("ticks#1", at(20), caught_up=False)
    assert join.watermark == at(20)
    join.observe("ticks#1", None, caught_up=True, idle=True)  # idle: no longer holds it back
    assert join.watermark == at(50)
    join.observe("ticks#1", at(10), caught_up=False)  # active again, behind
    assert join.watermark == at(50)  # never backwards: its events before 50 are late
    join.observe("ticks#0", at(60), caught_up=True, idle=True)
    join.observe("ticks#1", at(30), caught_up=True, idle=True)
    assert join.watermark == at(60)  # everything idle: the newest time any partition reached
    assert join.caught_up


def test_the_gate_opens_once_every_reference_partition_was_caught_up() -> None:
    gate = ReferenceGate(frozenset({"rules#0", "positions#0"}))
    assert not gate.observe(marker("rules#0", None, caught_up=True))
    assert not gate.observe(marker("positions#0", None, caught_up=False))
    assert gate.observe(marker("positions#0", None, caught_up=True))
    assert gate.is_open and ReferenceGate(frozenset()).is_open


def test_the_router_sends_a_partitions_marker_to_every_shard_after_its_rules() -> None:
    router = RuleRouter(4)
    progress = Progress("rules#0", None, True, False)
    sent = router.broadcast(progress)
    assert [(shard, m.to) for shard, m in sent] == [(s, s) for s in all_shards(4)]


# ---------------------------------------------------------------- the evaluate step


def shard(**fields: Any) -> EvaluateShard:
    return EvaluateShard(MARKET, RULES, timedelta(seconds=5), NET, **fields)


def test_market_events_wait_for_the_rules_then_the_watermark_follows_the_alerts() -> None:
    s = shard()
    r = rule({"type": "price_above", "threshold": 100})
    early = s.process([tick("AAPL", 101, 1), marker("ticks#0", 1), marker("ticks#1", 1)], 0.0)
    assert early == []  # held: the rules partition has not reported being loaded
    out = s.process([r, marker("rules#0", None, caught_up=True)], 1.0)
    assert [type(o) for o in out] == [TriggeredAlert, Watermark]  # alerts first
    assert out[1] == Watermark("shard-0000", at(-4), False)  # 1 s less the 5 s lateness
    out = s.process([tick("AAPL", 102, 30), marker("ticks#0", 30), marker("ticks#1", 40)], 2.0)
    assert out == [Watermark("shard-0000", at(25), False)]  # min(30, 40) - 5


def test_a_watermark_closes_the_bars_of_quiet_symbols() -> None:
    s = shard()
    s.process([rule({"type": "rsi_above", "threshold": 1, "period": 2, "timeframe": "1m"})], 0)
    s.process([marker("rules#0", None, caught_up=True)], 0)
    prices = [(1, 100), (61, 101), (121, 102)]
    s.process([tick("AAPL", p, t) for t, p in prices], 0)  # bars of 0-60, 60-120 close
    # No AAPL tick after 121 s: the bar [120, 180) closes when the watermark passes 180 + 5.
    quiet = s.process([marker("ticks#0", 200), marker("ticks#1", 200)], 10.0)
    (bar_alert,) = [o for o in quiet if isinstance(o, TriggeredAlert)]
    assert bar_alert.triggered_at == at(180)
    assert isinstance(quiet[-1], Watermark)


def test_a_bounded_end_sends_the_last_watermark_whatever_the_interval() -> None:
    s = shard()
    s.process([marker("rules#0", None, caught_up=True)], 0.0)
    s.process([marker("ticks#0", 100, idle=True), marker("ticks#1", 50)], 0.0)
    s.process([marker("ticks#1", 90, idle=True)], 0.1)  # within the interval: withheld
    assert s.next_watermark_at() == pytest.approx(0.5)
    assert s.close_all(0.2) == [Watermark("shard-0000", at(95), False)]


# ---------------------------------------------------------------- the personalize step

SHARDS = frozenset({"shard-0000", "shard-0001"})


def desk_shard(feedback: frozenset[str] = frozenset(), profiles: frozenset[str] = frozenset()):
    return DeskShard(PersonalizationConfig(), SHARDS, feedback, profiles, NET)


def notifications(out: list[Any]) -> list[Notification]:
    return [o.notification for o in out if isinstance(o, Dispatch)]


def test_a_window_closes_when_every_shard_has_passed_it() -> None:
    d = desk_shard()
    d.process([alert(10), alert(20, rule_id="r-2")])
    assert notifications(d.process([Watermark("shard-0000", at(600), False)])) == []
    (note,) = notifications(d.process([Watermark("shard-0001", at(60), False)]))
    assert note.alert_ids == ["a-r-1-AAPL-10", "a-r-2-AAPL-20"]


def test_feedback_partitions_hold_windows_until_their_feedback_is_learnt() -> None:
    d = desk_shard(feedback=frozenset({"feedback#0"}))
    d.process([alert(10)])
    d.process([Watermark(s, at(600), False) for s in SHARDS])
    assert d.watermark is None  # the feedback partition has not reported
    out = d.process([marker("feedback#0", 70)])  # 70 s - 5 s lateness
    assert len(notifications(out)) == 1


def outcomes(out: list[Any]) -> dict[str, str]:
    return {o.alert_id: o.status for o in out if isinstance(o, AlertOutcome)}


def test_alerts_wait_for_the_feedback_before_them_whatever_is_read_first() -> None:
    # A replay reads the market before the feedback: the mute at 20 s still silences the alert
    # at 200 s, and not the alert at 10 s it names, which the user saw.
    d = desk_shard(feedback=frozenset({"feedback#0"}))
    out = d.process([alert(10), alert(200)])
    assert d.desks == {} and len(d.waiting) == 2  # the feedback partition has not reported
    mute = Feedback(user_id="u-1", alert_id="a-r-1-AAPL-10", action="muted", ts=at(20))
    out += d.process([mute, marker("feedback#0", 20)])
    assert [a.alert_id for _, _, a in d.waiting] == ["a-r-1-AAPL-200"]
    out += d.process([marker("feedback#0", 20, caught_up=True)])
    assert not d.waiting
    assert outcomes(out) == {"a-r-1-AAPL-200": "MUTED"}


def test_a_mute_learnt_before_the_alert_it_names_does_not_silence_that_alert() -> None:
    d = desk_shard(feedback=frozenset({"feedback#0"}))
    mute = Feedback(user_id="u-1", alert_id="a-r-1-AAPL-10", action="muted", ts=at(20))
    out = d.process([mute, marker("feedback#0", 20, caught_up=True)])
    out += d.process([alert(10), alert(30)])
    out += d.close_all()
    assert outcomes(out)["a-r-1-AAPL-30"] == "MUTED"
    assert outcomes(out).get("a-r-1-AAPL-10") != "MUTED"
    assert [n.alert_ids for n in notifications(out)] == [["a-r-1-AAPL-10"]]


def test_alerts_and_feedback_wait_for_the_profiles() -> None:
    d = desk_shard(profiles=frozenset({"profiles#0"}))
    d.process([alert(10), *(Watermark(s, at(600), False) for s in SHARDS)])
    assert d.held and not d.desks
    out = d.process([marker("profiles#0", None, caught_up=True)])
    assert len(notifications(out)) == 1


def test_wall_clock_deadlines_close_windows_only_while_the_input_is_caught_up() -> None:
    d = desk_shard()
    d.process([alert(10)], now=1000.0)  # deadline: 1000 + 60 + 5
    assert d.next_deadline() is None and d.close_due(2000.0) == []
    d.process([Watermark(s, at(0), True) for s in SHARDS], now=1001.0)
    assert d.next_deadline() == 1065.0
    assert len(notifications(d.close_due(1065.0))) == 1


# ---------------------------------------------------------------- the safety net


def test_an_item_that_raises_is_a_dead_letter_and_the_next_goes_on() -> None:
    def handle(item: Tick) -> list[str]:
        if item.price == 2:
            raise ValueError("two")
        return [item.symbol]

    items = [tick("A", 1, 1), tick("B", 2, 2), tick("C", 3, 3)]
    out = SafetyNet("evaluate", Topics()).run_each(items, handle)
    assert out[0] == "A" and out[2] == "C"
    letter = out[1]
    assert isinstance(letter, DeadLetter)
    assert (letter.source_topic, letter.key, letter.partition, letter.offset) == (
        "market.ticks", "B", -1, -1,
    )  # fmt: skip
    assert letter.error == "evaluate: ValueError: two" and letter.ts == T0 + timedelta(seconds=2)
    with pytest.raises(ValueError):
        SafetyNet("evaluate", Topics(), stop=True).run_each(items, handle)
