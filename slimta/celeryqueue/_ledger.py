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
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

import redis

from slimta.envelope import Envelope
from slimta.queue import QueueError
from slimta.queue.codec import CodecError, loads
from slimta.redisstorage import RedisStorage, new_record

__all__ = ["Ledger", "Taken"]

#: What :meth:`Ledger.take` reads: the envelope without its done recipients,
#: its attempts and its next-attempt time.
Taken: TypeAlias = tuple[Envelope, int, float]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# KEYS[1] the message, KEYS[2] the due set, KEYS[3] the lock; ARGV id, token,
# ttl ms, deadline. One round trip starts a delivery: a message that is gone
# loses its deadline ({0}); one leased by another worker is left alone ({1});
# otherwise the lease is taken, the deadline moved past it, and the fields read.
_TAKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {0}
end
if not redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then return {1} end
redis.call('ZADD', KEYS[2], 'XX', ARGV[4], ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'envelope', 'attempts', 'delivered', 'timestamp')
return {2, f[1], f[2], f[3], f[4]}
"""
# KEYS[1] the lock, KEYS[2] the due set; ARGV token, ttl ms, id, deadline.
# Only the holder extends its lease and the deadline.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'XX', ARGV[4], ARGV[3])
return 1
"""
# KEYS[1] the message, KEYS[2] the ID set, KEYS[3] the due set, KEYS[4] the
# lock; ARGV id, token. The message is done: delete it and give the lease up.
_FINISH = """
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
return 1
"""
# KEYS[1] the message, KEYS[2] the due set, KEYS[3] the lock; ARGV id, token,
# deadline, next-attempt time ('' to keep it). Set the next attempt of a message
# that still exists, move its deadline and give the lease up.
_RESCHEDULE = """
if ARGV[4] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'timestamp', ARGV[4])
end
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1])
if redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('DEL', KEYS[3]) end
return 1
"""
# KEYS[1] the lock; ARGV token.
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
        self._take = self.redis.register_script(_TAKE)
        self._finish = self.redis.register_script(_FINISH)
        self._reschedule = self.redis.register_script(_RESCHEDULE)
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
        id, mapping = new_record(envelope, timestamp, allow_pickle=False)

        def work() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.prefix + id, mapping=mapping)
            pipe.sadd(self.prefix + "ids", id)
            pipe.zadd(self.due_key, {id: float(deadline)})
            pipe.execute()

        self._call(work)
        return id

    def take(self, id: str, token: str, lease: float, now: float) -> Taken | None:
        """Lease ``id`` for ``lease`` seconds and read it, in one round trip.

        The deadline moves to ``now + lease`` (the heartbeat keeps it ahead).

        :returns: the envelope without its done recipients, its attempts and
            its next-attempt time; ``None`` when another worker holds the lease.
        :raises KeyError: no such message (its deadline is dropped too).
        :raises slimta.queue.QueueError: Redis failed, or the stored message is
            unreadable (or carries pickled attributes); it is then moved aside to
            ``<prefix>corrupt:<id>`` and no longer listed or due.
        """
        keys = [self.prefix + id, self.due_key, self.lock_key(id)]
        args = [id, token, _ms(lease), repr(now + lease)]
        reply = self._call(lambda: self._take(keys=keys, args=args))
        status = int(reply[0])
        if status == 0:
            raise KeyError(id)
        if status == 1:
            return None
        raw, attempts, delivered, timestamp = (list(reply[1:]) + [None] * 4)[:4]
        try:
            if raw is None:
                raise ValueError("no envelope field")
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

    def finish(self, id: str, token: str) -> None:
        """Delete a delivered (or bounced) message and give up its lease, in one round trip.

        :raises slimta.queue.QueueError:
        """
        keys = [self.prefix + id, self.prefix + "ids", self.due_key, self.lock_key(id)]
        self._call(lambda: self._finish(keys=keys, args=[id, token]))

    def reschedule(
        self, id: str, token: str, deadline: float, next_attempt: float | None = None
    ) -> None:
        """Move the deadline (and the next-attempt time, if given) and give the lease up.

        One round trip. The next-attempt time is written only if the message
        still exists; the deadline only if it still has one.

        :raises slimta.queue.QueueError:
        """
        keys = [self.prefix + id, self.due_key, self.lock_key(id)]
        when = "" if next_attempt is None else repr(float(next_attempt))
        self._call(lambda: self._reschedule(keys=keys, args=[id, token, repr(deadline), when]))

    def renew_all(self, leases: dict[str, str], lease: float, now: float) -> list[str]:
        """Extend every lease in ``leases`` (ID -> token) in one round trip.

        :returns: the IDs whose lease was lost (taken over, or expired).
        :raises slimta.queue.QueueError:
        """
        ids = list(leases)
        ttl, deadline = _ms(lease), repr(now + lease)

        def work() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for id in ids:
                args = [leases[id], ttl, id, deadline]
                self._renew(keys=[self.lock_key(id), self.due_key], args=args, client=pipe)
            return list(pipe.execute())

        results = self._call(work)
        return [id for id, ok in zip(ids, results, strict=True) if not ok]

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
