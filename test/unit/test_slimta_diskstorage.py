import json
import os
import threading
import time
from functools import partial

import gevent
import pytest
from support import envelopes
from support.util import GUARD_SECONDS

from slimta.diskstorage import DiskStorage
from slimta.envelope import Envelope
from slimta.queue import QueueError, codec

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
    rcpts=["a@example.net", "b@example.net", "c@example.net", "d@example.net"],
    data=RAW,
    client={"ip": "192.0.2.1", "name": "x.example.com", "auth": None},
    receiver="mx.example.net",
    timestamp=1700000000.5,
)


def received_envelope() -> Envelope:
    """The shared envelope with a header added after parsing: the store must keep it."""
    env = parsed_envelope()
    env.prepend_header("Received", "from x by y; Tue, 1 Dec 2026 10:00:00 +0000")
    return env


@pytest.fixture
def store(tmp_path):
    return DiskStorage(str(tmp_path / "env"), str(tmp_path / "meta"), str(tmp_path / "tmp"))


def test_write_get_round_trip_is_byte_for_byte(store, tmp_path):
    env = received_envelope()
    env.tenant = {"id": 7}  # a program's own attribute travels too
    id = store.write(env, 1234.0)
    assert os.path.exists(tmp_path / "env" / (id + ".env"))
    assert os.listdir(tmp_path / "tmp") == []  # no temporary file left behind
    got, attempts = store.get(id)
    assert attempts == 0
    assert got.flatten() == env.flatten()
    assert got.sender == env.sender and got.recipients == env.recipients
    assert got.client == env.client and got.receiver == env.receiver
    assert got.timestamp == env.timestamp and got.tenant == {"id": 7}
    assert list(store.load()) == [(1234.0, id)]
    assert store.get_info() == {"size": 1}


def test_metadata_updates_and_restart(store, tmp_path):
    id = store.write(received_envelope(), 10.0)
    assert store.increment_attempts(id) == 1
    assert store.increment_attempts(id) == 2
    store.set_timestamp(id, 99.5)
    again = DiskStorage(str(tmp_path / "env"), str(tmp_path / "meta"), str(tmp_path / "tmp"))
    assert list(again.load()) == [(99.5, id)]
    assert again.get(id)[1] == 2


def test_delivered_indexes_are_relative_to_the_last_get(store):
    id = store.write(received_envelope(), 0.0)
    store.set_recipients_delivered(id, [1])
    env, _ = store.get(id)
    assert env.recipients == ["a@example.net", "c@example.net", "d@example.net"]
    store.set_recipients_delivered(id, [0, 2])
    env, _ = store.get(id)
    assert env.recipients == ["c@example.net"]
    with open(store._meta_path(id), "rb") as f:
        meta = json.loads(f.read())
    assert meta["delivered"] == [0, 1, 3]


def test_remove(store, tmp_path):
    id = store.write(received_envelope(), 0.0)
    store.remove(id)
    assert os.listdir(tmp_path / "env") == [] and os.listdir(tmp_path / "meta") == []
    with pytest.raises(KeyError):
        store.get(id)
    with pytest.raises(KeyError):
        store.increment_attempts(id)
    store.remove(id)  # removing twice is harmless
    assert list(store.load()) == []


def test_a_new_message_is_one_file_fsynced_then_renamed_then_its_directory(
    store, monkeypatch, tmp_path
):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.path.basename(dst).rsplit(".", 1)[1]))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    id = store.write(received_envelope(), 0.0)
    # Its metadata is the envelope file's first line: one file, one flush.
    assert calls == [("fsync", False), ("replace", "env"), ("fsync", True)]
    assert os.listdir(tmp_path / "meta") == []
    with open(tmp_path / "env" / f"{id}.env", "rb") as f:
        assert f.readline().startswith(b"SLIMTA-SPOOL {")
    # A metadata change is a file of its own, written the same way.
    calls.clear()
    store.increment_attempts(id)
    assert calls == [("fsync", False), ("replace", "meta"), ("fsync", True)]


def test_half_written_files_are_never_visible(store, tmp_path):
    id = store.write(received_envelope(), 5.0)
    # A crash before the rename leaves only a temporary file; an envelope
    # without metadata (as an older release's crash between its two writes
    # left one) is moved aside. Neither is listed.
    (tmp_path / "tmp" / "deadbeef.tmp").write_bytes(b"SLIMTA-ENV")
    (tmp_path / "env" / "orphan.env").write_bytes(codec.dumps(received_envelope()))
    assert list(store.load()) == [(5.0, id)]
    assert (tmp_path / "meta" / "orphan.meta.corrupt").exists()
    assert (tmp_path / "env" / "orphan.env").exists()


def test_corrupt_files_are_moved_aside_and_reported(store, tmp_path):
    good = store.write(received_envelope(), 1.0)
    bad_meta = store.write(received_envelope(), 2.0)
    bad_env = store.write(received_envelope(), 3.0)
    bad_body = store.write(received_envelope(), 4.0)
    (tmp_path / "meta" / (bad_meta + ".meta")).write_bytes(b"{not json")
    (tmp_path / "env" / (bad_env + ".env")).write_bytes(b"garbage")
    with open(tmp_path / "env" / (bad_body + ".env"), "rb") as f:
        header = f.readline()
    (tmp_path / "env" / (bad_body + ".env")).write_bytes(header + b"garbage")
    # Unreadable metadata (its file, or the header line) is found by load().
    assert sorted(store.load()) == [(1.0, good), (4.0, bad_body)]
    assert (tmp_path / "meta" / (bad_meta + ".meta.corrupt")).exists()
    assert (tmp_path / "meta" / (bad_env + ".meta.corrupt")).exists()
    # An unreadable envelope behind a good header line, by get().
    with pytest.raises(QueueError):
        store.get(bad_body)
    assert (tmp_path / "meta" / (bad_body + ".meta.corrupt")).exists()
    for id in (bad_meta, bad_env, bad_body):
        assert (tmp_path / "env" / (id + ".env")).exists()  # kept for a person
        with pytest.raises(KeyError):
            store.get(id)
        with pytest.raises(KeyError):
            store.increment_attempts(id)
    assert list(store.load()) == [(1.0, good)] and store.get_info() == {"size": 1}


def test_store_failure_is_a_queue_error(tmp_path):
    store = DiskStorage(str(tmp_path / "env"), str(tmp_path / "meta"))
    os.rmdir(tmp_path / "env")
    with pytest.raises(QueueError):
        store.write(received_envelope(), 0.0)


def test_slow_disk_does_not_block_other_greenlets(store, monkeypatch):
    release = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd):
        release.wait(GUARD_SECONDS)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    ticks = []

    def ticker():
        while len(ticks) < 3:
            ticks.append(time.monotonic())
            gevent.sleep(0)
        release.set()

    writer = gevent.spawn(store.write, received_envelope(), 0.0)
    gevent.spawn(ticker).join(GUARD_SECONDS)
    assert len(ticks) == 3  # the hub kept running while fsync was held up
    assert writer.get(timeout=GUARD_SECONDS)


def test_codec_rejects_unknown_versions_and_garbage():
    data = codec.dumps(received_envelope())
    assert data.startswith(b"SLIMTA-ENVELOPE 1\r\n")
    with pytest.raises(codec.CodecError):
        codec.loads(data.replace(b"SLIMTA-ENVELOPE 1", b"SLIMTA-ENVELOPE 9", 1))
    for bad in (b"", b"SLIMTA-ENVELOPE 1\r\n{", b"SLIMTA-ENVELOPE x\r\n{}\r\n", b"junk"):
        with pytest.raises(codec.CodecError):
            codec.loads(bad)


def test_codec_edge_envelopes():
    env = Envelope("", ["r@example.net"])
    env.message = b"raw body, no headers parsed"
    got = codec.loads(codec.dumps(env))
    assert got.headers is None and got.message == env.message and got.sender == ""
    empty = codec.loads(codec.dumps(Envelope("s@x", ["r@x"])))
    assert empty.message is None and empty.recipients == ["r@x"]
    odd = received_envelope()
    odd.client = {"ip": ("192.0.2.1", 25)}  # not JSON: pickled instead
    assert codec.loads(codec.dumps(odd)).client == {"ip": ("192.0.2.1", 25)}


def test_concurrent_writers_share_directory_flushes(monkeypatch, tmp_path):
    from slimta.diskstorage import _fsync

    first_started = threading.Event()
    others_waiting = threading.Event()
    calls = []
    real = _fsync.fsync_dir

    def fsync_dir(path):
        calls.append(path)
        if len(calls) == 1:
            first_started.set()
            assert others_waiting.wait(GUARD_SECONDS)
        real(path)

    monkeypatch.setattr(_fsync, "fsync_dir", fsync_dir)
    syncer = _fsync.DirectorySync(str(tmp_path))
    threads = [threading.Thread(target=syncer.sync)]
    threads[0].start()
    assert first_started.wait(GUARD_SECONDS)
    # Five more writers arrive while the first flush runs: they must wait for
    # a flush that starts after their call, and share it.
    for _ in range(5):
        thread = threading.Thread(target=syncer.sync)
        threads.append(thread)
        thread.start()
    assert syncer.wait_for_requests(6, GUARD_SECONDS)
    others_waiting.set()
    for thread in threads:
        thread.join(GUARD_SECONDS)
    assert syncer.flushes == 2 and len(calls) == 2


def test_remove_flushes_only_the_envelope_directory(store, monkeypatch, tmp_path):
    id = store.write(received_envelope(), 0.0)
    store.increment_attempts(id)  # so that there is a .meta file to delete too
    synced = []
    for path, syncer in store._dir_syncs.items():
        monkeypatch.setattr(syncer, "sync", lambda path=path: synced.append(path))
    store.remove(id)
    assert synced == [os.path.normpath(str(tmp_path / "env"))]
    assert os.listdir(tmp_path / "env") == [] and os.listdir(tmp_path / "meta") == []


def test_concurrent_writes_take_one_file_flush_each_and_share_the_directory_flush(
    store, monkeypatch, tmp_path
):
    from slimta.diskstorage import _fsync

    writers = 10
    syncer = store._dir_syncs[os.path.normpath(str(tmp_path / "env"))]
    file_flushes = []
    dir_flushes = []
    real_fsync, real_fsync_dir = os.fsync, _fsync.fsync_dir

    def fsync(fd):
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            file_flushes.append(fd)
        return real_fsync(fd)

    def fsync_dir(path):
        dir_flushes.append(path)
        if len(dir_flushes) == 1:
            # Hold the first directory flush until every writer has asked for
            # one: they must then share the next.
            assert syncer.wait_for_requests(writers, GUARD_SECONDS)
        real_fsync_dir(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(_fsync, "fsync_dir", fsync_dir)
    jobs = [gevent.spawn(store.write, received_envelope(), float(i)) for i in range(writers)]
    gevent.joinall(jobs, timeout=GUARD_SECONDS, raise_error=True)
    assert len(file_flushes) == writers
    assert len(dir_flushes) == 2 and syncer.flushes == 2
    assert sorted(store.load()) == sorted((float(i), job.value) for i, job in enumerate(jobs))
    # Removals need no file flush, and share the directory's too.
    file_flushes.clear()
    removals = [gevent.spawn(store.remove, job.value) for job in jobs]
    gevent.joinall(removals, timeout=GUARD_SECONDS, raise_error=True)
    assert file_flushes == [] and syncer.flushes <= 2 + writers
    assert list(store.load()) == [] and store.get_info() == {"size": 0}


def test_disk_work_runs_on_the_stores_own_threads(tmp_path):
    store = DiskStorage(str(tmp_path / "env"), str(tmp_path / "meta"), threads=3)
    store.write(received_envelope(), 0.0)
    assert store.threads == 3 and store._pool is not None and store._pool.maxsize == 3
    assert store._pool is not gevent.get_hub().threadpool


def test_one_directory_for_everything(tmp_path):
    spool = str(tmp_path / "spool")
    store = DiskStorage(spool, spool)
    id = store.write(received_envelope(), 3.0)
    other = store.write(received_envelope(), 4.0)
    assert store.increment_attempts(id) == 1
    store.set_recipients_delivered(id, [0])
    again = DiskStorage(spool, spool)
    assert sorted(again.load()) == [(3.0, id), (4.0, other)]
    env, attempts = again.get(id)
    assert attempts == 1 and env.recipients == received_envelope().recipients[1:]
    again.remove(id)
    assert os.listdir(spool) == [other + ".env"] and again.get_info() == {"size": 1}


def test_wait_for_requests_counts_sync_calls(tmp_path):
    from slimta.diskstorage import _fsync

    syncer = _fsync.DirectorySync(str(tmp_path))
    assert syncer.wait_for_requests(0, 0)
    assert not syncer.wait_for_requests(1, 0)
    syncer.sync()
    syncer.sync()
    assert syncer.wait_for_requests(2, 0)
    assert not syncer.wait_for_requests(3, 0.01)
