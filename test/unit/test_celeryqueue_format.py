"""slimta.celeryqueue without a broker: the task payload, the no-pickle envelope
format, the constructor's checks, and what one attempt's result makes the task do
(with the Redis side replaced by an in-memory ledger).
"""

from __future__ import annotations

import json
import logging
from typing import Any

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
    CeleryQueue,
    PayloadError,
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
    assert _queue().attempt_task.name == "attempt_delivery"


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

    def acquire(self, id: str, token: str, lease: float, now: float) -> bool:
        self.calls.append(("acquire", id))
        return not self.taken

    def renew(self, *args: Any) -> bool:
        return True

    def release(self, id: str, token: str) -> None:
        self.calls.append(("release", id))

    def read(self, id: str) -> tuple[Envelope, int, float]:
        if self.removed:
            raise KeyError(id)
        return self.envelope.copy(list(self.envelope.recipients)), self.attempts, self.next_at

    def remove(self, id: str) -> None:
        self.calls.append(("remove", id))
        self.removed = True

    def forget(self, id: str) -> None:
        self.calls.append(("forget", id))

    def set_deadline(self, id: str, deadline: float) -> None:
        self.calls.append(("deadline", id, deadline))

    def set_recipients_delivered(self, id: str, indexes: list[int]) -> None:
        self.calls.append(("delivered", list(indexes)))
        for index in sorted(indexes, reverse=True):
            del self.envelope.recipients[index]

    def increment_attempts(self, id: str) -> int:
        self.attempts += 1
        self.calls.append(("attempts", self.attempts))
        return self.attempts

    def set_timestamp(self, id: str, when: float) -> None:
        self.calls.append(("timestamp", when))


class _Relay(Relay):
    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result
        self.seen: list[list[str]] = []

    def attempt(self, envelope: Envelope, attempts: int) -> Any:
        self.seen.append(list(envelope.recipients))
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def _run(
    result: Any, rcpts: list[str], backoff: Any = None, **state: Any
) -> tuple[CeleryQueue, _Memory, _Task, list[Envelope], Any]:
    env = Envelope("sender@example.com", rcpts)
    env.parse(b"Subject: x\r\n\r\nbody\r\n")
    bounces: list[Envelope] = []
    queue = CeleryQueue(
        _app(),
        _Relay(result),
        backoff=backoff or (lambda envelope, attempts: 30.0),
        store=RedisStorage(port=1, prefix="unit:"),
    )
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
    return queue, memory, task, bounces, outcome


def test_all_delivered_removes() -> None:
    _, memory, task, bounces, outcome = _run(None, ["a@example.com", "b@example.com"])
    assert outcome == "delivered"
    assert [c[0] for c in memory.calls] == ["acquire", "remove", "release"]
    assert not bounces and not task.retries


def test_partial_250_550_450_records_bounces_then_retries_the_rest() -> None:
    rcpts = ["ok@example.com", "perm@example.com", "temp@example.com"]
    result = {
        "ok@example.com": None,
        "perm@example.com": PermanentRelayError("no", Reply("550", "5.1.1 No such user")),
        "temp@example.com": TransientRelayError("later", Reply("450", "4.2.1 Busy")),
    }
    queue, memory, task, bounces, outcome = _run(result, rcpts)
    assert outcome == "retry"
    steps = [c for c in memory.calls if c[0] not in ("acquire", "release", "retry")]
    # Delivered first (index 0), then the bounced one (index 0 of what is left).
    assert steps == [
        ("delivered", [0]),
        ("delivered", [0]),
        ("attempts", 1),
        ("timestamp", 1030.0),
        ("deadline", ID, 1030.0 + queue.dispatch_timeout),
    ]
    assert memory.envelope.recipients == ["temp@example.com"]
    [bounce] = bounces
    assert bounce.recipients == ["sender@example.com"] and bounce.sender in ("", None)
    assert b"5.1.1 No such user" in b"".join(bounce.flatten())
    assert task.retries == [{"args": [make_payload(ID)], "kwargs": {}, "countdown": 30.0}]
    # The lease is given up before the retry is sent.
    assert memory.calls.index(("release", ID)) < memory.calls.index(("retry",))


def test_backoff_none_bounces_too_many_retries_and_removes() -> None:
    error = TransientRelayError("later", Reply("451", "4.4.1 Timeout"))
    _, memory, task, bounces, outcome = _run(
        error, ["a@example.com"], backoff=lambda envelope, attempts: None
    )
    assert outcome == "bounced"
    assert ("remove", ID) in memory.calls and not task.retries
    [bounce] = bounces
    assert b"Too many retries" in b"".join(bounce.flatten())


def test_unexpected_relay_error_is_transient() -> None:
    _, memory, task, bounces, outcome = _run(RuntimeError("boom"), ["a@example.com"])
    assert outcome == "retry" and not bounces
    assert ("attempts", 1) in memory.calls and ("remove", ID) not in memory.calls


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
    assert [c[0] for c in memory.calls] == ["acquire"]
    # Already delivered and removed.
    queue, memory, task, bounces, outcome = _run(None, ["a@example.com"], removed=True)
    assert outcome == "gone" and queue.relay.seen == []  # type: ignore[attr-defined]
    assert ("forget", ID) in memory.calls
    # Its retry is not due yet: the deadline goes back after the retry time.
    queue, memory, task, bounces, outcome = _run(None, ["a@example.com"], next_at=2000.0)
    assert outcome == "early" and queue.relay.seen == []  # type: ignore[attr-defined]
    assert ("deadline", ID, 2000.0 + queue.dispatch_timeout) in memory.calls
    assert ("remove", ID) not in memory.calls
