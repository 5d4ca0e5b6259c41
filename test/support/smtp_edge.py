"""``smtp_edge``: an :class:`~slimta.edge.smtp.SmtpEdge` on a loopback port, in the test's hub.

The edge hands messages to a real ``Queue(DictStorage())`` (with the given relay,
or none: then messages just stay stored). Everything started is stopped at
teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import pytest

from slimta.edge.smtp import SmtpEdge, SmtpValidators
from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.smtp.reply import Reply

__all__ = [
    "EdgeUnderTest",
    "UserPassValidators",
    "smtp_edge",
    "USER",
    "PASSWORD",
    "cooperative_wait",
]

USER = "user@example.test"
PASSWORD = "correct horse battery"


def cooperative_wait(
    predicate: Callable[[], bool], what: str, timeout: float = 20.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` while yielding to the hub (the edge and the queue run in it).

    :func:`support.util.wait_until` sleeps the whole thread, which would stop the
    queue's delivery greenlets that the predicate waits for.
    """
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(interval)


class UserPassValidators(SmtpValidators):
    """Accepts AUTH for :data:`USER`/:data:`PASSWORD`; refuses recipients at ``reject.test``."""

    def handle_auth(self, reply: Reply, creds: Any) -> None:
        if creds.authcid != USER or not creds.check_secret(PASSWORD):
            reply.code = "535"
            reply.message = "5.7.8 Authentication credentials invalid"

    def handle_rcpt(self, reply: Reply, recipient: str, params: Any) -> None:
        if recipient.endswith("@reject.test"):
            reply.code = "550"
            reply.message = "5.1.1 Unknown recipient"


@dataclass
class EdgeUnderTest:
    edge: SmtpEdge
    queue: Queue
    storage: DictStorage

    @property
    def address(self) -> tuple[str, int]:
        server = self.edge.server
        assert server is not None
        return ("127.0.0.1", server.server_port)

    def stored(self) -> list[Any]:
        """The envelopes the store holds now."""
        return [env for env, _attempts in (self.storage.get(id) for _, id in self.storage.load())]


EdgeFactory = Callable[..., EdgeUnderTest]


@pytest.fixture
def smtp_edge() -> Iterator[EdgeFactory]:
    """Factory: ``smtp_edge(relay=None, storage=None, **SmtpEdge keywords)``."""
    started: list[EdgeUnderTest] = []

    def start(relay: Any = None, storage: Any = None, **kwargs: Any) -> EdgeUnderTest:
        storage = storage if storage is not None else DictStorage()
        queue = Queue(storage, relay)
        queue.start()
        kwargs.setdefault("validator_class", UserPassValidators)
        kwargs.setdefault("hostname", "edge.example.test")
        kwargs.setdefault("auth_failure_base_delay", 0.0)
        edge = SmtpEdge(("127.0.0.1", 0), queue, **kwargs)
        assert edge.server is not None
        edge.server.start()
        edge.start()
        started.append(EdgeUnderTest(edge, queue, storage))
        return started[-1]

    yield start
    for item in started:
        item.edge.kill()
        gevent.Greenlet.kill(item.edge, block=True, timeout=5)
        item.queue.kill(block=True, timeout=5)
        relay = item.queue.relay
        if relay is not None:
            relay.kill()
