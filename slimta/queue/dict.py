"""A :class:`~slimta.queue.QueueStorage` over two dictionaries, or two ``shelve`` files.

With plain dicts the queue lives in memory. With shelves (or any mapping that
stores a copy of what it is given, such as ``dbm``-backed ones) it survives a
restart: every change is written back to the mapping, never made to an object
the mapping handed out, and ``sync()`` is called when the mapping has it.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

from slimta import logging as slimta_logging
from slimta.envelope import Envelope
from slimta.util.randomid import random_hex

from . import QueueStorage

__all__ = ["DictStorage"]

log = slimta_logging.getQueueStorageLogger(__name__)


class DictStorage(QueueStorage):
    """Keeps envelopes and their queue metadata in two mappings.

    :param envelope_db: envelopes by queue ID; a new :class:`dict` by default.
    :param meta_db: metadata by queue ID (``timestamp``, ``attempts``); a new
        :class:`dict` by default.

    .. versionchanged:: 0.1
       Delivered recipients are written back to ``envelope_db``, so a
       ``shelve``-backed store no longer delivers to them again.
    """

    def __init__(
        self,
        envelope_db: MutableMapping[str, Any] | None = None,
        meta_db: MutableMapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.env_db: MutableMapping[str, Any] = envelope_db if envelope_db is not None else {}
        self.meta_db: MutableMapping[str, Any] = meta_db if meta_db is not None else {}

    @staticmethod
    def _sync(db: MutableMapping[str, Any]) -> None:
        if type(db) is dict:
            return
        sync = getattr(db, "sync", None)
        if callable(sync):
            sync()

    def write(self, envelope: Envelope, timestamp: float) -> str:
        env_db, meta_db = self.env_db, self.meta_db
        while True:
            id = random_hex()  # 32 hex digits, like python-slimta's uuid4().hex
            if id not in env_db:
                break
        # The envelope goes in first: load() lists metadata, so a crash between
        # the two writes leaves nothing half-visible. (A plain dict has nothing
        # to sync: the check is made here, without a call.)
        env_db[id] = envelope
        if type(env_db) is not dict:
            self._sync(env_db)
        meta_db[id] = {"timestamp": timestamp, "attempts": 0}
        if type(meta_db) is not dict:
            self._sync(meta_db)
        log.write(id, envelope)
        return id

    def _update_meta(self, id: str, **changes: Any) -> dict[str, Any]:
        meta = dict(self.meta_db[id])
        meta.update(changes)
        self.meta_db[id] = meta
        self._sync(self.meta_db)
        return meta

    def set_timestamp(self, id: str, timestamp: float) -> None:
        self._update_meta(id, timestamp=timestamp)
        log.update_meta(id, timestamp=timestamp)

    def increment_attempts(self, id: str) -> int:
        attempts = int(self.meta_db[id]["attempts"]) + 1
        self._update_meta(id, attempts=attempts)
        log.update_meta(id, attempts=attempts)
        return attempts

    def set_recipients_delivered(self, id: str, rcpt_indexes: Sequence[int]) -> None:
        envelope = self.env_db[id]
        self._remove_delivered_rcpts(envelope, rcpt_indexes)
        # Assigning it back is what makes the change stick in a shelf.
        self.env_db[id] = envelope
        self._sync(self.env_db)
        log.update_meta(id, delivered_indexes=list(rcpt_indexes))

    def load(self) -> Iterator[tuple[float, str]]:
        for id in list(self.meta_db.keys()):
            try:
                meta = self.meta_db[id]
            except KeyError:
                continue
            yield (meta["timestamp"], id)

    def get(self, id: str) -> tuple[Envelope, int]:
        meta = self.meta_db[id]
        return self.env_db[id], int(meta["attempts"])

    def remove(self, id: str) -> None:
        for db in (self.meta_db, self.env_db):
            try:
                del db[id]
            except KeyError:
                pass
            else:
                if type(db) is not dict:
                    self._sync(db)
        log.remove(id)

    def get_info(self) -> dict[str, Any]:
        return {"size": len(self.env_db), "meta_size": len(self.meta_db)}
