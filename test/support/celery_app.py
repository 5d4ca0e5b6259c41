"""The Celery app the celeryqueue tests' workers run (``celery -A support.celery_app``).

Configured by environment variables, so that each test's workers use their own
Redis key prefix and receiver:

* ``SLIMTA_CELERY_REDIS``: the Redis URL (broker and store), required;
* ``SLIMTA_CELERY_PREFIX``: prefix of every key, the broker's included;
* ``SLIMTA_CELERY_SMTP_PORT``: the receiver on 127.0.0.1;
* ``SLIMTA_CELERY_LEASE`` / ``SLIMTA_CELERY_SWEEP`` / ``SLIMTA_CELERY_DISPATCH``:
  seconds (short in tests);
* ``SLIMTA_CELERY_BACKOFF``: constant seconds between retries;
  ``SLIMTA_CELERY_MAX_ATTEMPTS``: then bounce.

Each worker greets the receiver as ``w<pid>.test``, so the receiver's record
tells which worker process delivered each message.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from slimta.celeryqueue import CeleryQueue
from slimta.envelope import Envelope
from slimta.redisstorage import RedisStorage
from slimta.relay.smtp.static import StaticSmtpRelay

__all__ = ["app", "make_app", "queue"]


def make_app(
    redis_url: str,
    prefix: str,
    smtp_port: int,
    *,
    lease: float = 2.0,
    sweep: float = 0.5,
    dispatch: float = 5.0,
    backoff: float = 0.5,
    max_attempts: int = 5,
    broker_url: str | None = None,
) -> tuple[Celery, CeleryQueue]:
    """A Celery app on ``redis_url`` and the :class:`CeleryQueue` registered on it."""
    app = Celery("slimta_test", broker=broker_url or redis_url)
    app.conf.update(
        accept_content=["json"],
        task_serializer="json",
        broker_transport_options={
            "global_keyprefix": prefix,
            "visibility_timeout": lease * 2,
            "polling_interval": 0.5,
            "max_connections": 100,
            # The store and the sweeper, not the broker, bring a lost task back
            # (see doc/deployment.rst): no unacked bookkeeping in Redis.
            "ack_emulation": False,
        },
        broker_pool_limit=100,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=1.0,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        task_ignore_result=True,
    )

    def constant(envelope: Envelope, attempts: int) -> float | None:
        return backoff if attempts < max_attempts else None

    relay = StaticSmtpRelay("127.0.0.1", smtp_port, pool_size=20, ehlo_as=f"w{os.getpid()}.test")
    host, _, rest = redis_url.removeprefix("redis://").partition(":")
    port = int(rest.split("/")[0])
    store = RedisStorage(host=host, port=port, prefix=prefix, socket_timeout=10.0)
    queue = CeleryQueue(
        app,
        relay,
        backoff=constant,
        store=store,
        lease=lease,
        sweep_interval=sweep,
        dispatch_timeout=dispatch,
    )
    return app, queue


def _from_env() -> tuple[Celery, CeleryQueue] | tuple[Any, Any]:
    url = os.environ.get("SLIMTA_CELERY_REDIS")
    if not url:
        return None, None
    return make_app(
        url,
        os.environ["SLIMTA_CELERY_PREFIX"],
        int(os.environ["SLIMTA_CELERY_SMTP_PORT"]),
        lease=float(os.environ.get("SLIMTA_CELERY_LEASE", "2")),
        sweep=float(os.environ.get("SLIMTA_CELERY_SWEEP", "0.5")),
        dispatch=float(os.environ.get("SLIMTA_CELERY_DISPATCH", "5")),
        backoff=float(os.environ.get("SLIMTA_CELERY_BACKOFF", "0.5")),
        max_attempts=int(os.environ.get("SLIMTA_CELERY_MAX_ATTEMPTS", "5")),
    )


app, queue = _from_env()
