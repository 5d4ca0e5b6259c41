"""A crash-safe :class:`~slimta.queue.QueueStorage` on the local disk.

A message is the file ``<id>.env`` in ``env_dir``: one header line with its
queue metadata (JSON: when the next attempt is due, how many attempts were made,
how many recipients, which are done), then the envelope in the versioned format
of :mod:`slimta.queue.codec` (message bytes as received). Once the metadata
changes, it lives in ``<id>.meta`` in ``meta_dir``, which then overrides the
header line.

Every file is written the same way: to a temporary file in ``tmp_dir``, which is
flushed with ``fsync``, renamed over its final name, and then the directory is
flushed too. A crash at any moment leaves either the old file or the new one,
never a half-written one. A new message is one file, so storing it costs one
file flush, and the directory flush is shared by the writers and removals that
run at the same time (a group commit). :meth:`~DiskStorage.load` lists the
envelope files, so a message is visible only once it is whole; removal deletes
the envelope first (durably: the message is then gone), then its metadata. The
disk work runs in a thread pool, so a slow ``fsync`` never blocks the other
greenlets.

Files that cannot be read are moved aside (the metadata renamed, or a marker
written, with a ``.corrupt`` suffix), logged, and left for an operator: nothing
is deleted that a person might want back.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from gevent.threadpool import ThreadPool

from slimta.envelope import Envelope
from slimta.logging import getQueueStorageLogger
from slimta.queue import QueueError, QueueStorage
from slimta.queue.codec import CodecError, dump_parts, loads

from ._fsync import DirectorySync, fsync_dir

__all__ = ["DiskStorage"]

_log = logging.getLogger(__name__)
log = getQueueStorageLogger(__name__)

_T = TypeVar("_T")

#: The version written in each metadata file and header line.
META_VERSION = 1

#: The first bytes of an envelope file that carries its metadata on its first line.
SPOOL_MAGIC = b"SLIMTA-SPOOL "
#: The longest header line read back (the metadata of a message with very
#: many recipients stays far below it).
MAX_HEADER_BYTES = 16 * 2**20

#: Leftovers of a crash (a temporary file, or an envelope whose metadata was
#: never written or already removed) are deleted by :meth:`DiskStorage.load`
#: once they are this old; no write or removal takes that long.
ORPHAN_AGE_SECONDS = 3600.0

#: Threads that do the disk work, so that many writers share directory flushes.
DEFAULT_THREADS = 32
#: A disk thread with nothing to do ends after this many seconds.
IDLE_THREAD_SECONDS = 30.0

_CORRUPT = ".corrupt"


def _check_meta(meta: Any, id: str) -> dict[str, Any]:
    # Every field is checked here, so that nothing later trips over a bad type.
    try:
        float(meta["timestamp"])
        int(meta.get("attempts", 0))
        int(meta.get("recipients", 0))
        [int(i) for i in meta.get("delivered", [])]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"bad metadata for {id}: {exc!r}") from None
    return dict(meta)


def _split_header(data: bytes, id: str) -> tuple[dict[str, Any] | None, bytes]:
    """The metadata of an envelope file's header line (``None`` if it has none) and the rest."""
    if not data.startswith(SPOOL_MAGIC):
        return None, data
    end = data.find(b"\r\n")
    if end < 0:
        raise ValueError(f"bad header line for {id}")
    return _check_meta(json.loads(data[len(SPOOL_MAGIC) : end]), id), data[end + 2 :]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class DiskStorage(QueueStorage):
    """Stores the queue in two directories.

    :param env_dir: where the envelopes go (created if missing).
    :param meta_dir: where their metadata goes (created if missing; may be
        ``env_dir``).
    :param tmp_dir: where files are written before being renamed into place;
        it must be on the same file system. Defaults to ``env_dir``.
    :param threads: how many threads do the disk work (a new keyword). More
        writers at once share more directory flushes.
    """

    def __init__(
        self,
        env_dir: str,
        meta_dir: str,
        tmp_dir: str | None = None,
        *,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        super().__init__()
        self.threads = max(1, int(threads))
        self._pool: ThreadPool | None = None
        self.env_dir = env_dir
        self.meta_dir = meta_dir
        self.tmp_dir = tmp_dir if tmp_dir is not None else env_dir
        for path in {env_dir, meta_dir, self.tmp_dir}:
            os.makedirs(path, exist_ok=True)
        # One group-commit flusher per directory: concurrent writers share
        # the directory fsync that follows their renames.
        self._dir_syncs = {
            os.path.normpath(path): DirectorySync(path) for path in {env_dir, meta_dir}
        }

    # --- plumbing -------------------------------------------------------

    def _in_thread(self, func: Callable[..., _T], *args: Any) -> _T:
        pool = self._pool
        if pool is None:
            # Made on first use, for the hub of the thread that uses the store;
            # idle threads end after a while.
            pool = self._pool = ThreadPool(self.threads, idle_task_timeout=IDLE_THREAD_SECONDS)
        try:
            return pool.apply(func, args)
        except (OSError, CodecError, ValueError) as exc:
            raise QueueError(f"disk storage: {exc}") from exc

    def _env_path(self, id: str) -> str:
        return os.path.join(self.env_dir, id + ".env")

    def _meta_path(self, id: str) -> str:
        return os.path.join(self.meta_dir, id + ".meta")

    def _write_file(self, path: str, parts: Sequence[bytes], exclusive: bool = False) -> None:
        tmp = os.path.join(self.tmp_dir, uuid.uuid4().hex + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for part in parts:
                _write_all(fd, part)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        if exclusive and os.path.exists(path):
            os.unlink(tmp)
            raise FileExistsError(path)
        os.replace(tmp, path)
        self._sync_dir(os.path.dirname(path))

    def _sync_dir(self, path: str) -> None:
        syncer = self._dir_syncs.get(os.path.normpath(path or "."))
        if syncer is None:
            fsync_dir(path or ".")
        else:
            syncer.sync()

    def _read_meta(self, id: str) -> dict[str, Any]:
        with open(self._meta_path(id), "rb") as f:
            return _check_meta(json.loads(f.read()), id)

    def _read_header(self, id: str) -> dict[str, Any]:
        """The metadata on the envelope file's first line.

        :raises FileNotFoundError: no such message.
        :raises ValueError: the file has no readable header line.
        """
        with open(self._env_path(id), "rb") as f:
            line = f.readline(MAX_HEADER_BYTES)
        meta, _ = _split_header(line, id)
        if meta is None:
            raise ValueError(f"no metadata for {id}")
        return meta

    def _current_meta(self, id: str) -> dict[str, Any]:
        """The message's metadata: its ``.meta`` file, or else its header line."""
        if self._is_quarantined(id):
            raise FileNotFoundError(self._env_path(id))
        try:
            return self._read_meta(id)
        except FileNotFoundError:
            return self._read_header(id)

    def _write_meta(self, id: str, meta: dict[str, Any]) -> None:
        data = json.dumps(meta, separators=(",", ":")).encode("ascii")
        self._write_file(self._meta_path(id), [data])

    def _is_quarantined(self, id: str) -> bool:
        return os.path.exists(self._meta_path(id) + _CORRUPT)

    def _quarantine(self, id: str, why: object) -> None:
        """Unlist a message that cannot be read: its metadata is renamed ``.meta.corrupt``
        (or, without a ``.meta`` file, such a file is written with the reason)."""
        path = self._meta_path(id)
        _log.error("disk storage: unreadable message %s moved aside (%s%s): %s",
                   id, path, _CORRUPT, why)
        try:
            os.replace(path, path + _CORRUPT)
        except FileNotFoundError:
            try:
                with open(path + _CORRUPT, "x") as f:
                    f.write(f"{why}\n")
            except OSError:
                pass
        except OSError:
            pass

    # --- QueueStorage ---------------------------------------------------

    def write(self, envelope: Envelope, timestamp: float) -> str:
        """Write the message (metadata on its first line, then the envelope) durably.

        One file flush, and one flush of ``env_dir`` shared with the writes and
        removals running at the same time.

        :raises slimta.queue.QueueError: the disk refused it.
        """
        meta = {
            "version": META_VERSION,
            "timestamp": timestamp,
            "attempts": 0,
            "recipients": len(envelope.recipients),
            "delivered": [],
        }
        header = SPOOL_MAGIC + json.dumps(meta, separators=(",", ":")).encode("ascii") + b"\r\n"
        parts = [header, *dump_parts(envelope)]

        def work() -> str:
            while True:
                id = uuid.uuid4().hex
                try:
                    self._write_file(self._env_path(id), parts, exclusive=True)
                except FileExistsError:
                    continue
                return id

        id = self._in_thread(work)
        log.write(id, envelope)
        return id

    def _update(self, id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            meta = self._current_meta(id)
            change(meta)
            self._write_meta(id, meta)
            return meta

        try:
            return self._in_thread(work)
        except QueueError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise KeyError(id) from None
            raise

    def set_timestamp(self, id: str, timestamp: float) -> None:
        """Rewrite the metadata with the next attempt's time."""
        self._update(id, lambda meta: meta.__setitem__("timestamp", timestamp))
        log.update_meta(id, timestamp=timestamp)

    def increment_attempts(self, id: str) -> int:
        """Rewrite the metadata with one more attempt; returns the new count."""
        def change(meta: dict[str, Any]) -> None:
            meta["attempts"] = int(meta.get("attempts", 0)) + 1

        meta = self._update(id, change)
        log.update_meta(id, attempts=meta["attempts"])
        return int(meta["attempts"])

    def set_recipients_delivered(self, id: str, rcpt_indexes: Sequence[int]) -> None:
        """Record recipients as done, by their indexes in the envelope :meth:`get` gave."""
        indexes = list(rcpt_indexes)

        def change(meta: dict[str, Any]) -> None:
            done = set(meta.get("delivered", []))
            remaining = [i for i in range(int(meta.get("recipients", 0))) if i not in done]
            for index in indexes:
                if 0 <= index < len(remaining):
                    done.add(remaining[index])
            meta["delivered"] = sorted(done)

        self._update(id, change)
        log.update_meta(id, delivered_indexes=indexes)

    def load(self) -> Iterator[tuple[float, str]]:
        """Every readable message, as ``(timestamp, id)``.

        Messages whose metadata cannot be read are moved aside (``.corrupt``),
        and files left over from a crash that are older than
        :data:`ORPHAN_AGE_SECONDS` are deleted.
        """
        def listing() -> list[tuple[float, str]]:
            meta_names = set(os.listdir(self.meta_dir))
            found = []
            for name in os.listdir(self.env_dir):
                if not name.endswith(".env"):
                    continue
                id = name[: -len(".env")]
                if id + ".meta" + _CORRUPT in meta_names:
                    continue  # moved aside, kept for a person
                try:
                    if id + ".meta" in meta_names:
                        meta = self._current_meta(id)
                    else:
                        meta = self._read_header(id)
                    found.append((float(meta["timestamp"]), id))
                except FileNotFoundError:
                    continue  # removed meanwhile
                except (OSError, ValueError, TypeError) as exc:
                    self._quarantine(id, exc)
            self._remove_orphans()
            return found

        return iter(self._in_thread(listing))

    def _remove_orphans(self) -> None:
        # A crash during a write leaves a temporary file; one between the two
        # unlinks of remove(), or an update racing a removal, leaves metadata
        # without its envelope. Neither is ever listed.
        too_old = time.time() - ORPHAN_AGE_SECONDS
        candidates = [
            os.path.join(self.tmp_dir, name)
            for name in os.listdir(self.tmp_dir)
            if name.endswith(".tmp")
        ]
        candidates += [
            os.path.join(self.meta_dir, name)
            for name in os.listdir(self.meta_dir)
            if name.endswith(".meta")
            and not os.path.exists(self._env_path(name[: -len(".meta")]))
        ]
        for path in candidates:
            try:
                if os.stat(path).st_mtime > too_old:
                    continue
                os.unlink(path)
            except OSError:
                continue
            _log.warning("disk storage: removed %s, left over from a crash", path)

    def get(self, id: str) -> tuple[Envelope, int]:
        """The envelope (without recipients already done) and its attempt count.

        :raises KeyError: no such message.
        :raises slimta.queue.QueueError: the files cannot be read; when their
            content is corrupt the message is moved aside (``<id>.meta.corrupt``),
            so it is no longer listed and a later :meth:`get` raises
            :exc:`KeyError`.
        """
        def work() -> tuple[Envelope, int]:
            if self._is_quarantined(id):
                raise FileNotFoundError(self._env_path(id))
            try:
                try:
                    meta: dict[str, Any] | None = self._read_meta(id)
                except FileNotFoundError:
                    meta = None
                with open(self._env_path(id), "rb") as f:
                    data = f.read()
                header, body = _split_header(data, id)
                meta = meta or header
                if meta is None:
                    raise ValueError(f"no metadata for {id}")
                envelope = loads(body)
            except (CodecError, ValueError) as exc:
                # Unlisted (its envelope file is left as it is, for an
                # operator); the next get() raises KeyError.
                self._quarantine(id, exc)
                raise
            delivered = [int(i) for i in meta.get("delivered", [])]
            self._remove_delivered_rcpts(envelope, delivered)
            return envelope, int(meta.get("attempts", 0))

        try:
            return self._in_thread(work)
        except QueueError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise KeyError(id) from None
            raise

    def remove(self, id: str) -> None:
        """Delete the envelope (durably: the message is then gone), then its metadata.

        The metadata's removal needs no flush of its own: metadata without an
        envelope is never listed, and :meth:`load` clears such leftovers. The
        flush of ``env_dir`` is shared with the writes and removals running at
        the same time.
        """

        def work() -> None:
            try:
                os.unlink(self._env_path(id))
            except FileNotFoundError:
                pass
            else:
                self._sync_dir(self.env_dir)
            try:
                os.unlink(self._meta_path(id))
            except FileNotFoundError:
                pass

        self._in_thread(work)
        log.remove(id)

    def get_info(self) -> dict[str, Any]:
        """``{'size': <messages stored>}`` (envelope files not moved aside)."""
        def count() -> int:
            meta_names = set(os.listdir(self.meta_dir))
            return sum(
                1
                for name in os.listdir(self.env_dir)
                if name.endswith(".env")
                and name[: -len(".env")] + ".meta" + _CORRUPT not in meta_names
            )

        return {"size": self._in_thread(count)}
