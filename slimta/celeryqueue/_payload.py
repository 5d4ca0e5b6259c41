"""The task payload: a small, versioned JSON object naming one stored message.

Pure functions, no I/O. The broker never carries the envelope itself, only
``{"v": 1, "id": "<32 hex digits>"}``; the message lives in the store.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["PAYLOAD_VERSION", "PayloadError", "make_payload", "parse_payload"]

#: The payload version this release writes and reads.
PAYLOAD_VERSION = 1

# RedisStorage's IDs: uuid4().hex.
_ID_RE = re.compile(r"[0-9a-f]{32}")
_KEYS = frozenset({"v", "id"})


class PayloadError(ValueError):
    """A task payload this release cannot act on (corrupt, or an unknown version)."""


def make_payload(id: str) -> dict[str, Any]:
    """The payload of the task that delivers stored message ``id``.

    :raises PayloadError: ``id`` is not a store ID.
    """
    if not isinstance(id, str) or not _ID_RE.fullmatch(id):
        raise PayloadError(f"not a queue ID: {id!r}")
    return {"v": PAYLOAD_VERSION, "id": id}


def parse_payload(payload: Any) -> str:
    """The message ID a task payload names.

    :raises PayloadError: not a JSON object of exactly ``v`` and ``id``, an
        unknown ``v``, or an ``id`` that is not a store ID.
    """
    if not isinstance(payload, dict):
        raise PayloadError(f"payload is not an object: {type(payload).__name__}")
    version = payload.get("v")
    if isinstance(version, bool) or not isinstance(version, int):
        raise PayloadError(f"payload version missing or not an integer: {version!r}")
    if version != PAYLOAD_VERSION:
        raise PayloadError(f"payload version {version} is not supported")
    if set(payload) != _KEYS:
        raise PayloadError(f"unexpected payload fields: {sorted(map(str, payload))}")
    id = payload["id"]
    if not isinstance(id, str) or not _ID_RE.fullmatch(id):
        raise PayloadError(f"payload id is not a queue ID: {id!r}")
    return id
