from datetime import timedelta

from pipeline.messages import Channel
from pipeline.personalize.consolidation import Consolidator, compose, window_start
from tests.unit.helpers import T0, alert, at

MINUTE = timedelta(seconds=60)


def test_windows_are_aligned_to_the_epoch() -> None:
    assert window_start(at(59.9), MINUTE) == T0
    assert window_start(at(60), MINUTE) == at(60)


def test_a_window_closes_when_the_watermark_reaches_its_end_not_on_a_newer_alert() -> None:
    c = Consolidator()
    assert c.add(alert(1, rule_id="r-1"), MINUTE) == []
    assert c.add(alert(30, rule_id="r-2", symbol="MSFT"), MINUTE) == []
    assert c.add(alert(600, rule_id="r-1"), MINUTE) == []  # newer alerts close nothing
    assert c.advance(at(59.9)) == []
    (closed,) = c.advance(at(60))
    assert (closed.start, closed.end, closed.late) == (T0, at(60), False)
    assert [a.alert_id for a in closed.alerts] == ["a-r-1-AAPL-1", "a-r-2-MSFT-30"]
    assert c.advance(at(60)) == []


def test_late_alert_returns_the_closed_window_again() -> None:
    c = Consolidator()
    c.add(alert(1), MINUTE)
    (first,) = c.advance(at(70))
    (again,) = c.add(alert(10, rule_id="r-3"), MINUTE)
    assert again.late and again.start == first.start
    assert [a.alert_id for a in again.alerts] == ["a-r-1-AAPL-1", "a-r-3-AAPL-10"]
    assert c.add(alert(10, rule_id="r-3"), MINUTE) == []  # the same late alert again: nothing


def test_an_alert_behind_the_watermark_with_no_window_in_memory_closes_one_at_once() -> None:
    c = Consolidator()
    c.advance(at(600))
    (closed,) = c.add(alert(10), MINUTE)
    assert (closed.start, closed.late, len(closed.alerts)) == (T0, False, 1)


def test_duplicate_alert_is_ignored() -> None:
    c = Consolidator()
    c.add(alert(1), MINUTE)
    c.add(alert(1), MINUTE)
    (closed,) = c.close_all()
    assert [a.alert_id for a in closed.alerts] == ["a-r-1-AAPL-1"]


def test_window_length_can_change_between_windows() -> None:
    c = Consolidator()
    c.add(alert(10), MINUTE)
    c.add(alert(20, rule_id="r-2"), timedelta(minutes=5))  # joins the open 1-minute window
    c.add(alert(70, rule_id="r-3"), timedelta(minutes=5))
    first, second = c.close_all()
    assert (first.start, first.end, len(first.alerts)) == (T0, at(60), 2)
    assert (second.start, second.end) == (at(60), at(300))


def test_wall_clock_deadline_closes_a_lone_window_in_live_mode() -> None:
    c = Consolidator(lateness=timedelta(seconds=5))
    c.add(alert(1), MINUTE, now=1000.0)
    assert c.next_deadline() == 1065.0
    assert c.close_due(1064.9) == []
    (closed,) = c.close_due(1065.0)
    assert [a.alert_id for a in closed.alerts] == ["a-r-1-AAPL-1"]
    assert c.next_deadline() is None


def test_closed_windows_are_forgotten_after_the_late_retention() -> None:
    c = Consolidator(late_retention=timedelta(minutes=10))
    c.add(alert(1), MINUTE)
    c.advance(at(120))
    assert T0 in c.closed
    c.advance(at(3600))
    assert T0 not in c.closed


def test_compose_groups_by_symbol_and_merges_repeats_in_the_given_order() -> None:
    alerts = [alert(3), alert(1), alert(2), alert(5, rule_id="r-2", symbol="MSFT")]
    note = compose("n-1", "u-1", alerts, T0, at(60), [Channel.IN_APP])
    assert note.title == "4 alerts: AAPL, MSFT"
    assert note.message == "AAPL: r-1 (x3): something happened\nMSFT: r-2: something happened"
    assert note.alert_ids == ["a-r-1-AAPL-3", "a-r-1-AAPL-1", "a-r-1-AAPL-2", "a-r-2-MSFT-5"]


def test_compose_of_one_alert_is_its_title_and_its_message() -> None:
    note = compose("n-1", "u-1", [alert(1, message="price 180.50 is below 181")], T0, at(60), [])
    assert (note.title, note.message) == ("AAPL: r-1", "price 180.50 is below 181")
