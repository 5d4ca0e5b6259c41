"""slimta.celeryqueue without a broker: the task payload, the no-pickle envelope
format, the constructor's checks, and what one attempt's result makes the task do
(with the Redis side replaced by an in-memory ledger).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from unittest.mock import ANY

import pytest
from support.util import IN_CI

try:
    import celery
except ImportError:  # pragma: no cover - the test extra installs it
    if IN_CI:
        raise
    pytest.skip("celery is not installed", allow_module_level=True)

from celery.exceptions import Reject  # noqa: E402

from slimta.celeryqueue import (  # noqa: E402
    PAYLOAD_VERSION,
    TASK_NAME,
    CeleryQueue,
    PayloadError,
    _delivery,  # noqa: E402
    make_payload,
    parse_payload,
)
from slimta.envelope import Envelope  # noqa: E402
from slimta.policy import QueuePolicy  # noqa: E402
from slimta.queue import QueueError  # noqa: E402
from slimta.queue.codec import CodecError, dumps, loads  # noqa: E402
from slimta.redisstorage import RedisStorage  # noqa: E402
from slimta.relay import PermanentRelayError, Relay, TransientRelayError  # noqa: E402
from slimta.smtp.reply import Reply  # noqa: E402

ID = "0123456789abcdef0123456789abcdef"


# -- the payload -------------------------------------------------------------------
def test_payload_round_trip_is_small_json() -> None:
    payload = make_payload(ID)
    assert json.loads(json.dumps(payload)) == {"v": PAYLOAD_VERSION, "id": ID}
    assert parse_payload(json.loads(json.dumps(payload))) == ID


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "not an object"),
        ("garbage", "not an object"),
        ([1, ID], "not an object"),
        ({"id": ID}, "missing"),
        ({"v": True, "id": ID}, "not an integer"),
        ({"v": "1", "id": ID}, "not an integer"),
        ({"v": 2, "id": ID}, "version 2 is not supported"),
        ({"v": 0, "id": ID}, "version 0 is not supported"),
        ({"v": 1, "id": ID, "envelope": "x"}, "unexpected payload fields"),
        ({"v": 1}, "unexpected payload fields"),
        ({"v": 1, "id": ID.upper()}, "not a queue ID"),
        ({"v": 1, "id": ID[:-1]}, "not a queue ID"),
        ({"v": 1, "id": "../" + ID[3:]}, "not a queue ID"),
        ({"v": 1, "id": 5}, "not a queue ID"),
    ],
)
def test_bad_payloads_are_refused(payload: Any, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        parse_payload(payload)


def test_make_payload_refuses_a_bad_id() -> None:
    with pytest.raises(PayloadError):
        make_payload("not-an-id")


# -- the envelope at rest, without pickle ------------------------------------------
def _env() -> Envelope:
    env = Envelope("sender@example.com", ["a@example.com", "b@example.com"])
    env.parse(b"From: <sender@example.com>\r\nSubject: x\r\n\r\nbody \xff\r\n")
    env.timestamp = 1234.5
    return env


class _Exploding:
    """Records (in a class attribute) whether it was ever unpickled."""

    unpickled = 0

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_Exploding._mark, ())

    @staticmethod
    def _mark() -> None:
        _Exploding.unpickled += 1


def test_no_pickle_round_trip_keeps_json_attributes() -> None:
    env = _env()
    env.client = {"ip": "192.0.2.1", "name": ("a", "b")}
    env.tag = {"n": 1, "s": "x"}
    data = dumps(env, allow_pickle=False)
    assert b'"pickled"' not in data
    back = loads(data, allow_pickle=False)
    assert back.tag == {"n": 1, "s": "x"}
    assert back.client == {"ip": "192.0.2.1", "name": ["a", "b"]}
    assert back.recipients == env.recipients and back.timestamp == 1234.5
    assert b"".join(back.flatten()) == b"".join(env.flatten())


def test_no_pickle_drops_what_json_cannot_hold(caplog: pytest.LogCaptureFixture) -> None:
    env = _env()
    env.thing = object()
    with caplog.at_level(logging.WARNING):
        data = dumps(env, allow_pickle=False)
    assert "'thing' is not JSON" in caplog.text
    assert not hasattr(loads(data, allow_pickle=False), "thing")


def test_no_pickle_loads_refuses_pickled_attributes_without_unpickling() -> None:
    env = _env()
    env.bomb = _Exploding()
    data = dumps(env)  # the default still pickles, as python-slimta's stores did
    assert b'"pickled"' in data
    before = _Exploding.unpickled
    with pytest.raises(CodecError, match="pickled"):
        loads(data, allow_pickle=False)
    assert _Exploding.unpickled == before
    loads(data)  # the default reader still reads it
    assert _Exploding.unpickled == before + 1


def test_attrs_cannot_overwrite_known_fields() -> None:
    data = dumps(_env(), allow_pickle=False)
    head, meta, rest = data.split(b"\r\n", 2)
    fields = json.loads(meta)
    fields["attrs"] = {"recipients": ["evil@example.com"]}
    forged = head + b"\r\n" + json.dumps(fields).encode() + b"\r\n" + rest
    with pytest.raises(CodecError, match="attribute 'recipients'"):
        loads(forged, allow_pickle=False)


# -- the constructor -----------------------------------------------------------------
def _app(**conf: Any) -> Any:
    app = celery.Celery("unit", broker="redis://127.0.0.1:1/3", set_as_current=False)
    app.conf.update({"accept_content": ["json"], **conf})
    return app


def _queue(app: Any = None, **kwargs: Any) -> CeleryQueue:
    store = RedisStorage(port=1, prefix="unit:")
    return CeleryQueue(app or _app(), Relay(), store=store, **kwargs)


@pytest.mark.parametrize("content", [["json", "pickle"], ["application/x-python-serialize"]])
def test_an_app_accepting_pickle_is_refused(content: list[str]) -> None:
    with pytest.raises(ValueError, match="pickle"):
        _queue(_app(accept_content=content))


def test_task_options() -> None:
    queue = _queue(suffix="mx")
    task = queue.attempt_task
    assert task.name == "attempt_delivery_mx"
    assert (task.acks_late, task.reject_on_worker_lost, task.max_retries) == (True, True, None)
    assert task.serializer == "json"
    # python-slimta-celeryqueue's names: Celery named its unsuffixed task
    # after the module and the method.
    assert _queue().attempt_task.name == "slimta.celeryqueue.attempt_delivery"


def test_one_app_two_queues_need_two_suffixes() -> None:
    app = _app()
    mx = _queue(app, suffix="mx")
    local = _queue(app, suffix="local")
    plain = _queue(app)
    for again in ({"suffix": "mx"}, {}):
        with pytest.raises(ValueError, match="its own suffix"):
            _queue(app, **again)
    # Each queue's task runs its own body, on its own ledger.
    names = {mx.attempt_task.name, local.attempt_task.name, plain.attempt_task.name}
    assert names == {"attempt_delivery_mx", "attempt_delivery_local", TASK_NAME}
    app.finalize()
    for queue in (mx, local, plain):
        registered = app.tasks[queue.attempt_task.name]
        assert registered.run.__closure__[0].cell_contents is queue
    assert {mx.ledger.due_key, local.ledger.due_key, plain.ledger.due_key} == {
        f"unit:celery:due:{name}" for name in names
    }


def test_a_name_taken_by_another_task_is_refused() -> None:
    app = _app()

    @app.task(name="attempt_delivery_x", shared=False)
    def other() -> None:
        pass

    app.finalize()
    with pytest.raises(ValueError, match="already has a task named 'attempt_delivery_x'"):
        _queue(app, suffix="x")


def test_queues_on_other_apps_do_not_leak_their_task(recwarn: pytest.WarningsRecorder) -> None:
    first = _queue()
    app = _app()
    second = _queue(app)
    app.finalize()
    # Celery shares tasks with every later app unless told not to: the second
    # app would have run the first queue's task, and warned.
    assert app.tasks[TASK_NAME].run.__closure__[0].cell_contents is second
    assert first.attempt_task.app is not app
    assert not [w for w in recwarn if "Duplicate" in type(w.message).__name__]


def test_python_slimta_celeryqueue_methods() -> None:
    queue = _queue()
    with pytest.raises(NotImplementedError):
        queue.flush()
    with pytest.raises(TypeError):
        queue.add_policy("not a policy")  # type: ignore[arg-type]
    queue.add_policy(QueuePolicy())
    queue.kill()


def test_default_store_is_on_the_broker_redis() -> None:
    app = celery.Celery("unit", broker="redis://:s%40cret@redis.test:6380/4", set_as_current=False)
    app.conf.accept_content = ["json"]
    queue = CeleryQueue(app, Relay())
    kwargs = queue.store.redis.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.test", 6380, 4)
    assert kwargs["password"] == "s@cret"
    amqp = celery.Celery("unit", broker="amqp://guest@localhost//", set_as_current=False)
    amqp.conf.accept_content = ["json"]
    with pytest.raises(ValueError, match="store="):
        CeleryQueue(amqp, Relay())
    # A refused queue does not keep its task name: with a store, it is built.
    assert _queue(amqp).attempt_task.name == TASK_NAME


def test_a_message_without_recipients_is_refused_before_storing() -> None:
    [(_, result)] = _queue().enqueue(Envelope("s@example.com", []))
    assert isinstance(result, QueueError)
    assert result.reply is not None and result.reply.code == "554"


def test_store_down_gives_451() -> None:
    [(_, result)] = _queue().enqueue(_env())
    assert isinstance(result, QueueError)
    assert result.reply is not None
    assert (result.reply.code, result.reply.message) == ("451", "4.3.0 Could not store the message")


# -- what the task does with one attempt's result --------------------------------------
class _Retry(Exception):
    pass


class _Task:
    def __init__(self, log: list[tuple[Any, ...]] | None = None) -> None:
        self.request = type("Request", (), {"id": "task-1"})()
        self.retries: list[dict[str, Any]] = []
        self.log = log if log is not None else []

    def retry(self, **kwargs: Any) -> _Retry:
        self.retries.append(kwargs)
        self.log.append(("retry",))
        return _Retry()


class _Memory:
    """Stands in for both the ledger and the store, recording every call."""

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.attempts = 0
        self.calls: list[tuple[Any, ...]] = []
        self.removed = False
        self.next_at = 0.0
        self.taken = False
        self.renewals: list[tuple[dict[str, str], float, float]] = []
        self.lost: set[str] = set()

    def take(self, id: str, token: str, lease: float, now: float) -> Any:
        self.calls.append(("take", id))
        if self.removed:
            raise KeyError(id)
        if self.taken:
            return None
        envelope = self.envelope.copy(list(self.envelope.recipients))
        return envelope, self.attempts, self.next_at

    def renew_all(self, leases: dict[str, str], lease: float, now: float) -> list[str]:
        self.renewals.append((dict(leases), lease, now))
        return [id for id in leases if id in self.lost]

    def release(self, id: str, token: str) -> None:
        self.calls.append(("release", id))

    def finish(self, id: str, token: str) -> None:
        self.calls.append(("finish", id))
        self.removed = True

    def reschedule(self, id: str, token: str, deadline: float, next_attempt: Any) -> None:
        self.calls.append(("reschedule", id, deadline, next_attempt))

    def set_recipients_delivered(self, id: str, indexes: list[int]) -> None:
        self.calls.append(("delivered", list(indexes)))
        for index in sorted(indexes, reverse=True):
            del self.envelope.recipients[index]

    def increment_attempts(self, id: str) -> int:
        self.attempts += 1
        self.calls.append(("attempts", self.attempts))
        return self.attempts


class _Relay(Relay):
    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result
        self.seen: list[list[str]] = []
        self.held: list[dict[str, str]] = []
        self.queue: CeleryQueue | None = None

    def attempt(self, envelope: Envelope, attempts: int) -> Any:
        self.seen.append(list(envelope.recipients))
        if self.queue is not None:
            self.held.append(dict(self.queue._held))
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def _run(
    result: Any, rcpts: list[str], backoff: Any = None, **state: Any
) -> tuple[CeleryQueue, _Memory, _Task, list[Envelope], Any]:
    env = Envelope("sender@example.com", rcpts)
    env.parse(b"Subject: x\r\n\r\nbody\r\n")
    bounces: list[Envelope] = []
    relay = _Relay(result)
    queue = CeleryQueue(
        _app(),
        relay,
        backoff=backoff or (lambda envelope, attempts: 30.0),
        store=RedisStorage(port=1, prefix="unit:"),
    )
    relay.queue = queue
    memory = _Memory(env)
    vars(memory).update(state)
    queue.ledger = memory  # type: ignore[assignment]
    queue.store = memory  # type: ignore[assignment]
    queue._time = lambda: 1000.0
    queue.enqueue = lambda bounce: bounces.append(bounce) or [(bounce, ID)]  # type: ignore[method-assign,func-returns-value]
    task = _Task(memory.calls)
    try:
        outcome: Any = queue._task_body(task, make_payload(ID))
    except _Retry:
        outcome = "retry"
    finally:
        queue.kill()
    return queue, memory, task, bounces, outcome


def test_all_delivered_takes_then_finishes() -> None:
    # Two ledger round trips: take (lease + read), finish (remove + release).
    queue, memory, task, bounces, outcome = _run(None, ["a@example.com", "b@example.com"])
    assert outcome == "delivered"
    assert memory.calls == [("take", ID), ("finish", ID)]
    assert not bounces and not task.retries
    # The lease was kept alive during the attempt, and let go after it.
    assert queue.relay.held == [{ID: ANY}]  # type: ignore[attr-defined]
    assert queue._held == {}


def test_one_renewer_keeps_every_held_lease_and_drops_lost_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = _queue(lease=30.0)
    memory = _Memory(_env())
    queue.ledger = memory  # type: ignore[assignment]
    queue._time = lambda: 1000.0
    other = "f" * 32
    memory.lost = {other}
    queue._held = {ID: "t1", other: "t2"}
    sleeps: list[float] = []
    after_first: dict[str, str] = {}

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            after_first.update(queue._held)
            queue._held.clear()  # the deliveries end: the renewer stops

    monkeypatch.setattr(_delivery.gevent, "sleep", sleep)
    queue._renew_held()
    assert sleeps == [10.0, 10.0]
    # One call (one round trip) for both leases; the lost one is let go.
    assert memory.renewals == [({ID: "t1", other: "t2"}, 30.0, 1000.0)]
    assert after_first == {ID: "t1"}


def test_partial_250_550_450_records_bounces_then_retries_the_rest() -> None:
    rcpts = ["ok@example.com", "perm@example.com", "temp@example.com"]
    result = {
        "ok@example.com": None,
        "perm@example.com": PermanentRelayError("no", Reply("550", "5.1.1 No such user")),
        "temp@example.com": TransientRelayError("later", Reply("450", "4.2.1 Busy")),
    }
    queue, memory, task, bounces, outcome = _run(result, rcpts)
    assert outcome == "retry"
    # Delivered first (index 0), then the bounced one (index 0 of what is left);
    # the next attempt, the deadline and the lease in one step, before the retry.
    assert memory.calls == [
        ("take", ID),
        ("delivered", [0]),
        ("delivered", [0]),
        ("attempts", 1),
        ("reschedule", ID, 1030.0 + queue.dispatch_timeout, 1030.0),
        ("retry",),
    ]
    assert memory.envelope.recipients == ["temp@example.com"]
    [bounce] = bounces
    assert bounce.recipients == ["sender@example.com"] and bounce.sender in ("", None)
    assert b"5.1.1 No such user" in b"".join(bounce.flatten())
    assert task.retries == [{"args": [make_payload(ID)], "kwargs": {}, "countdown": 30.0}]


def test_backoff_none_bounces_too_many_retries_and_removes() -> None:
    error = TransientRelayError("later", Reply("451", "4.4.1 Timeout"))
    _, memory, task, bounces, outcome = _run(
        error, ["a@example.com"], backoff=lambda envelope, attempts: None
    )
    assert outcome == "bounced"
    assert memory.calls == [("take", ID), ("attempts", 1), ("finish", ID)]
    assert not task.retries
    [bounce] = bounces
    assert b"Too many retries" in b"".join(bounce.flatten())


def test_unexpected_relay_error_is_transient() -> None:
    _, memory, task, bounces, outcome = _run(RuntimeError("boom"), ["a@example.com"])
    assert outcome == "retry" and not bounces
    assert [c[0] for c in memory.calls] == ["take", "attempts", "reschedule", "retry"]


class _FailingFinish(_Memory):
    def finish(self, id: str, token: str) -> None:
        self.calls.append(("finish", id))
        raise QueueError("redis storage: down")


def test_a_failed_finish_still_gives_the_lease_up() -> None:
    env = Envelope("sender@example.com", ["a@example.com"])
    env.parse(b"Subject: x\r\n\r\nbody\r\n")
    queue = _queue()
    memory = _FailingFinish(env)
    queue.ledger = memory  # type: ignore[assignment]
    queue.store = memory  # type: ignore[assignment]
    queue.relay = _Relay(None)
    assert queue._task_body(_Task(), make_payload(ID)) == "store-error"
    queue.kill()
    # Delivered, not recorded: the deadline brings it back (at least once).
    assert memory.calls == [("take", ID), ("finish", ID), ("release", ID)]


@pytest.mark.parametrize("args", [(), ("x",), ({"v": 1, "id": ID}, 2)])
def test_bad_task_arguments_are_rejected_not_retried(args: tuple[Any, ...]) -> None:
    queue = _queue()
    with pytest.raises(Reject) as info:
        queue._task_body(_Task(), *args)
    assert info.value.requeue is False


def test_duplicate_tasks_do_nothing() -> None:
    # Another worker holds the lease.
    queue, memory, task, bounces, outcome = _run(None, ["a@example.com"], taken=True)
    assert outcome == "busy" and queue.relay.seen == []  # type: ignore[attr-defined]
    assert memory.calls == [("take", ID)]
    # Already delivered and removed (take drops its deadline).
    queue, memory, task, bounces, outcome = _run(None, ["a@example.com"], removed=True)
    assert outcome == "gone" and queue.relay.seen == []  # type: ignore[attr-defined]
    assert memory.calls == [("take", ID)]
    # Its retry is not due yet: the deadline goes back after the retry time,
    # the retry time stays, the lease is given up, in one step.
    queue, memory, task, bounces, outcome = _run(None, ["a@example.com"], next_at=2000.0)
    assert outcome == "early" and queue.relay.seen == []  # type: ignore[attr-defined]
    assert memory.calls == [("take", ID), ("reschedule", ID, 2000.0 + queue.dispatch_timeout, None)]
