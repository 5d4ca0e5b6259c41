"""A crash-safe :class:`~slimta.queue.QueueStorage` on the local disk.

Each message is two files: ``<id>.env`` in ``env_dir`` (the envelope, in the
versioned format of :mod:`slimta.queue.codec`, message bytes as received) and
``<id>.meta`` in ``meta_dir`` (JSON: when the next attempt is due, how many
attempts were made, which recipients are done).

Every file is written the same way: to a temporary file in ``tmp_dir``, which is
flushed with ``fsync``, renamed over its final name, and then the directory is
flushed too. A crash at any moment leaves either the old file or the new one,
never a half-written one. The envelope is written before its metadata and
:meth:`~DiskStorage.load` only lists metadata, so a message is visible only once
it is whole; removal deletes the metadata first. The disk work runs in gevent's
thread pool, so a slow ``fsync`` never blocks the other greenlets.

Files that cannot be read are renamed with a ``.corrupt`` suffix, logged, and
left for an operator: nothing is deleted that a person might want back.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import gevent

from slimta.envelope import Envelope
from slimta.logging import getQueueStorageLogger
from slimta.queue import QueueError, QueueStorage
from slimta.queue.codec import CodecError, dump_parts, loads

from ._fsync import DirectorySync, fsync_dir

__all__ = ["DiskStorage"]

_log = logging.getLogger(__name__)
log = getQueueStorageLogger(__name__)

_T = TypeVar("_T")

#: The version written in each metadata file.
META_VERSION = 1

#: Leftovers of a crash (a temporary file, or an envelope whose metadata was
#: never written or already removed) are deleted by :meth:`DiskStorage.load`
#: once they are this old; no write or removal takes that long.
ORPHAN_AGE_SECONDS = 3600.0


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
    """

    def __init__(self, env_dir: str, meta_dir: str, tmp_dir: str | None = None) -> None:
        super().__init__()
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

    @staticmethod
    def _in_thread(func: Callable[..., _T], *args: Any) -> _T:
        try:
            return gevent.get_hub().threadpool.apply(func, args)
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
            meta = json.loads(f.read())
        # Every field is checked here, so that nothing later trips over a bad type.
        try:
            float(meta["timestamp"])
            int(meta.get("attempts", 0))
            int(meta.get("recipients", 0))
            [int(i) for i in meta.get("delivered", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad metadata for {id}: {exc!r}") from None
        return meta

    def _write_meta(self, id: str, meta: dict[str, Any]) -> None:
        data = json.dumps(meta, separators=(",", ":")).encode("ascii")
        self._write_file(self._meta_path(id), [data])

    def _quarantine(self, path: str, why: object) -> None:
        _log.error("disk storage: unreadable file %s moved aside: %s", path, why)
        try:
            os.replace(path, path + ".corrupt")
        except OSError:
            pass

    # --- QueueStorage ---------------------------------------------------

    def write(self, envelope: Envelope, timestamp: float) -> str:
        """Write the envelope, then its metadata; each durably, before returning.

        :raises slimta.queue.QueueError: the disk refused it.
        """
        parts = dump_parts(envelope)
        meta = {
            "version": META_VERSION,
            "timestamp": timestamp,
            "attempts": 0,
            "recipients": len(envelope.recipients),
            "delivered": [],
        }

        def work() -> str:
            while True:
                id = uuid.uuid4().hex
                try:
                    self._write_file(self._env_path(id), parts, exclusive=True)
                except FileExistsError:
                    continue
                self._write_meta(id, meta)
                return id

        id = self._in_thread(work)
        log.write(id, envelope)
        return id

    def _update(self, id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            meta = self._read_meta(id)
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
        """Every message with readable metadata, as ``(timestamp, id)``.

        Unreadable metadata is moved aside (``.corrupt``), and files left over
        from a crash that are older than :data:`ORPHAN_AGE_SECONDS` are deleted.
        """
        def listing() -> list[tuple[float, str]]:
            found = []
            for name in os.listdir(self.meta_dir):
                if not name.endswith(".meta"):
                    continue
                id = name[: -len(".meta")]
                try:
                    meta = self._read_meta(id)
                    found.append((float(meta["timestamp"]), id))
                except FileNotFoundError:
                    continue  # removed meanwhile
                except (OSError, ValueError, TypeError) as exc:
                    self._quarantine(self._meta_path(id), exc)
            self._remove_orphans()
            return found

        return iter(self._in_thread(listing))

    def _remove_orphans(self) -> None:
        # A crash between the two writes of write(), or between the two unlinks
        # of remove(), leaves an envelope with no metadata (never acknowledged,
        # or already done); one during a write leaves a temporary file.
        # Envelopes of quarantined (.corrupt) metadata are kept for a person.
        too_old = time.time() - ORPHAN_AGE_SECONDS
        candidates: list[tuple[str, str | None]] = [
            (os.path.join(self.tmp_dir, name), None)
            for name in os.listdir(self.tmp_dir)
            if name.endswith(".tmp")
        ]
        candidates += [
            (os.path.join(self.env_dir, name), name[: -len(".env")])
            for name in os.listdir(self.env_dir)
            if name.endswith(".env")
        ]
        for path, id in candidates:
            try:
                if os.stat(path).st_mtime > too_old:
                    continue
                if id is not None and (
                    os.path.exists(self._meta_path(id))
                    or os.path.exists(self._meta_path(id) + ".corrupt")
                ):
                    continue
                os.unlink(path)
            except OSError:
                continue
            _log.warning("disk storage: removed %s, left over from a crash", path)

    def get(self, id: str) -> tuple[Envelope, int]:
        """The envelope (without recipients already done) and its attempt count.

        :raises KeyError: no such message.
        :raises slimta.queue.QueueError: the files cannot be read; when their
            content is corrupt the metadata file is renamed with a ``.corrupt``
            suffix, so the message is no longer listed and a later :meth:`get` raises
            :exc:`KeyError`.
        """
        def work() -> tuple[Envelope, int]:
            try:
                meta = self._read_meta(id)
                with open(self._env_path(id), "rb") as f:
                    data = f.read()
                envelope = loads(data)
            except (CodecError, ValueError) as exc:
                # Unlisted (its envelope file is left as it is, for an
                # operator); the next get() raises KeyError.
                self._quarantine(self._meta_path(id), exc)
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
        """Delete the metadata (durably: the message is then gone), then the envelope.

        The envelope's removal needs no flush of its own: an envelope file
        without metadata is never delivered, and :meth:`load` clears such
        leftovers.
        """

        def work() -> None:
            try:
                os.unlink(self._meta_path(id))
            except FileNotFoundError:
                pass
            else:
                self._sync_dir(self.meta_dir)
            try:
                os.unlink(self._env_path(id))
            except FileNotFoundError:
                pass

        self._in_thread(work)
        log.remove(id)

    def get_info(self) -> dict[str, Any]:
        """``{'size': <messages stored>}``."""
        def count() -> int:
            return sum(1 for name in os.listdir(self.meta_dir) if name.endswith(".meta"))

        return {"size": self._in_thread(count)}
