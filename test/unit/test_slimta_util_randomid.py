"""slimta.util.randomid: random IDs from a pooled os.urandom."""

from __future__ import annotations

import os
import re
import threading
import uuid

import pytest
from support.util import GUARD_SECONDS

import slimta.util.randomid as randomid
from slimta.util.randomid import random_hex, random_uuid


def test_random_hex_is_32_lower_case_hex_digits_by_default() -> None:
    values = [random_hex() for _ in range(500)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in values)
    assert len(set(values)) == 500


def test_random_hex_takes_the_number_of_bytes_asked_for() -> None:
    assert re.fullmatch(r"[0-9a-f]{10}", random_hex(5))
    # More than a pool holds still works.
    assert len(random_hex(randomid.POOL_BYTES + 10)) == 2 * (randomid.POOL_BYTES + 10)


def test_random_uuid_is_a_version_4_uuid() -> None:
    values = [random_uuid() for _ in range(200)]
    assert len(set(values)) == 200
    variant_digits = set()
    for value in values:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        variant_digits.add(value[19])
    # The variant digit keeps its two random bits: all four values turn up in 200.
    assert variant_digits == set("89ab")


def test_one_urandom_call_serves_many_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(randomid.os, "urandom", counting)
    monkeypatch.setattr(randomid, "_pool", b"")
    monkeypatch.setattr(randomid, "_offset", 0)
    values = [random_hex() for _ in range(randomid.POOL_BYTES // 16 + 1)]
    # One pool for the first POOL_BYTES / 16 IDs, a second for the next one.
    assert calls == [randomid.POOL_BYTES, randomid.POOL_BYTES]
    assert len(set(values)) == len(values)


def test_ids_never_repeat_bytes_across_a_refill(monkeypatch: pytest.MonkeyPatch) -> None:
    pools = iter([bytes(range(32)), bytes(range(100, 132))])
    monkeypatch.setattr(randomid, "POOL_BYTES", 32)
    monkeypatch.setattr(randomid.os, "urandom", lambda n: next(pools))
    monkeypatch.setattr(randomid, "_pool", b"")
    monkeypatch.setattr(randomid, "_offset", 0)
    assert random_hex() == bytes(range(16)).hex()
    assert random_hex() == bytes(range(16, 32)).hex()
    # The first pool is used up: the next ID starts a new pool.
    assert random_hex(8) == bytes(range(100, 108)).hex()
    assert random_hex() == bytes(range(108, 124)).hex()


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    random_hex()  # the parent's pool is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ID and leave at once
        try:
            os.write(write, random_hex().encode("ascii"))
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 64):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = random_hex()
    assert len(child) == 32
    assert child.decode("ascii") != parent


def test_threads_never_share_an_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread asks for an ID in the middle of this one's _take() (here:
    # when the pool's length is read). Without the lock both read the same
    # offset and hand out the same bytes.
    class Interrupting(bytes):
        def __len__(self) -> int:
            if threading.current_thread() is main and not other:
                thread = threading.Thread(target=lambda: other.append(random_hex()))
                thread.start()
                thread.join(0.05)  # with the lock, it waits for this _take to end
                interrupting.append(thread)
            return bytes.__len__(self)

    main = threading.current_thread()
    other: list[str] = []
    interrupting: list[threading.Thread] = []
    monkeypatch.setattr(randomid, "_pool", Interrupting(os.urandom(randomid.POOL_BYTES)))
    monkeypatch.setattr(randomid, "_offset", 0)
    mine = random_hex()
    interrupting[0].join(GUARD_SECONDS)
    assert other and other[0] != mine
