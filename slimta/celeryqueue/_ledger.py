"""The Redis side of :class:`~slimta.celeryqueue.CeleryQueue`: messages, deadlines, leases.

Messages are stored in :class:`~slimta.redisstorage.RedisStorage`'s documented
layout (hash ``<prefix><id>``, set ``<prefix>ids``), so its public methods
(attempt counts, delivered recipients, next-attempt time) work on them, with two
differences: the envelope is written without pickle (:mod:`slimta.queue.codec`
with ``allow_pickle=False``) and read back refusing pickle, and no wake-up entry
is pushed on ``<prefix>queue`` (nothing would ever pop it). Per task name:

* ``<prefix>celery:due:<task>``: sorted set, ID -> the time by which it must have
  been handled, or the sweeper sends its task again;
* ``<prefix>celery:lock:<task>:<id>``: the worker delivering it, expiring;
* ``<prefix>celery:sweeper:<task>``: the worker sweeping this round, expiring.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from slimta.envelope import Envelope
from slimta.queue import QueueError
from slimta.queue.codec import CodecError, dumps, loads
from slimta.redisstorage import FORMAT_VERSION, RedisStorage

__all__ = ["Ledger"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# KEYS[1] the lock, KEYS[2] the due set; ARGV token, ttl ms, id, deadline.
_ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], 'XX', ARGV[4], ARGV[3])
return 1
"""
# Same keys and arguments: only the holder extends its lease and the deadline.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', ARGV[4], ARGV[3])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] the due set; ARGV now, new deadline, limit. Claims overdue IDs
# atomically, so two sweepers never send the same ID in the same round.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id) end
return ids
"""


class Ledger:
    """Message storage plus per-ID deadlines and leases, for one delivery task."""

    def __init__(self, storage: RedisStorage, task_name: str) -> None:
        self.storage = storage
        self.redis: Any = storage.redis
        prefix = storage.prefix
        self.prefix = prefix
        self.due_key = f"{prefix}celery:due:{task_name}"
        self._lock_prefix = f"{prefix}celery:lock:{task_name}:"
        self.sweeper_key = f"{prefix}celery:sweeper:{task_name}"
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._claim = self.redis.register_script(_CLAIM)

    @staticmethod
    def _call(func: Callable[[], _T]) -> _T:
        try:
            return func()
        except redis.RedisError as exc:
            raise QueueError(f"redis storage: {exc}") from exc

    def lock_key(self, id: str) -> str:
        """The key of ``id``'s delivery lease."""
        return self._lock_prefix + id

    def write(self, envelope: Envelope, timestamp: float, deadline: float) -> str:
        """Store a new message, due at ``timestamp``, to be handled by ``deadline``.

        :raises slimta.queue.QueueError: Redis failed or refused it.
        """
        data = dumps(envelope, allow_pickle=False)
        id = uuid.uuid4().hex
        mapping = {
            "v": FORMAT_VERSION,
            "envelope": data,
            "timestamp": repr(float(timestamp)),
            "attempts": 0,
            "recipients": len(envelope.recipients),
        }

        def work() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.prefix + id, mapping=mapping)
            pipe.sadd(self.prefix + "ids", id)
            pipe.zadd(self.due_key, {id: float(deadline)})
            pipe.execute()

        self._call(work)
        return id

    def read(self, id: str) -> tuple[Envelope, int, float]:
        """The envelope without its done recipients, its attempts and next-attempt time.

        :raises KeyError: no such message.
        :raises slimta.queue.QueueError: Redis failed, or the stored message is
            unreadable (or carries pickled attributes); it is then moved aside to
            ``<prefix>corrupt:<id>`` and no longer listed or due.
        """
        fields = self._call(
            lambda: self.redis.hmget(
                self.prefix + id, ["envelope", "attempts", "delivered", "timestamp"]
            )
        )
        raw, attempts, delivered, timestamp = fields
        if raw is None:
            raise KeyError(id)
        try:
            envelope = loads(raw, allow_pickle=False)
            done = [int(i) for i in delivered.split(b",") if i] if delivered else []
            count = int(attempts or 0)
            when = float(timestamp or 0.0)
        except (CodecError, ValueError) as exc:
            self._quarantine(id, exc)
            raise QueueError(f"redis storage: message {id}: {exc}") from exc
        for index in sorted(set(done), reverse=True):
            if 0 <= index < len(envelope.recipients):
                del envelope.recipients[index]
        return envelope, count, when

    def _quarantine(self, id: str, why: object) -> None:
        _log.error(
            "celeryqueue: unreadable message %s moved to %scorrupt:%s: %s", id, self.prefix, id, why
        )

        def work() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.rename(self.prefix + id, self.prefix + "corrupt:" + id)
            pipe.srem(self.prefix + "ids", id)
            pipe.zrem(self.due_key, id)
            pipe.execute()

        try:
            self._call(work)
        except QueueError:
            _log.exception("celeryqueue: could not move %s aside", id)

    def remove(self, id: str) -> None:
        """Delete the message, its ID and its deadline.

        :raises slimta.queue.QueueError:
        """

        def work() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(self.prefix + id)
            pipe.srem(self.prefix + "ids", id)
            pipe.zrem(self.due_key, id)
            pipe.execute()

        self._call(work)

    def forget(self, id: str) -> None:
        """Drop the deadline of a message that is gone."""
        self._call(lambda: self.redis.zrem(self.due_key, id))

    def set_deadline(self, id: str, deadline: float) -> None:
        """Move the deadline of a message that still has one."""
        self._call(lambda: self.redis.zadd(self.due_key, {id: float(deadline)}, xx=True))

    def acquire(self, id: str, token: str, lease: float, now: float) -> bool:
        """Take the delivery lease on ``id`` for ``lease`` seconds; ``False`` if taken."""
        args = [token, _ms(lease), id, repr(now + lease)]
        keys = [self.lock_key(id), self.due_key]
        return bool(self._call(lambda: self._acquire(keys=keys, args=args)))

    def renew(self, id: str, token: str, lease: float, now: float) -> bool:
        """Extend a lease still held with ``token``; ``False`` if it was lost."""
        args = [token, _ms(lease), id, repr(now + lease)]
        keys = [self.lock_key(id), self.due_key]
        return bool(self._call(lambda: self._renew(keys=keys, args=args)))

    def release(self, id: str, token: str) -> None:
        """Give the lease up, if ``token`` still holds it."""
        self._call(lambda: self._release(keys=[self.lock_key(id)], args=[token]))

    def try_sweep_lock(self, token: str, ttl: float) -> bool:
        """Become this round's sweeper, for ``ttl`` seconds, unless another worker is."""
        return bool(
            self._call(lambda: self.redis.set(self.sweeper_key, token, nx=True, px=_ms(ttl)))
        )

    def claim_overdue(self, now: float, deadline: float, limit: int) -> list[str]:
        """IDs whose deadline passed, now given ``deadline``; at most ``limit`` of them."""
        ids = self._call(
            lambda: self._claim(keys=[self.due_key], args=[repr(now), repr(deadline), limit])
        )
        return [i.decode("ascii") if isinstance(i, bytes) else str(i) for i in ids]

    def info(self, now: float) -> dict[str, int]:
        """``size`` (messages stored), ``due`` (with a deadline), ``overdue``."""

        def work() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            pipe.scard(self.prefix + "ids")
            pipe.zcard(self.due_key)
            pipe.zcount(self.due_key, "-inf", repr(now))
            return list(pipe.execute())

        size, due, overdue = self._call(work)
        return {"size": int(size), "due": int(due), "overdue": int(overdue)}


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
