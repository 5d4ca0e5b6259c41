"""RedisStorage against a real redis-server on loopback."""

from functools import partial

import gevent
import pytest
from support import envelopes
from support.util import GUARD_SECONDS

pytest.importorskip("redis")

from slimta.envelope import Envelope  # noqa: E402
from slimta.queue import QueueError  # noqa: E402
from slimta.redisstorage import RedisStorage  # noqa: E402

RAW = (
    b"From:  Alice <alice@example.com>\r\n"
    b"Subject: a long\r\n\tfolded subject\r\n"
    b'Content-Type: multipart/alternative; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1--\r\n"
)


parsed_envelope = partial(
    envelopes.make_envelope,
    sender="alice@example.com",
    rcpts=["a@x.net", "b@x.net", "c@x.net", "d@x.net"],
    data=RAW,
    client={"ip": "192.0.2.1", "name": "x.example.com"},
    timestamp=1700000000.5,
)


def received_envelope() -> Envelope:
    """The shared envelope with a header added after parsing: the store must keep it."""
    env = parsed_envelope()
    env.prepend_header("Received", "from x by y; Tue, 1 Dec 2026 10:00:00 +0000")
    return env


@pytest.fixture
def store(redis_server, redis_prefix):
    store = RedisStorage(redis_server.host, redis_server.port, prefix=redis_prefix)
    yield store
    keys = store.redis.keys(redis_prefix + "*")
    if keys:
        store.redis.delete(*keys)
    store.redis.close()
    store.redis.connection_pool.disconnect()


def test_write_get_round_trip_is_byte_for_byte(store):
    env = received_envelope()
    id = store.write(env, 1234.5)
    got, attempts = store.get(id)
    assert attempts == 0 and got.flatten() == env.flatten()
    assert got.recipients == env.recipients and got.client == env.client
    assert list(store.load()) == [(1234.5, id)]
    assert store.get_info() == {"size": 1}
    assert store.wait() == [(1234.5, id)]


def test_updates_and_relative_delivered_indexes(store):
    id = store.write(received_envelope(), 1.0)
    assert store.increment_attempts(id) == 1
    assert store.increment_attempts(id) == 2
    store.set_timestamp(id, 77.25)
    store.set_recipients_delivered(id, [1])
    assert store.get(id)[0].recipients == ["a@x.net", "c@x.net", "d@x.net"]
    store.set_recipients_delivered(id, [0, 2])
    env, attempts = store.get(id)
    assert env.recipients == ["c@x.net"] and attempts == 2
    assert list(store.load()) == [(77.25, id)]


def test_remove_and_missing_messages(store):
    id = store.write(received_envelope(), 1.0)
    store.remove(id)
    assert list(store.load()) == [] and store.get_info() == {"size": 0}
    with pytest.raises(KeyError):
        store.get(id)
    # Updates never bring a removed message back as a half-empty hash.
    for call in (
        lambda: store.increment_attempts(id),
        lambda: store.set_timestamp(id, 5.0),
        lambda: store.set_recipients_delivered(id, [0]),
    ):
        with pytest.raises(KeyError):
            call()
    assert store.redis.exists(store.prefix + id) == 0


def test_corrupt_envelope_is_a_queue_error(store):
    id = store.write(received_envelope(), 1.0)
    store.redis.hset(store.prefix + id, "envelope", b"garbage")
    with pytest.raises(QueueError):
        store.get(id)


def test_unreachable_redis_is_a_queue_error():
    from support.util import free_port

    store = RedisStorage("127.0.0.1", free_port(), socket_timeout=2.0)
    with pytest.raises(QueueError):
        store.write(received_envelope(), 1.0)
    with pytest.raises(QueueError):
        list(store.load())


def test_wait_gives_up_and_is_called_again(redis_server, redis_prefix):
    store = RedisStorage(
        redis_server.host, redis_server.port, prefix=redis_prefix, socket_timeout=0.4
    )
    assert store.wait() == []  # nothing queued: an empty answer, not an error


def test_redis_io_is_cooperative(store):
    ticks = []
    seen_by_writer = []

    def ticker():
        while not seen_by_writer:
            ticks.append(1)
            gevent.sleep(0)

    def writer():
        ids = [store.write(received_envelope(), float(i)) for i in range(20)]
        seen_by_writer.append(len(ticks))
        return ids

    t = gevent.spawn(ticker)
    ids = gevent.spawn(writer).get(timeout=GUARD_SECONDS)
    t.join(GUARD_SECONDS)
    # Other greenlets ran while the writer waited on Redis.
    assert seen_by_writer[0] >= 20 and len(set(ids)) == 20


def test_more_concurrent_writers_than_connections_wait_their_turn(redis_server, redis_prefix):
    store = RedisStorage(
        redis_server.host, redis_server.port, prefix=redis_prefix, max_connections=4
    )
    try:
        jobs = [gevent.spawn(store.write, received_envelope(), float(i)) for i in range(200)]
        gevent.joinall(jobs, timeout=GUARD_SECONDS, raise_error=True)
        ids = [job.value for job in jobs]
        assert len(set(ids)) == 200 and store.get_info() == {"size": 200}
        assert len(store.redis.connection_pool._available_connections) <= 4
    finally:
        keys = store.redis.keys(redis_prefix + "*")
        if keys:
            store.redis.delete(*keys)
        store.redis.connection_pool.disconnect()


class RequestCounter:
    """Counts the requests (round trips) a store's client writes to Redis."""

    def __init__(self, store, monkeypatch):
        import redis

        self.count = 0
        real = redis.Connection.send_packed_command

        def send_packed_command(conn, command, check_health=True):
            self.count += 1
            return real(conn, command, check_health)

        monkeypatch.setattr(redis.Connection, "send_packed_command", send_packed_command)


def test_wait_takes_what_is_queued_in_one_round_trip(store, monkeypatch):
    ids = [store.write(received_envelope(), float(i)) for i in range(50)]
    requests = RequestCounter(store, monkeypatch)
    assert store.wait() == [(float(i), id) for i, id in enumerate(ids)]
    assert requests.count == 1
    assert store.redis.llen(store.queue_key) == 0


def test_wait_takes_batches_and_then_blocks(redis_server, redis_prefix, monkeypatch):
    from slimta import redisstorage

    monkeypatch.setattr(redisstorage, "WAIT_BATCH", 10)
    store = RedisStorage(
        redis_server.host, redis_server.port, prefix=redis_prefix, socket_timeout=0.4
    )
    try:
        ids = [store.write(received_envelope(), float(i)) for i in range(25)]
        got = [store.wait() for _ in range(3)]
        assert [len(batch) for batch in got] == [10, 10, 5]
        assert [id for batch in got for _, id in batch] == ids  # in order, each once
        # Nothing left: it blocks (BLPOP) and then gives up empty-handed.
        assert store.wait() == []
        later = store.write(received_envelope(), 99.0)
        assert store.wait() == [(99.0, later)]
    finally:
        keys = store.redis.keys(redis_prefix + "*")
        if keys:
            store.redis.delete(*keys)
        store.redis.connection_pool.disconnect()


def test_concurrent_writes_and_removals_share_round_trips(store, monkeypatch):
    requests = RequestCounter(store, monkeypatch)
    jobs = [gevent.spawn(store.write, received_envelope(), float(i)) for i in range(100)]
    gevent.joinall(jobs, timeout=GUARD_SECONDS, raise_error=True)
    ids = [job.value for job in jobs]
    written = requests.count
    assert len(set(ids)) == 100 and store.get_info() == {"size": 100}
    assert all(store.get(id)[0].recipients == received_envelope().recipients for id in ids[::10])
    requests.count = 0
    removals = [gevent.spawn(store.remove, id) for id in ids]
    gevent.joinall(removals, timeout=GUARD_SECONDS, raise_error=True)
    removed = requests.count
    assert store.get_info() == {"size": 0}
    for id in ids[::10]:
        with pytest.raises(KeyError):
            store.get(id)
    # A lone write would take one round trip each; together they share them.
    assert written <= 10 and removed <= 10, (written, removed)


def test_a_failed_command_in_a_shared_batch_fails_only_its_own_caller(store, monkeypatch):
    import uuid

    ids = iter([uuid.UUID(int=n) for n in range(1, 4)])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(ids))
    # A key of the wrong type makes the second message's HSET fail inside the batch.
    store.redis.set(store.prefix + uuid.UUID(int=2).hex, "not a hash")
    jobs = [gevent.spawn(store.write, received_envelope(), 1.0) for _ in range(3)]
    gevent.joinall(jobs, timeout=GUARD_SECONDS)
    assert isinstance(jobs[1].exception, QueueError)
    assert jobs[0].value == uuid.UUID(int=1).hex and jobs[2].value == uuid.UUID(int=3).hex
    assert store.get(jobs[0].value)[1] == 0 and store.get(jobs[2].value)[1] == 0
