import json
import os
import threading
import time

import gevent
import pytest

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


def make_envelope(rcpts=("a@example.net", "b@example.net", "c@example.net", "d@example.net")):
    env = Envelope("alice@example.com", list(rcpts))
    env.parse(RAW)
    env.prepend_header("Received", "from x by y; Tue, 1 Dec 2026 10:00:00 +0000")
    env.client = {"ip": "192.0.2.1", "name": "x.example.com", "auth": None}
    env.receiver = "mx.example.net"
    env.timestamp = 1700000000.5
    return env


@pytest.fixture
def store(tmp_path):
    return DiskStorage(str(tmp_path / "env"), str(tmp_path / "meta"), str(tmp_path / "tmp"))


def test_write_get_round_trip_is_byte_for_byte(store, tmp_path):
    env = make_envelope()
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
    id = store.write(make_envelope(), 10.0)
    assert store.increment_attempts(id) == 1
    assert store.increment_attempts(id) == 2
    store.set_timestamp(id, 99.5)
    again = DiskStorage(str(tmp_path / "env"), str(tmp_path / "meta"), str(tmp_path / "tmp"))
    assert list(again.load()) == [(99.5, id)]
    assert again.get(id)[1] == 2


def test_delivered_indexes_are_relative_to_the_last_get(store):
    id = store.write(make_envelope(), 0.0)
    store.set_recipients_delivered(id, [1])
    env, _ = store.get(id)
    assert env.recipients == ["a@example.net", "c@example.net", "d@example.net"]
    store.set_recipients_delivered(id, [0, 2])
    env, _ = store.get(id)
    assert env.recipients == ["c@example.net"]
    meta = json.loads(open(store._meta_path(id), "rb").read())
    assert meta["delivered"] == [0, 1, 3]


def test_remove(store, tmp_path):
    id = store.write(make_envelope(), 0.0)
    store.remove(id)
    assert os.listdir(tmp_path / "env") == [] and os.listdir(tmp_path / "meta") == []
    with pytest.raises(KeyError):
        store.get(id)
    with pytest.raises(KeyError):
        store.increment_attempts(id)
    store.remove(id)  # removing twice is harmless
    assert list(store.load()) == []


def test_every_file_is_fsynced_then_renamed_then_its_directory(store, monkeypatch):
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
    store.write(make_envelope(), 0.0)
    assert calls == [
        ("fsync", False),
        ("replace", "env"),
        ("fsync", True),
        ("fsync", False),
        ("replace", "meta"),
        ("fsync", True),
    ]


def test_half_written_files_are_never_visible(store, tmp_path):
    id = store.write(make_envelope(), 5.0)
    # A crash before the rename leaves only a temporary file; one between the
    # two writes leaves an envelope without metadata. Neither is listed.
    (tmp_path / "tmp" / "deadbeef.tmp").write_bytes(b"SLIMTA-ENV")
    (tmp_path / "env" / "orphan.env").write_bytes(codec.dumps(make_envelope()))
    assert list(store.load()) == [(5.0, id)]


def test_corrupt_files_are_moved_aside_and_reported(store, tmp_path):
    good = store.write(make_envelope(), 1.0)
    bad_meta = store.write(make_envelope(), 2.0)
    bad_env = store.write(make_envelope(), 3.0)
    (tmp_path / "meta" / (bad_meta + ".meta")).write_bytes(b"{not json")
    (tmp_path / "env" / (bad_env + ".env")).write_bytes(b"garbage")
    assert sorted(store.load()) == [(1.0, good), (3.0, bad_env)]
    assert (tmp_path / "meta" / (bad_meta + ".meta.corrupt")).exists()
    with pytest.raises(QueueError):
        store.get(bad_env)
    assert (tmp_path / "meta" / (bad_env + ".meta.corrupt")).exists()
    assert (tmp_path / "env" / (bad_env + ".env")).exists()  # kept for a person
    assert list(store.load()) == [(1.0, good)]


def test_store_failure_is_a_queue_error(tmp_path):
    store = DiskStorage(str(tmp_path / "env"), str(tmp_path / "meta"))
    os.rmdir(tmp_path / "env")
    with pytest.raises(QueueError):
        store.write(make_envelope(), 0.0)


def test_slow_disk_does_not_block_other_greenlets(store, monkeypatch):
    release = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd):
        release.wait(5)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    ticks = []

    def ticker():
        while len(ticks) < 3:
            ticks.append(time.monotonic())
            gevent.sleep(0)
        release.set()

    writer = gevent.spawn(store.write, make_envelope(), 0.0)
    gevent.spawn(ticker).join(5)
    assert len(ticks) == 3  # the hub kept running while fsync was held up
    assert writer.get(timeout=5)


def test_codec_rejects_unknown_versions_and_garbage():
    data = codec.dumps(make_envelope())
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
    odd = make_envelope()
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
            assert others_waiting.wait(10)
        real(path)

    monkeypatch.setattr(_fsync, "fsync_dir", fsync_dir)
    syncer = _fsync.DirectorySync(str(tmp_path))
    threads = [threading.Thread(target=syncer.sync)]
    threads[0].start()
    assert first_started.wait(10)
    # Five more writers arrive while the first flush runs: they must wait for
    # a flush that starts after their call, and share it.
    for _ in range(5):
        thread = threading.Thread(target=syncer.sync)
        threads.append(thread)
        thread.start()
    deadline = time.monotonic() + 10
    while syncer._requested < 6 and time.monotonic() < deadline:
        time.sleep(0.001)
    others_waiting.set()
    for thread in threads:
        thread.join(10)
    assert syncer.flushes == 2 and len(calls) == 2


def test_remove_flushes_only_the_metadata_directory(store, monkeypatch, tmp_path):
    id = store.write(make_envelope(), 0.0)
    synced = []
    for path, syncer in store._dir_syncs.items():
        monkeypatch.setattr(syncer, "sync", lambda path=path: synced.append(path))
    store.remove(id)
    assert synced == [os.path.normpath(str(tmp_path / "meta"))]
    assert os.listdir(tmp_path / "env") == [] and os.listdir(tmp_path / "meta") == []
