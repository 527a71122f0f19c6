"""Writing on a thread of its own, so that the dataflow's worker does not wait for a database.

A ``BackgroundWriter`` takes batches (``submit``) and returns at once; its thread writes them
in order, joining whatever batches wait into one write (one transaction instead of many small
ones). ``flush`` returns once everything submitted so far is written: the dataflow calls it
where it must know that, at the end of each Bytewax epoch, before the epoch's snapshot is
committed, so a restart from that snapshot never skips a write that was still queued.

The first error of a write stops the thread and is handed to ``on_error``; ``submit``,
``flush``, ``close`` and ``raise_error`` raise it on the caller's thread, where a synchronous
write would have raised it: once, so that a close while the caller unwinds from it does not
raise it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BackgroundWriter"]

T = TypeVar("T")
log = logging.getLogger("smart_alerts.sinks")


class BackgroundWriter(Generic[T]):
    """Calls ``write`` with the submitted items, in order, on a thread named ``name``.

    At most ``max_pending`` items wait; ``submit`` blocks beyond that, which is the
    backpressure a slow database puts on the dataflow.
    """

    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        name: str,
        on_error: Callable[[BackgroundWriter[T]], None] | None = None,
        max_pending: int = 50_000,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._write = write
        self._on_error = on_error
        self._max_pending = max_pending
        self._pending: list[T] = []
        self._writing = False
        self._closed = False
        self._error: BaseException | None = None
        self._error_raised = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, items: list[T]) -> None:
        if not items:
            return
        with self._changed:
            self._changed.wait_for(
                lambda: self._error is not None or len(self._pending) < self._max_pending
            )
            self.raise_error()
            self._pending.extend(items)
            self._changed.notify_all()

    def flush(self) -> None:
        """Returns once every item submitted before the call is written (or raises)."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._error is not None or (not self._pending and not self._writing)
            )
            self.raise_error()

    def close(self) -> None:
        """Writes what is pending, then stops the thread; raises a write's error unless it was
        raised before."""
        try:
            if not self._error_raised:
                self.flush()
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()
            self._thread.join()

    def raise_error(self) -> None:
        """Raises the error that stopped the thread, if one did."""
        if self._error is not None:
            self._error_raised = True
            raise self._error

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or bool(self._pending))
                if not self._pending:
                    return  # closed, and nothing left
                batch, self._pending = self._pending, []
                self._writing = True
                self._changed.notify_all()  # room for submit
            try:
                self._write(batch)
            except BaseException as exc:  # the caller's thread raises it
                log.debug("background write failed", exc_info=True)
                with self._changed:
                    self._error, self._writing = exc, False
                    self._changed.notify_all()
                if self._on_error is not None:
                    self._on_error(self)
                return
            with self._changed:
                self._writing = False
                self._changed.notify_all()
