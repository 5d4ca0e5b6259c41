"""A :class:`collections.deque` whose pops block until an item is available."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any, TypeVar

from gevent.lock import Semaphore

__all__ = ["BlockingDeque"]

T = TypeVar("T")


class BlockingDeque(collections.deque):
    """A deque paired with a semaphore that counts its items.

    :meth:`pop` and :meth:`popleft` block the calling greenlet until an item
    exists. Every other method keeps the :class:`collections.deque` signature.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sema = Semaphore(len(self))

    def append(self, x: Any) -> None:
        super().append(x)
        self.sema.release()

    def appendleft(self, x: Any) -> None:
        super().appendleft(x)
        self.sema.release()

    def extend(self, iterable: Iterable[Any]) -> None:
        items = list(iterable)
        super().extend(items)
        for _ in items:
            self.sema.release()

    def extendleft(self, iterable: Iterable[Any]) -> None:
        items = list(iterable)
        super().extendleft(items)
        for _ in items:
            self.sema.release()

    def clear(self) -> None:
        while self.sema.acquire(blocking=False):
            pass
        super().clear()

    def remove(self, value: Any) -> None:
        super().remove(value)
        self.sema.acquire(blocking=False)

    def pop(self) -> Any:  # type: ignore[override]
        """Remove and return the rightmost item, waiting for one if needed."""
        self.sema.acquire()
        return super().pop()

    def popleft(self) -> Any:
        """Remove and return the leftmost item, waiting for one if needed."""
        self.sema.acquire()
        return super().popleft()
