"""A versioned byte format for envelopes at rest, shared by the durable stores.

A stored envelope is three parts::

    SLIMTA-ENVELOPE 1\\r\\n
    <one line of JSON: sender, recipients, client, receiver, timestamp, ...>\\r\\n
    <the message, exactly as Envelope.flatten() gives it>

The message is stored as bytes, never re-encoded, so what is delivered after a
restart is what was received (with the header fields code changed). The version
number lets a newer release read what an older one wrote. Attributes a program
set on the envelope itself travel too (pickled, as python-slimta's stores did).

With ``allow_pickle=False`` (what :mod:`slimta.celeryqueue` uses) nothing is
pickled: attributes JSON can represent travel as JSON in the ``attrs`` field,
others are left out with a warning, and :func:`loads` refuses stored bytes that
carry pickled attributes instead of unpickling them. Older readers ignore
``attrs``, so the format version stays 1.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
from typing import Any

from slimta.envelope import Envelope

__all__ = ["MAGIC", "VERSION", "CodecError", "dump_parts", "dumps", "loads"]

#: The first bytes of every stored envelope.
MAGIC = b"SLIMTA-ENVELOPE "
#: The format version written by this release.
VERSION = 1

_KNOWN = frozenset(
    {"sender", "recipients", "headers", "message", "client", "receiver", "timestamp"}
)
_PRIVATE_PREFIX = "_"

_log = logging.getLogger(__name__)


class CodecError(ValueError):
    """Stored bytes that are not an envelope this release can read."""


def dump_parts(envelope: Envelope, *, allow_pickle: bool = True) -> list[bytes]:
    """The stored form of ``envelope`` as a list of byte strings to write in order.

    The message body is one of them, unjoined, so a large body is not copied.

    :param allow_pickle: when false, extra attributes (and a ``client`` JSON
        cannot hold exactly) are written as JSON where JSON can represent them
        and left out, with a warning, where it cannot.
    """
    if envelope.message is None:
        header, body, has_message = b"", b"", False
    elif envelope.headers is None:
        header, body, has_message = b"", envelope.message, True
    else:
        header, body = envelope.flatten()
        has_message = True
    extra = {
        key: value
        for key, value in vars(envelope).items()
        if key not in _KNOWN and not key.startswith(_PRIVATE_PREFIX)
    }
    meta: dict[str, Any] = {
        "sender": envelope.sender,
        "recipients": list(envelope.recipients),
        "receiver": envelope.receiver,
        "timestamp": envelope.timestamp,
        "has_message": has_message,
        "has_headers": envelope.headers is not None,
    }
    try:
        client = json.loads(json.dumps(envelope.client))
    except (TypeError, ValueError):
        client = None
    if client is not None and client == envelope.client:
        meta["client"] = client
    else:  # not plain JSON (tuples, bytes, objects): keep the exact values
        extra["client"] = envelope.client
    if extra and allow_pickle:
        meta["pickled"] = base64.b64encode(pickle.dumps(extra, protocol=4)).decode("ascii")
    elif extra:
        meta.update(_json_attrs(extra))
    line = json.dumps(meta, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return [MAGIC + str(VERSION).encode("ascii") + b"\r\n" + line + b"\r\n", header, body]


def _json_attrs(extra: dict[str, Any]) -> dict[str, Any]:
    """``client`` and ``attrs`` entries for the no-pickle form; drops what JSON cannot hold."""
    out: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    for key, value in extra.items():
        try:
            plain = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            _log.warning("envelope attribute %r is not JSON; not stored", key)
            continue
        if key == "client":
            out["client"] = plain
        else:
            attrs[key] = plain
    if attrs:
        out["attrs"] = attrs
    return out


def dumps(envelope: Envelope, *, allow_pickle: bool = True) -> bytes:
    """The stored form of ``envelope`` (see :func:`dump_parts` for ``allow_pickle``)."""
    return b"".join(dump_parts(envelope, allow_pickle=allow_pickle))


def loads(data: bytes, *, allow_pickle: bool = True) -> Envelope:
    """Read an envelope written by :func:`dumps`.

    :param allow_pickle: when false, bytes carrying pickled attributes are
        refused (:exc:`CodecError`), never unpickled.
    :raises CodecError: the bytes are not a stored envelope, or were written by a
        newer format version.
    """
    if not data.startswith(MAGIC):
        raise CodecError("not a stored envelope")
    first = data.find(b"\r\n")
    second = data.find(b"\r\n", first + 2) if first >= 0 else -1
    if second < 0:
        raise CodecError("truncated stored envelope")
    try:
        version = int(data[len(MAGIC) : first])
        meta = json.loads(data[first + 2 : second])
    except ValueError as exc:
        raise CodecError(f"corrupt stored envelope: {exc}") from None
    if version > VERSION or version < 1:
        raise CodecError(f"stored envelope format {version} is not supported")
    if not isinstance(meta, dict) or not isinstance(meta.get("recipients"), list):
        raise CodecError("corrupt stored envelope: bad metadata")
    if meta.get("pickled") and not allow_pickle:
        raise CodecError("stored envelope carries pickled attributes; refused")
    try:
        return _build(meta, data[second + 2 :])
    except CodecError:
        raise
    except Exception as exc:  # whatever bad values a damaged file holds
        raise CodecError(f"corrupt stored envelope: {exc!r}") from None


def _build(meta: dict[str, Any], message: bytes) -> Envelope:
    envelope = Envelope(meta.get("sender"), [str(r) for r in meta["recipients"]])
    if meta.get("has_message", True):
        if meta.get("has_headers", True):
            envelope.parse(message)
        else:
            envelope.message = message
    envelope.client = dict(meta.get("client") or {})
    envelope.receiver = meta.get("receiver")
    timestamp = meta.get("timestamp")
    if timestamp is not None and (
        isinstance(timestamp, bool) or not isinstance(timestamp, (int, float))
    ):
        raise CodecError(f"corrupt stored envelope: timestamp {timestamp!r}")
    envelope.timestamp = timestamp
    attrs = meta.get("attrs")
    if attrs is not None and not isinstance(attrs, dict):
        raise CodecError("corrupt stored envelope: bad attrs")
    for key, value in (attrs or {}).items():
        if key in _KNOWN or key.startswith(_PRIVATE_PREFIX):
            raise CodecError(f"corrupt stored envelope: attribute {key!r}")
        setattr(envelope, key, value)
    pickled = meta.get("pickled")
    if pickled:
        try:
            extra = pickle.loads(base64.b64decode(pickled))
        except Exception as exc:
            raise CodecError(f"corrupt stored envelope attributes: {exc}") from None
        for key, value in extra.items():
            setattr(envelope, key, value)
    return envelope
