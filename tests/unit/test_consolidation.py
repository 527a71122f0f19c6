from datetime import timedelta

from pipeline.consolidation import Consolidator, window_start
from pipeline.ids import notification_id
from pipeline.messages import Channel, Priority
from tests.unit.helpers import T0, alert, at


def in_app(priority: Priority) -> list[Channel]:
    return [Channel.IN_APP] if priority is not Priority.CRITICAL else [Channel.IN_APP, Channel.SMS]


def consolidator() -> Consolidator:
    return Consolidator("u-1", window=timedelta(seconds=60), grace=timedelta(seconds=5))


def test_windows_are_aligned_to_the_epoch() -> None:
    assert window_start(at(59.9), timedelta(seconds=60)) == T0
    assert window_start(at(60), timedelta(seconds=60)) == at(60)


def test_alerts_in_one_window_become_one_notification_when_the_watermark_passes() -> None:
    c = consolidator()
    assert c.add(alert(1, rule_id="r-1"), in_app) == []
    assert c.add(alert(30, rule_id="r-2", symbol="MSFT"), in_app) == []
    assert c.add(alert(64, rule_id="r-1"), in_app) == []  # 64 < 60 + 5 grace
    (note,) = c.add(alert(65.5, rule_id="r-1"), in_app)
    assert note.alert_ids == ["a-r-1-AAPL-1", "a-r-2-MSFT-30"]
    assert note.notification_id == notification_id("u-1", T0)
    assert (note.window_start, note.window_end) == (T0, at(60))
    assert note.title == "2 alerts: AAPL, MSFT"
    assert note.channels == [Channel.IN_APP]


def test_repeats_of_a_rule_are_merged_with_a_count() -> None:
    c = consolidator()
    for seconds in (1, 2, 3):
        c.add(alert(seconds), in_app)
    (note,) = c.close_all(in_app)
    assert len(note.alert_ids) == 3
    assert note.message == "AAPL: r-1 (x3): something happened"


def test_critical_goes_out_at_once_on_its_own() -> None:
    c = consolidator()
    c.add(alert(1), in_app)
    (note,) = c.add(alert(2, rule_id="r-crit", priority="CRITICAL"), in_app)
    assert note.alert_ids == ["a-r-crit-AAPL-2"]
    assert note.highest_priority is Priority.CRITICAL
    assert note.channels == [Channel.IN_APP, Channel.SMS]
    assert note.window_start == note.window_end == at(2)
    assert len(c.open[T0].alerts) == 1


def test_late_alert_re_emits_the_closed_window_under_the_same_id() -> None:
    c = consolidator()
    c.add(alert(1), in_app)
    (first,) = c.add(alert(70, rule_id="r-2"), in_app)
    (again,) = c.add(alert(10, rule_id="r-3"), in_app)
    assert again.notification_id == first.notification_id
    assert again.alert_ids == ["a-r-1-AAPL-1", "a-r-3-AAPL-10"]


def test_duplicate_alert_is_ignored() -> None:
    c = consolidator()
    c.add(alert(1), in_app)
    c.add(alert(1), in_app)
    (note,) = c.close_all(in_app)
    assert note.alert_ids == ["a-r-1-AAPL-1"]
    c.add(alert(70), in_app)
    assert c.add(alert(1), in_app) == []  # same alert again for the closed window


def test_wall_clock_deadline_closes_a_lone_window_in_live_mode() -> None:
    c = consolidator()
    c.add(alert(1), in_app, now=1000.0)
    assert c.next_deadline() == 1065.0
    assert c.close_due(1064.9, in_app) == []
    (note,) = c.close_due(1065.0, in_app)
    assert note.alert_ids == ["a-r-1-AAPL-1"]
    assert c.next_deadline() is None


def test_closed_windows_are_forgotten_after_the_late_retention() -> None:
    c = Consolidator("u-1", window=timedelta(seconds=60), late_retention=timedelta(minutes=10))
    c.add(alert(1), in_app)
    c.add(alert(3600), in_app)
    assert T0 not in c.closed
