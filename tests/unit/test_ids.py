import random
import uuid
from datetime import UTC, datetime, timedelta, timezone

from pipeline.ids import NAMESPACE, alert_id, uuid5_text
from pipeline.messages import format_timestamp


def test_uuid5_text_is_the_uuid5_string() -> None:
    rng = random.Random(0)
    names = ["", "alert|r-1|1|2026-01-05T14:30:00.000Z|AAPL", "é€𝄞|x", "a" * 1000]
    names += [
        "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(40)))
        for _ in range(2000)
    ]
    for name in names:
        assert uuid5_text(name) == str(uuid.uuid5(NAMESPACE, name))


def test_alert_ids_of_equal_instants_are_equal_whatever_the_offset() -> None:
    utc = datetime(2026, 1, 5, 14, 30, 0, 125000, tzinfo=UTC)
    shifted = utc.astimezone(timezone(timedelta(hours=-5)))
    expected = str(uuid.uuid5(NAMESPACE, f"alert|r|3|{format_timestamp(utc)}|AAPL"))
    assert alert_id("r", 3, utc, "AAPL") == expected
    assert alert_id("r", 3, shifted, "AAPL") == expected
    later = utc + timedelta(milliseconds=1)
    assert alert_id("r", 3, later, "AAPL") != expected
