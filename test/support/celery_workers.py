"""pytest plugin: real ``celery worker -P gevent`` processes for the celeryqueue tests.

``celery_cluster(smtp_port, workers=2, ...)`` starts the workers (module
:mod:`support.celery_app`, configured by environment variables) against the
session's ``redis_server`` with a key prefix of their own, and returns a
:class:`CeleryCluster`: the same app and queue built in the test process (to
enqueue), the workers (to read their logs or SIGKILL them) and a way to start
more. Every worker is killed and reaped at teardown, whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from support.redis_server import RedisServer
from support.util import IN_CI, shared_tmpdir, stop_process_group, wait_until

__all__ = ["CeleryCluster", "CeleryWorker", "celery_cluster", "require_celery"]

#: Seconds a worker may take to say it is ready (the machine may be loaded).
WORKER_READY_TIMEOUT = 60.0
_TEST_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require_celery() -> None:
    """Skip the test when celery is missing (fail under ``CI=true``)."""
    try:
        import celery  # noqa: F401
    except ImportError:
        message = "celery is not installed (pip install -e '.[test]')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class CeleryWorker:
    """One running worker process."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: str
    killed: bool = False

    @property
    def pid(self) -> int:
        """The worker's process ID (with ``-P gevent``, the one process that delivers)."""
        return self.proc.pid

    @property
    def helo(self) -> str:
        """The name it greets the receiver with (see :mod:`support.celery_app`)."""
        return f"w{self.pid}.test"

    def log(self) -> str:
        """Everything it logged so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def sigkill(self) -> None:
        """SIGKILL it (no shutdown code runs) and reap it."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.killed = True


@dataclass
class CeleryCluster:
    """A Redis prefix, the app and queue on it, and the workers serving it."""

    redis_url: str
    prefix: str
    smtp_port: int
    settings: dict[str, float]
    app: Any
    queue: Any
    log_dir: str
    start_process: Callable[[list[str], str], subprocess.Popen[bytes]]
    workers: list[CeleryWorker] = field(default_factory=list)
    concurrency: int = 10

    def env(self) -> dict[str, str]:
        """The environment a worker of this cluster runs with."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_TEST_DIR, *filter(None, [env.get("PYTHONPATH")])])
        env.update(
            SLIMTA_CELERY_REDIS=self.redis_url,
            SLIMTA_CELERY_PREFIX=self.prefix,
            SLIMTA_CELERY_SMTP_PORT=str(self.smtp_port),
        )
        for key, value in self.settings.items():
            env[f"SLIMTA_CELERY_{key.upper()}"] = repr(value)
        return env

    def start_worker(self, wait: bool = True) -> CeleryWorker:
        """Start one more worker; with ``wait``, return once it is consuming."""
        name = f"w{len(self.workers) + 1}-{self.prefix.rstrip(':')}"
        log_path = os.path.join(self.log_dir, f"{name}.log")
        args = [
            sys.executable, "-m", "celery", "-A", "support.celery_app", "worker",
            "-P", "gevent", "-c", str(self.concurrency), "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel=INFO", f"--logfile={log_path}",
        ]  # fmt: skip
        worker = CeleryWorker(name, self.start_process(args, log_path), log_path)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: CeleryWorker) -> None:
        """Wait until ``worker`` logged that it is ready; fail if it exits first."""

        def ready() -> bool:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{_read(worker.log_path)[-3000:]}")
            return " ready." in _read(worker.log_path)

        wait_until(ready, f"celery worker {worker.name}", WORKER_READY_TIMEOUT, 0.05)

    def logs(self) -> str:
        """Every worker's log, concatenated."""
        return "\n".join(_read(worker.log_path) for worker in self.workers)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill every worker's process group and reap it.

    The test is over, so nothing is left for a worker to finish, and a gevent
    worker takes about 5 s to stop on SIGTERM, SIGINT or SIGQUIT alike (measured
    with a worker that had nothing to do): SIGKILL keeps the teardown short.
    """
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        stop_process_group(proc)


CeleryClusterFactory = Callable[..., CeleryCluster]


@pytest.fixture
def celery_cluster(redis_server: RedisServer, redis_prefix: str) -> Iterator[CeleryClusterFactory]:
    """Factory: ``celery_cluster(smtp_port, workers=2, concurrency=10, **settings)``.

    ``settings`` (``lease``, ``sweep``, ``dispatch``, ``backoff``,
    ``max_attempts``) reach both the workers and the test's own queue.
    """
    require_celery()
    from support.celery_app import make_app

    with contextlib.ExitStack() as stack:
        log_dir = stack.enter_context(shared_tmpdir("slimta-celery-"))
        redis_url = f"redis://{redis_server.host}:{redis_server.port}/0"

        def start_process(args: list[str], log_path: str) -> subprocess.Popen[bytes]:
            with open(log_path + ".stderr", "wb") as stderr:
                proc = subprocess.Popen(
                    args,
                    cwd=_TEST_DIR,
                    env=cluster_env[0],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
            procs.append(proc)
            return proc

        cluster_env: list[dict[str, str]] = [{}]
        procs: list[subprocess.Popen[bytes]] = []
        stack.callback(_stop_all, procs)

        def start(
            smtp_port: int, *, workers: int = 2, concurrency: int = 10, **settings: float
        ) -> CeleryCluster:
            app, queue = make_app(redis_url, redis_prefix, smtp_port, **settings)  # type: ignore[arg-type]
            stack.callback(queue.kill)
            cluster = CeleryCluster(
                redis_url, redis_prefix, smtp_port, dict(settings), app, queue, log_dir,
                start_process, concurrency=concurrency,
            )  # fmt: skip
            cluster_env[0] = cluster.env()
            started = [cluster.start_worker(wait=False) for _ in range(workers)]
            for worker in started:
                cluster.wait_ready(worker)
            return cluster

        yield start
