"""Random identifiers (queue IDs, delivery tokens) without a system call each.

``os.urandom()`` costs a ``getrandom`` system call per call, and a busy edge
needs one or two IDs per message. These functions take their bytes from a pool
filled by one ``os.urandom()`` call per :data:`POOL_BYTES` bytes: the IDs are
just as unpredictable, at a fraction of the cost. A forked child starts with an
empty pool, so parent and child never hand out the same IDs. A store may run
in a thread pool, so taking from the pool holds a lock: an OS lock, which is
never held across a switch to another greenlet.
"""

from __future__ import annotations

import os

from gevent.monkey import get_original

__all__ = ["POOL_BYTES", "random_hex", "random_uuid"]

#: Bytes read from ``os.urandom()`` at once.
POOL_BYTES = 4096

_pool = b""
_offset = 0
_lock = get_original("_thread", "allocate_lock")()


def _take(count: int) -> bytes:
    global _pool, _offset
    with _lock:
        pool = _pool
        start = _offset
        end = start + count
        if end > len(pool):
            pool = _pool = os.urandom(max(POOL_BYTES, count))
            start, end = 0, count
        _offset = end
        return pool[start:end]


def random_hex(nbytes: int = 16) -> str:
    """``nbytes`` random bytes as lower-case hex (32 digits by default, like ``uuid4().hex``)."""
    return _take(nbytes).hex()


def random_uuid() -> str:
    """A random (version 4) UUID as ``str(uuid.uuid4())`` writes it."""
    h = _take(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


#: The variant bits of RFC 9562 (10xx) on the 17th hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _forget_pool() -> None:
    global _pool, _offset
    _pool = b""
    _offset = 0


os.register_at_fork(after_in_child=_forget_pool)
