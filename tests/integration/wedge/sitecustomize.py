"""Fault injection for the ops tests, loaded by a job started with this folder on PYTHONPATH:
while the file named by SMART_ALERTS_TEST_WEDGE exists, every read of a Kafka partition blocks,
as in a worker wedged on its input."""

import os
import time

_FLAG = os.environ.get("SMART_ALERTS_TEST_WEDGE")

if _FLAG:
    from connectors import kafka

    _read = kafka.PartitionReader.next_batch

    def _wedged_read(self: kafka.PartitionReader) -> list[kafka.SourceRecord]:
        while _FLAG and os.path.exists(_FLAG):
            time.sleep(0.05)
        return _read(self)

    kafka.PartitionReader.next_batch = _wedged_read  # type: ignore[method-assign]
