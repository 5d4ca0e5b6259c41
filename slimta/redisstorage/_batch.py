"""Operations from concurrent greenlets, sent to Redis together (a group commit).

When many greenlets store or remove messages at once, each would otherwise pay a
round trip of its own. A :class:`Coalescer` queues their operations and one
flusher greenlet sends everything queued so far as a single request, then
resolves each caller with its own part of the answer. A caller alone pays one
round trip, as before; under load a round trip carries many operations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import gevent
from gevent import Greenlet
from gevent.event import AsyncResult

__all__ = ["Coalescer"]

_Op = TypeVar("_Op")

#: The most operations one flush sends together.
MAX_BATCH = 256


class Coalescer(Generic[_Op]):
    """Runs operations queued by concurrent greenlets in shared batches.

    :param execute: sends a batch of operations and returns one value per
        operation, in order; an exception it raises fails the whole batch.
    :param interrupted: makes the exception for callers whose batch never
        completed because the flusher greenlet was killed.
    :param max_batch: the most operations per call of ``execute``.
    """

    def __init__(
        self,
        execute: Callable[[list[_Op]], list[object]],
        interrupted: Callable[[], Exception],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._execute = execute
        self._interrupted = interrupted
        self.max_batch = max_batch
        self._pending: list[tuple[_Op, AsyncResult]] = []
        self._flusher: Greenlet | None = None
        #: How many batches were sent (for tests and benchmarks).
        self.batches = 0

    def run(self, op: _Op) -> object:
        """Queue ``op``, wait for the batch that carries it, and return its value.

        :raises Exception: whatever ``execute`` raised for that batch.
        """
        result: AsyncResult = AsyncResult()
        self._pending.append((op, result))
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush)
        return result.get()

    def _flush(self) -> None:
        batch: list[tuple[_Op, AsyncResult]] = []
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self.batches += 1
                try:
                    values = self._execute([op for op, _ in batch])
                except Exception as exc:
                    for _, result in batch:
                        result.set_exception(exc)
                else:
                    for (_, result), value in zip(batch, values, strict=True):
                        result.set(value)
                batch = []
        finally:
            self._flusher = None
            # Killed (or a bug) mid-batch: no caller may wait forever.
            leftover = batch + self._pending
            self._pending = []
            for _, result in leftover:
                if not result.ready():
                    result.set_exception(self._interrupted())
