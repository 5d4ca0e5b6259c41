"""Crash safety: a queue process SIGKILLed mid-run, finished by a second process.

A child process (``support/queue_child.py``, the project's own venv python) runs
``Queue(store, StaticSmtpRelay(...))`` on a DiskStorage or a RedisStorage with
:data:`N` messages in flight to ``support/crash_receiver.py``, a separate receiver
process that delays its final replies and logs every message it accepts *before*
it answers ``250``. The test kills the child with SIGKILL at a kill point (a
number of messages the receiver has accepted), then runs a second child on the
same store until the store is empty.

Reconciled against the receiver's own log: no message whose ``enqueue()``
returned is lost, and a message is delivered twice only if the receiver had
logged its final ``250`` before the kill took effect (the killed process reaped,
its sockets closed: the receiver accepts nothing for a client that has hung
up). The counts are printed even under capture (``[crash <store> kill@<k>] ...``
lines).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from support.util import require_program, wait_until

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(HERE, "support", "queue_child.py")
RECEIVER = os.path.join(HERE, "support", "crash_receiver.py")

#: Messages in flight per run.
N = 40
#: Kill points: how many final 250s the receiver has logged when the SIGKILL comes
#: (0: as soon as the child has enqueued all N; with DiskStorage some are
#: delivered by then, since each write waits for two fsyncs).
KILL_POINTS = [0, 1, 12, 27, N - 3]
#: The receiver waits this long (uniformly at random) before each final reply.
DELAY = (0.05, 0.6)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@dataclass
class Receiver:
    log: str
    port: int
    proc: subprocess.Popen[bytes]

    def records(self, ev: str = "250") -> list[dict[str, Any]]:
        return [r for r in read_jsonl(self.log) if r["ev"] == ev]


@pytest.fixture
def receiver(tmp_path) -> Iterator[Receiver]:
    log = str(tmp_path / "receiver.log")
    port_file = str(tmp_path / "receiver.port")
    stderr = open(tmp_path / "receiver.err", "wb")
    proc = subprocess.Popen(
        [sys.executable, RECEIVER, log, port_file, str(DELAY[0]), str(DELAY[1])],
        stdin=subprocess.DEVNULL,
        stdout=stderr,
        stderr=stderr,
    )
    try:
        wait_until(
            lambda: os.path.exists(port_file) or proc.poll() is not None,
            "the receiver to listen",
        )
        assert proc.poll() is None, open(tmp_path / "receiver.err").read()
        with open(port_file) as f:
            port = int(f.read())
        yield Receiver(log, port, proc)
    finally:
        proc.kill()
        proc.wait()
        stderr.close()


@dataclass
class StoreSpec:
    kind: str
    spec: str
    size: Any  # () -> int, what the store holds, read from outside the child
    meta: Any  # (test_id) -> the stored metadata of that message, or None
    cleanup: list[Any] = field(default_factory=list)


@pytest.fixture(params=["disk", "redis"])
def store_spec(request, tmp_path) -> Iterator[StoreSpec]:
    if request.param == "disk":
        base = tmp_path / "spool"
        meta_dir = base / "meta"
        env_dir = base / "env"

        def disk_size() -> int:
            # A message is its envelope file (its metadata may be in a .meta file).
            if not env_dir.exists():
                return 0
            return sum(1 for name in os.listdir(env_dir) if name.endswith(".env"))

        def disk_meta(qid: str) -> Any:
            # The .meta file once the metadata changed, else the envelope's header line.
            try:
                return json.loads((meta_dir / (qid + ".meta")).read_bytes())
            except (FileNotFoundError, ValueError):
                pass
            try:
                with open(env_dir / (qid + ".env"), "rb") as f:
                    line = f.readline()
            except FileNotFoundError:
                return None
            if not line.startswith(b"SLIMTA-SPOOL "):
                return None
            return json.loads(line[len(b"SLIMTA-SPOOL ") :])

        yield StoreSpec("disk", f"disk:{base}", disk_size, disk_meta)
        return
    pytest.importorskip("redis")
    require_program("redis-server")
    server = request.getfixturevalue("redis_server")
    prefix = f"crash-{uuid.uuid4().hex[:10]}:"
    import redis

    client = redis.Redis(server.host, server.port)

    def redis_size() -> int:
        return int(client.scard(prefix + "ids"))

    def redis_meta(qid: str) -> Any:
        raw = client.hgetall(prefix + qid)
        return {k.decode(): v.decode("latin-1") for k, v in raw.items()} or None

    try:
        yield StoreSpec(
            "redis", f"redis:{server.host}:{server.port}:{prefix}", redis_size, redis_meta
        )
    finally:
        keys = client.keys(prefix + "*")
        if keys:
            client.delete(*keys)
        client.close()


class Child:
    """One queue process; its stdout/stderr go to a file shown when it fails."""

    #: Every child started, so a failing test never leaves one running.
    started: list[Child] = []

    def __init__(self, tmp_path, name: str, store: StoreSpec, receiver: Receiver, *extra: str):
        self.log = str(tmp_path / f"{name}.log")
        self.err_path = tmp_path / f"{name}.err"
        self.err = open(self.err_path, "wb")
        args = [
            sys.executable,
            CHILD,
            "--store",
            store.spec,
            "--relay-port",
            str(receiver.port),
            "--log",
            self.log,
            *extra,
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self.err, stderr=self.err, cwd=HERE
        )
        Child.started.append(self)

    def reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if not self.err.closed:
            self.err.close()

    def records(self, ev: str) -> list[dict[str, Any]]:
        return [r for r in read_jsonl(self.log) if r["ev"] == ev]

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"child exited {self.proc.returncode}: {self.stderr()}")
        return True

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def sigkill(self) -> float:
        """Kill the child; returns the moment it was dead (reaped), sockets closed."""
        assert self.alive()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        moment = time.time()
        self.err.close()
        return moment

    def finish(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()
        assert self.proc.returncode == 0, f"child exited {self.proc.returncode}: {self.stderr()}"


@pytest.fixture(autouse=True)
def no_child_left_running() -> Iterator[None]:
    yield
    while Child.started:
        Child.started.pop().reap()


def reconcile(
    enqueued: set[str], accepted: list[dict[str, Any]], killed_at: float
) -> tuple[set[str], dict[str, int], set[str]]:
    """Lost ids, duplicated ids (with counts), ids whose first 250 was logged before the kill."""
    counts = Counter(r["id"] for r in accepted)
    lost = {id for id in enqueued if counts[id] == 0}
    duplicated = {id: n for id, n in counts.items() if n > 1}
    before_kill = {r["id"] for r in accepted if r["t"] < killed_at}
    return lost, duplicated, before_kill


@pytest.mark.parametrize("kill_after", KILL_POINTS)
def test_sigkill_mid_run_then_a_second_process_finishes(
    tmp_path, receiver, store_spec, kill_after, capsys
):
    first = Child(tmp_path, "first", store_spec, receiver, "--enqueue", str(N), "--id-prefix", "c")

    def reached() -> bool:
        first.alive()
        if kill_after == 0:
            return bool(first.records("all-enqueued"))
        return len(receiver.records()) >= kill_after

    wait_until(reached, f"{kill_after} deliveries before the kill", timeout=20)
    killed_at = first.sigkill()
    enqueued = {r["id"] for r in first.records("enqueued")}
    in_store = store_spec.size()
    delivered_before = len(receiver.records())

    second = Child(tmp_path, "second", store_spec, receiver)
    second.finish(timeout=30)
    assert store_spec.size() == 0

    accepted = receiver.records()
    assert all(r["id"] for r in accepted), accepted
    lost, duplicated, before_kill = reconcile(enqueued, accepted, killed_at)
    unexplained = set(duplicated) - before_kill
    with capsys.disabled():
        print(
            f"\n[crash {store_spec.kind} kill@{kill_after}] enqueued={len(enqueued)}"
            f" delivered={len(set(r['id'] for r in accepted))}"
            f" 250s-before-kill={delivered_before} left-in-store={in_store}"
            f" lost={len(lost)} duplicated={len(duplicated)}"
            f" (of them with a 250 logged before the kill: {len(set(duplicated) & before_kill)})"
        )
    assert not lost, f"lost: {sorted(lost)}"
    assert not unexplained, f"delivered twice without a 250 before the kill: {unexplained}"
    # Every duplicate is at most one extra copy: the second process delivered it once.
    assert all(n == 2 for n in duplicated.values()), duplicated
    # The first process really was killed mid-run (messages were still in the store).
    if kill_after < KILL_POINTS[-1]:
        assert in_store > 0


def test_partial_delivery_then_kill_never_redelivers_the_250_recipient(
    tmp_path, receiver, store_spec
):
    rcpts = "ok@dst.test,flaky@dst.test,ok2@dst.test"
    first = Child(
        tmp_path,
        "first",
        store_spec,
        receiver,
        "--enqueue",
        "1",
        "--id-prefix",
        "p",
        "--rcpts",
        rcpts,
        "--backoff",
        "0.5",
    )
    wait_until(lambda: first.alive() and bool(first.records("enqueued")), "the enqueue")
    [record] = first.records("enqueued")
    qid = record["qid"]

    def recorded() -> bool:
        first.alive()
        meta = store_spec.meta(qid)
        return bool(meta and meta.get("delivered"))

    # Killed as soon as the store holds the partial delivery, before the retry.
    wait_until(recorded, "the partial delivery to be recorded")
    first.sigkill()
    [partial] = receiver.records()
    assert partial["id"] == "p-0" and partial["rcpts"] == ["ok@dst.test", "ok2@dst.test"]

    second = Child(tmp_path, "second", store_spec, receiver)
    second.finish(timeout=20)
    assert store_spec.size() == 0
    deliveries = Counter(rcpt for r in receiver.records() for rcpt in r["rcpts"])
    assert deliveries == {"ok@dst.test": 1, "ok2@dst.test": 1, "flaky@dst.test": 1}
