"""A :class:`~slimta.queue.QueueStorage` over a cloud object store and message queue.

:class:`CloudStorage` keeps each message (and its metadata) in an *object
store* and, optionally, announces new messages on a *message queue* so that
other processes sharing the store can pick them up through :meth:`CloudStorage.wait`.
The backends are duck-typed; python-slimta's AWS ones (written for the retired
boto 2) are not part of this package. What the two objects must provide:

object store
    ``write_message(envelope, timestamp) -> id``;
    ``set_message_meta(id, timestamp=None, attempts=None, delivered_indexes=None)``
    (only the given fields change);
    ``get_message_meta(id) -> dict`` (keys ``timestamp``, ``attempts``,
    ``delivered_indexes``; missing ones mean not set);
    ``get_message(id) -> (envelope, meta dict)`` (raises :class:`KeyError`
    for an unknown id); ``delete_message(id)``;
    ``list_messages() -> iterable of (timestamp, id)``.

message queue
    ``queue_message(id, timestamp)``;
    ``poll() -> iterable of (timestamp, id, queue message handle)``;
    ``delete(queue message handle)``; ``sleep()`` (waits before the next poll).

``delivered_indexes`` in the metadata are indexes into the recipients of the
message as it was written; :meth:`CloudStorage.get` hands out the envelope
without them, and :meth:`CloudStorage.set_recipients_delivered` translates
indexes into that reduced list back to the written one (python-slimta stored
the reduced-list indexes as they came, so a second partial delivery marked the
wrong recipients).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from slimta import logging
from slimta.envelope import Envelope
from slimta.queue import QueueError, QueueStorage

__all__ = ["CloudStorageError", "CloudStorage"]

log = logging.getQueueStorageLogger(__name__)


class CloudStorageError(QueueError):
    """The base of the errors raised by cloud storage backends."""


class CloudStorage(QueueStorage):
    """Queue storage over an object store and an optional message queue.

    :param object_store: the object store (see the module documentation).
    :param message_queue: the message queue, or ``None``: then :meth:`wait`
        is not available and only this process sees new messages.
    """

    def __init__(self, object_store: Any, message_queue: Any = None) -> None:
        super().__init__()
        self.obj_store = object_store
        self.msg_queue = message_queue

    def write(self, envelope: Envelope, timestamp: float) -> str:
        storage_id = self.obj_store.write_message(envelope, timestamp)
        if self.msg_queue is not None:
            # The message is stored: a failed announcement only delays other
            # processes (they see it at their next load()), it loses nothing.
            try:
                self.msg_queue.queue_message(storage_id, timestamp)
            except Exception:
                logging.log_exception(__name__)
        log.write(storage_id, envelope)
        return str(storage_id)

    def set_timestamp(self, id: str, timestamp: float) -> None:
        self.obj_store.set_message_meta(id, timestamp=timestamp)
        log.update_meta(id, timestamp=timestamp)

    def increment_attempts(self, id: str) -> int:
        meta = self.obj_store.get_message_meta(id)
        attempts = int(meta.get("attempts") or 0) + 1
        self.obj_store.set_message_meta(id, attempts=attempts)
        log.update_meta(id, attempts=attempts)
        return attempts

    def set_recipients_delivered(self, id: str, rcpt_indexes: Sequence[int]) -> None:
        envelope, meta = self.obj_store.get_message(id)
        done = set(meta.get("delivered_indexes") or [])
        remaining = [i for i in range(len(envelope.recipients)) if i not in done]
        for index in rcpt_indexes:
            if 0 <= index < len(remaining):
                done.add(remaining[index])
        self.obj_store.set_message_meta(id, delivered_indexes=sorted(done))
        log.update_meta(id, delivered_indexes=list(rcpt_indexes))

    def load(self) -> Any:
        return self.obj_store.list_messages()

    def get(self, id: str) -> tuple[Envelope, int]:
        envelope, meta = self.obj_store.get_message(id)
        self._remove_delivered_rcpts(envelope, meta.get("delivered_indexes") or [])
        return envelope, int(meta.get("attempts") or 0)

    def remove(self, id: str) -> None:
        self.obj_store.delete_message(id)
        log.remove(id)

    def wait(self) -> Iterator[tuple[float, str]]:
        """New messages announced on the message queue.

        Each announcement is deleted from the queue once the consumer has
        taken its ``(timestamp, id)``; after a poll, the queue's ``sleep()``
        paces the next one.

        :raises NotImplementedError: without a message queue.
        """
        if self.msg_queue is None:
            raise NotImplementedError()
        for timestamp, storage_id, message_id in self.msg_queue.poll():
            yield (timestamp, storage_id)
            self.msg_queue.delete(message_id)
        self.msg_queue.sleep()

    def get_info(self) -> dict[str, Any]:
        return {"size": sum(1 for _ in self.obj_store.list_messages())}
