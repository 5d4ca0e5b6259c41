"""A :class:`collections.deque` whose pops block until an item is available."""

from __future__ import annotations

import collections
from typing import Any, TypeVar

from gevent.lock import Semaphore

__all__ = ["BlockingDeque"]

T = TypeVar("T")


class BlockingDeque(collections.deque):
    """A deque paired with a semaphore that counts its items.

    :meth:`pop` and :meth:`popleft` block the calling greenlet until an item
    exists; :meth:`popleft_nowait` never blocks. Every other method keeps the
    :class:`collections.deque` signature.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sema = Semaphore(len(self))

    def append(self, *args: Any, **kwargs: Any) -> None:
        super().append(*args, **kwargs)
        self.sema.release()

    def appendleft(self, *args: Any, **kwargs: Any) -> None:
        super().appendleft(*args, **kwargs)
        self.sema.release()

    def extend(self, *args: Any, **kwargs: Any) -> None:
        before = len(self)
        super().extend(*args, **kwargs)
        for _ in range(len(self) - before):
            self.sema.release()

    def extendleft(self, *args: Any, **kwargs: Any) -> None:
        before = len(self)
        super().extendleft(*args, **kwargs)
        for _ in range(len(self) - before):
            self.sema.release()

    def clear(self, *args: Any, **kwargs: Any) -> None:
        while self.sema.acquire(blocking=False):
            pass
        super().clear(*args, **kwargs)

    def remove(self, *args: Any, **kwargs: Any) -> None:
        super().remove(*args, **kwargs)
        self.sema.acquire(blocking=False)

    def pop(self, *args: Any, **kwargs: Any) -> Any:
        """Remove and return the rightmost item, waiting for one if needed."""
        self.sema.acquire()
        return super().pop(*args, **kwargs)

    def popleft(self, *args: Any, **kwargs: Any) -> Any:
        """Remove and return the leftmost item, waiting for one if needed."""
        self.sema.acquire()
        return super().popleft(*args, **kwargs)

    def popleft_nowait(self, default: Any = None) -> Any:
        """Remove and return the leftmost item if one is free now, else ``default``.

        Never blocks. It takes the semaphore's count as the blocking pops do,
        so count and items stay in step: a waiter that the same append woke,
        and that has not run yet, finds nothing and goes on waiting.
        """
        if not self.sema.acquire(blocking=False):
            return default
        return super().popleft()
