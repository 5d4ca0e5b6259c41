"""The records :class:`~slimta.util.dns.DNSResolver` answers with, and their making.

Small immutable records that look the same on pycares 4 and 5, the table of
supported query types, and the conversion of either version's query result into
those records. Pure: no channel, no hub, no I/O. :mod:`slimta.util.dns`
re-exports the record classes, which are documented there.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import pycares

__all__ = [
    "MxAnswer",
    "AddressAnswer",
    "TxtAnswer",
    "NameAnswer",
    "SoaAnswer",
    "SrvAnswer",
    "Answer",
    "query_type_number",
    "convert",
]


class MxAnswer(NamedTuple):
    """One MX record. ``host`` has no trailing dot; a null MX (``.``) gives ``''``."""

    host: str
    priority: int
    ttl: int = -1


class AddressAnswer(NamedTuple):
    """One A or AAAA record; ``host`` is the textual address."""

    host: str
    ttl: int = -1


class TxtAnswer(NamedTuple):
    """One TXT record: its strings joined, as ``str``, or ``bytes`` if not UTF-8."""

    text: Union[str, bytes]
    ttl: int = -1


class NameAnswer(NamedTuple):
    """One PTR, CNAME or NS record.

    The target is :attr:`name`; :attr:`cname` and :attr:`host` are the same
    value under the names pycares 4 used for CNAME and NS answers.
    """

    name: str
    ttl: int = -1

    @property
    def cname(self) -> str:
        """The target of a CNAME answer (same as :attr:`name`)."""
        return self.name

    @property
    def host(self) -> str:
        """The name server of an NS answer (same as :attr:`name`)."""
        return self.name


class SoaAnswer(NamedTuple):
    """The SOA record, with pycares 4's field names."""

    nsname: str
    hostmaster: str
    serial: int
    refresh: int
    retry: int
    expires: int
    minttl: int
    ttl: int = -1


class SrvAnswer(NamedTuple):
    """One SRV record, with pycares 4's field names."""

    host: str
    port: int
    priority: int
    weight: int
    ttl: int = -1


Answer = Union[MxAnswer, AddressAnswer, TxtAnswer, NameAnswer, SoaAnswer, SrvAnswer]

_QUERY_TYPES: dict[str, int] = {
    name: getattr(pycares, f"QUERY_TYPE_{name}")
    for name in ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT")
}
_NAMED_TYPES: dict[int, str] = {number: name for name, number in _QUERY_TYPES.items()}
_CNAME = _QUERY_TYPES["CNAME"]


def query_type_number(query_type: Union[int, str]) -> int:
    if isinstance(query_type, str):
        number = _QUERY_TYPES.get(query_type.upper())
    else:
        number = query_type if query_type in _NAMED_TYPES else None
    if number is None:
        raise ValueError(f"unsupported DNS query type: {query_type!r}")
    return number


# ---------------------------------------------------------------------------
# The pycares 4/5 result conversion: every version-specific detail of an
# answer lives below.


def _strip_dot(name: Any) -> str:
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
    return text[:-1] if text.endswith(".") else text


def _text(data: Union[str, bytes]) -> Union[str, bytes]:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(data)


def _convert_v5(qtype: int, data: Any, ttl: int) -> Answer:
    name = _NAMED_TYPES[qtype]
    if name == "MX":
        return MxAnswer(_strip_dot(data.exchange), data.priority, ttl)
    if name in ("A", "AAAA"):
        return AddressAnswer(data.addr, ttl)
    if name == "TXT":
        return TxtAnswer(_text(data.data), ttl)
    if name in ("CNAME", "NS", "PTR"):
        target = {"CNAME": "cname", "NS": "nsdname", "PTR": "dname"}[name]
        return NameAnswer(_strip_dot(getattr(data, target)), ttl)
    if name == "SOA":
        return SoaAnswer(
            _strip_dot(data.mname),
            _strip_dot(data.rname),
            data.serial,
            data.refresh,
            data.retry,
            data.expire,
            data.minimum,
            ttl,
        )
    return SrvAnswer(_strip_dot(data.target), data.port, data.priority, data.weight, ttl)


def _convert_v4(qtype: int, item: Any) -> Answer:
    name = _NAMED_TYPES[qtype]
    ttl = getattr(item, "ttl", -1)
    if name == "MX":
        return MxAnswer(_strip_dot(item.host), item.priority, ttl)
    if name in ("A", "AAAA"):
        return AddressAnswer(item.host, ttl)
    if name == "TXT":
        return TxtAnswer(_text(item.text), ttl)
    if name in ("CNAME", "NS", "PTR"):
        target = {"CNAME": "cname", "NS": "host", "PTR": "name"}[name]
        return NameAnswer(_strip_dot(getattr(item, target)), ttl)
    if name == "SOA":
        return SoaAnswer(
            _strip_dot(item.nsname),
            _strip_dot(item.hostmaster),
            item.serial,
            item.refresh,
            item.retry,
            item.expires,
            item.minttl,
            ttl,
        )
    return SrvAnswer(_strip_dot(item.host), item.port, item.priority, item.weight, ttl)


def convert(qtype: int, result: Any) -> list[Answer]:
    """Turn a pycares 4 or 5 query result into our records.

    pycares 5 gives a ``DNSResult`` whose ``answer`` may hold other types too
    (the CNAME chain); only records of the queried type are kept.
    """
    if hasattr(result, "answer"):
        # An answer reached through aliases lives no longer than the shortest
        # CNAME on the way, as pycares 4 (through c-ares) reports for A/AAAA.
        cap = min((rr.ttl for rr in result.answer if rr.type == _CNAME != qtype), default=None)
        return [
            _convert_v5(qtype, rr.data, rr.ttl if cap is None else min(rr.ttl, cap))
            for rr in result.answer
            if rr.type == qtype
        ]
    items = result if isinstance(result, list) else [result]
    return [_convert_v4(qtype, item) for item in items]
