"""A :class:`~slimta.queue.QueueStorage` on Redis, through redis-py.

Install with the ``redis`` extra: ``pip install 'slimta-relay[redis]'``.

Each message is one hash, ``<prefix><id>``: the envelope in the versioned format
of :mod:`slimta.queue.codec` (message bytes as received), the next attempt's
time, the attempt count, the number of recipients and which of them are done.
The IDs of stored messages are kept in the set ``<prefix>ids`` (what
:meth:`RedisStorage.load` reads, without scanning the key space), and each new
ID is pushed on the list ``<prefix>queue`` for :meth:`RedisStorage.wait`.

Each operation is at most one round trip: writes go out as one
``MULTI``/``EXEC``, and the updates that must not recreate a removed message (or
must read before they write) run as small server-side scripts. Writes and
removals that greenlets make at the same time share round trips: one
``MULTI``/``EXEC`` carries all of them (a group commit), and
:meth:`~RedisStorage.wait` takes the queued IDs in batches. Sockets are gevent's, so a slow Redis
never blocks other greenlets. How durable a write is depends on the server's
persistence settings: with ``appendonly yes`` and ``appendfsync always`` an
acknowledged write survives a crash of Redis itself.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import gevent
import redis
from gevent import socket as gsocket
from gevent.lock import BoundedSemaphore

from slimta.envelope import Envelope
from slimta.logging import getQueueStorageLogger
from slimta.queue import QueueError, QueueStorage
from slimta.queue.codec import CodecError, dumps, loads

from ._batch import Coalescer

__all__ = ["RedisStorage", "GeventConnection", "new_record"]

_log = logging.getLogger(__name__)
log = getQueueStorageLogger(__name__)

_T = TypeVar("_T")

#: The version written in each message's hash.
FORMAT_VERSION = 1

#: :meth:`RedisStorage.wait` takes at most this many queue entries per round trip.
WAIT_BATCH = 512

# KEYS[1] the message; ARGV[1] the field, ARGV[2] the value. Nothing is created
# for a message that is gone.
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NOKEY') end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

_INCR_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('NOKEY') end
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

# KEYS[1] the message; ARGV the indexes (into the recipients not yet done) of
# the recipients now done. Stores the original indexes of every done recipient.
_MARK_DELIVERED = """
local n = tonumber(redis.call('HGET', KEYS[1], 'recipients'))
if not n then return redis.error_reply('NOKEY') end
local done = {}
local raw = redis.call('HGET', KEYS[1], 'delivered')
if raw then
  for i in string.gmatch(raw, '%d+') do done[tonumber(i)] = true end
end
local remaining = {}
for i = 0, n - 1 do
  if not done[i] then remaining[#remaining + 1] = i end
end
for _, a in ipairs(ARGV) do
  local index = remaining[tonumber(a) + 1]
  if index ~= nil then done[index] = true end
end
local out = {}
for i = 0, n - 1 do
  if done[i] then out[#out + 1] = tostring(i) end
end
redis.call('HSET', KEYS[1], 'delivered', table.concat(out, ','))
return #out
"""


#: Queues one operation's commands on a pipeline; returns how many it queued.
_Commands = Callable[[Any], int]


def _interrupted() -> Exception:
    return QueueError("redis storage: the operation was interrupted")


class GeventConnection(redis.Connection):
    """A redis-py connection over a gevent socket (cooperative without monkey-patching)."""

    def _connect(self) -> socket.socket:
        sock: Any = gsocket.create_connection(
            (self.host, self.port), timeout=self.socket_connect_timeout
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.socket_timeout)
        return sock


def new_record(
    envelope: Envelope, timestamp: float, *, allow_pickle: bool = True
) -> tuple[str, dict[str, Any]]:
    """A new message's ID and the hash fields it is stored as (format :data:`FORMAT_VERSION`).

    :param allow_pickle: see :func:`slimta.queue.codec.dump_parts`.
    """
    mapping = {
        "v": FORMAT_VERSION,
        "envelope": dumps(envelope, allow_pickle=allow_pickle),
        "timestamp": repr(float(timestamp)),
        "attempts": 0,
        "recipients": len(envelope.recipients),
    }
    return uuid.uuid4().hex, mapping


class RedisStorage(QueueStorage):
    """Stores the queue in Redis.

    :param host: the Redis server's host name or address.
    :param port: its port.
    :param db: the database number.
    :param password: the password, if the server asks for one.
    :param socket_timeout: seconds to wait for Redis before an operation fails
        (``None``: no limit).
    :param prefix: put in front of every key this store creates.
    :param max_connections: at most this many operations talk to Redis at once,
        each on its own connection; more wait their turn (cooperatively) instead
        of failing. A new keyword.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        socket_timeout: float | None = None,
        prefix: str = "slimta:",
        *,
        max_connections: int = 64,
    ) -> None:
        super().__init__()
        # redis-py's pool raises once its limit is reached, and its blocking
        # variant waits on a thread lock, which would stop the gevent hub; a
        # gevent semaphore in front keeps the pool within its limit instead.
        self._slots = BoundedSemaphore(max_connections)
        pool = redis.ConnectionPool(
            max_connections=max_connections,
            connection_class=GeventConnection,
            host=host,
            port=port,
            db=db,
            password=password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
        )
        #: The redis-py client.
        self.redis: Any = redis.Redis(connection_pool=pool)
        self.prefix = prefix
        self.queue_key = prefix + "queue"
        self.ids_key = prefix + "ids"
        # BLPOP must give up before the socket does; an empty answer just means
        # wait() is called again.
        self._block_for = 5.0 if socket_timeout is None else max(0.1, socket_timeout / 2)
        # Whether the next wait() should first take what is already queued
        # (one round trip for up to WAIT_BATCH entries) before blocking.
        self._drain_first = True
        self._set_if_exists = self.redis.register_script(_SET_IF_EXISTS)
        self._incr_if_exists = self.redis.register_script(_INCR_IF_EXISTS)
        self._mark_delivered = self.redis.register_script(_MARK_DELIVERED)
        # Writes and removals of concurrent greenlets, sent together; one
        # batcher per hub, since greenlets of different threads never share
        # a batch (keyed by hub, not by thread: monkey-patching makes
        # threading.local per greenlet).
        self._batchers: weakref.WeakKeyDictionary[Any, Coalescer[_Commands]] = (
            weakref.WeakKeyDictionary()
        )

    def _key(self, id: str | bytes) -> str:
        if isinstance(id, bytes):
            id = id.decode("ascii")
        return self.prefix + id

    def _call(self, id: str | None, func: Callable[[], _T]) -> _T:
        try:
            with self._slots:
                return func()
        except redis.ResponseError as exc:
            if id is not None and "NOKEY" in str(exc):
                raise KeyError(id) from None
            raise QueueError(f"redis storage: {exc}") from exc
        except redis.RedisError as exc:
            raise QueueError(f"redis storage: {exc}") from exc

    def _send_batch(self, ops: list[_Commands]) -> list[object]:
        """Send every operation's commands in one ``MULTI``/``EXEC``; one result list each."""

        def work() -> list[object]:
            pipe = self.redis.pipeline(transaction=True)
            counts = [op(pipe) for op in ops]
            replies = pipe.execute(raise_on_error=False)
            out: list[object] = []
            start = 0
            for count in counts:
                out.append(replies[start : start + count])
                start += count
            return out

        return self._call(None, work)

    def _batched(self, op: _Commands) -> None:
        hub = gevent.get_hub()
        batches = self._batchers.get(hub)
        if batches is None:
            batches = self._batchers[hub] = Coalescer(self._send_batch, _interrupted)
        replies = batches.run(op)
        for reply in replies if isinstance(replies, list) else ():
            if isinstance(reply, Exception):
                raise QueueError(f"redis storage: {reply}") from reply

    def write(self, envelope: Envelope, timestamp: float) -> str:
        """Store the message, its metadata, its ID and the wake-up entry in one transaction.

        Writes made at the same time by other greenlets share that transaction
        and its round trip.

        :raises slimta.queue.QueueError: Redis refused it or could not be reached.
        """
        id, mapping = new_record(envelope, timestamp)
        entry = json.dumps([float(timestamp), id])

        def commands(pipe: Any) -> int:
            pipe.hset(self._key(id), mapping=mapping)
            pipe.sadd(self.ids_key, id)
            pipe.rpush(self.queue_key, entry)
            return 3

        self._batched(commands)
        log.write(id, envelope)
        return id

    def set_timestamp(self, id: str, timestamp: float) -> None:
        """Set when the next attempt is due.

        :raises KeyError: no such message.
        """
        value = repr(float(timestamp))
        self._call(id, lambda: self._set_if_exists(keys=[self._key(id)], args=["timestamp", value]))
        log.update_meta(id, timestamp=timestamp)

    def increment_attempts(self, id: str) -> int:
        """Count one more attempt; returns the new count.

        :raises KeyError: no such message.
        """
        attempts = int(self._call(id, lambda: self._incr_if_exists(keys=[self._key(id)])))
        log.update_meta(id, attempts=attempts)
        return attempts

    def set_recipients_delivered(self, id: str, rcpt_indexes: Sequence[int]) -> None:
        """Record recipients as done, by their indexes in the envelope :meth:`get` gave.

        :raises KeyError: no such message.
        """
        args = [int(i) for i in rcpt_indexes]
        self._call(id, lambda: self._mark_delivered(keys=[self._key(id)], args=args))
        log.update_meta(id, delivered_indexes=args)

    def load(self) -> Iterator[tuple[float, str]]:
        """Every stored message, as ``(timestamp, id)``."""

        def work() -> list[tuple[float, str]]:
            ids = [i.decode("ascii") for i in self.redis.smembers(self.ids_key)]
            pipe = self.redis.pipeline(transaction=False)
            for id in ids:
                pipe.hget(self._key(id), "timestamp")
            found = []
            for id, raw in zip(ids, pipe.execute(), strict=True):
                if raw is None:
                    continue  # removed meanwhile
                try:
                    found.append((float(raw), id))
                except ValueError:
                    # Still listed: get() reads the whole message and decides.
                    _log.error("redis storage: bad timestamp for %s: %r", id, raw)
                    found.append((0.0, id))
            return found

        return iter(self._call(None, work))

    def get(self, id: str) -> tuple[Envelope, int]:
        """The envelope (without recipients already done) and its attempt count.

        :raises KeyError: no such message.
        :raises slimta.queue.QueueError: Redis failed, or the stored bytes are
            unreadable; then the hash is renamed ``<prefix>corrupt:<id>`` (kept
            for an operator, no longer listed) and a later :meth:`get` raises
            :exc:`KeyError`.
        """
        fields = self._call(
            None,
            lambda: self.redis.hmget(self._key(id), ["envelope", "attempts", "delivered"]),
        )
        raw, attempts, delivered = fields
        if raw is None:
            raise KeyError(id)
        try:
            envelope = loads(raw)
            done = [int(i) for i in delivered.split(b",") if i] if delivered else []
            count = int(attempts or 0)
        except (CodecError, ValueError) as exc:
            self._quarantine(id, exc)
            raise QueueError(f"redis storage: message {id}: {exc}") from exc
        self._remove_delivered_rcpts(envelope, done)
        return envelope, count

    def _quarantine(self, id: str, why: object) -> None:
        """Move an unreadable message's hash to ``<prefix>corrupt:<id>``, out of the queue."""
        _log.error(
            "redis storage: unreadable message %s moved to %scorrupt:%s: %s",
            id,
            self.prefix,
            id,
            why,
        )

        def work() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.rename(self._key(id), self.prefix + "corrupt:" + id)
            pipe.srem(self.ids_key, id)
            pipe.execute()

        try:
            self._call(None, work)
        except QueueError:
            _log.exception("redis storage: could not move %s aside", id)

    def remove(self, id: str) -> None:
        """Delete the message and its ID (one round trip, shared with concurrent callers)."""

        def commands(pipe: Any) -> int:
            pipe.delete(self._key(id))
            pipe.srem(self.ids_key, id)
            return 2

        self._batched(commands)
        log.remove(id)

    def wait(self) -> list[tuple[float, str]]:
        """Block until messages are stored (by any process); returns their ``(timestamp, id)``.

        Entries already queued are taken up to :data:`WAIT_BATCH` at a time, in
        one round trip; only when none is left does it block (``BLPOP``), and
        an empty list after a while without news just means "call again".
        """
        raw: list[bytes] = []
        if self._drain_first:
            raw = self._call(None, self._pop_batch)
        if raw:
            # A full batch probably left more behind: drain again next time.
            self._drain_first = len(raw) >= WAIT_BATCH
        else:
            popped = self._call(None, lambda: self.redis.blpop([self.queue_key], self._block_for))
            if not popped:
                self._drain_first = False
                return []
            raw = [popped[1]]
            self._drain_first = True  # more may have come in with it
        entries = []
        for item in raw:
            try:
                timestamp, id = json.loads(item)
                entries.append((float(timestamp), str(id)))
            except (ValueError, TypeError):
                _log.error("redis storage: bad queue entry %r", item)
        return entries

    def _pop_batch(self) -> list[bytes]:
        # LRANGE + LTRIM in one MULTI/EXEC: atomic, so two waiters never take
        # the same entry, and one round trip however many entries it takes.
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrange(self.queue_key, 0, WAIT_BATCH - 1)
        pipe.ltrim(self.queue_key, WAIT_BATCH, -1)
        entries, _ = pipe.execute()
        return list(entries)

    def get_info(self) -> dict[str, Any]:
        """``{'size': <messages stored>}``."""
        return {"size": int(self._call(None, lambda: self.redis.scard(self.ids_key)))}
