"""``wsgi_edge``: a :class:`~slimta.edge.wsgi.WsgiEdge` on a loopback port, in the test's hub.

Like ``smtp_edge``: the edge hands messages to a real ``Queue(DictStorage())``
(with the given relay, or none: messages stay stored), and everything started is
stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import pytest

from slimta.edge.wsgi import WsgiEdge
from slimta.queue import Queue
from slimta.queue.dict import DictStorage

__all__ = ["WsgiEdgeUnderTest", "wsgi_edge"]


@dataclass
class WsgiEdgeUnderTest:
    edge: WsgiEdge
    queue: Queue
    storage: Any

    @property
    def address(self) -> tuple[str, int]:
        server = self.edge.server
        assert server is not None
        return ("127.0.0.1", server.server_port)

    @property
    def url(self) -> str:
        host, port = self.address
        scheme = "https" if getattr(self.edge.server, "ssl_enabled", False) else "http"
        return f"{scheme}://{host}:{port}/"

    def stored(self) -> list[Any]:
        """The envelopes the store holds now."""
        return [env for env, _attempts in (self.storage.get(id) for _, id in self.storage.load())]


WsgiEdgeFactory = Callable[..., WsgiEdgeUnderTest]


@pytest.fixture
def wsgi_edge() -> Iterator[WsgiEdgeFactory]:
    """Factory: ``wsgi_edge(relay=None, storage=None, **WsgiEdge keywords)``."""
    started: list[WsgiEdgeUnderTest] = []

    def start(relay: Any = None, storage: Any = None, **kwargs: Any) -> WsgiEdgeUnderTest:
        storage = storage if storage is not None else DictStorage()
        queue = Queue(storage, relay)
        queue.start()
        kwargs.setdefault("hostname", "edge.example.test")
        edge = WsgiEdge(queue, listener=("127.0.0.1", 0), **kwargs)
        assert edge.server is not None
        edge.server.start()
        edge.start()
        started.append(WsgiEdgeUnderTest(edge, queue, storage))
        return started[-1]

    yield start
    for item in started:
        item.edge.kill()
        gevent.Greenlet.kill(item.edge, block=True, timeout=5)
        item.queue.kill(block=True, timeout=5)
        relay = item.queue.relay
        if relay is not None:
            relay.kill()
