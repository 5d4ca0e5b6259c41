"""The keywords the SMTP and LMTP relays pass on to their clients, typed.

python-slimta's relays take ``**client_kwargs`` and hand them, unread, to every
:class:`~slimta.relay.smtp.client.SmtpRelayClient` they create. The public
signatures keep that shape; these :class:`~typing.TypedDict` classes say what
may travel inside, so a type checker sees a misspelt keyword or a wrong value at
the call site instead of at the first delivery. At run time they are plain
dicts, and keywords a custom ``client_class`` accepts still pass through.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from email.message import Message
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from slimta.relay.smtp._connect import Address, SocketCreator
    from slimta.relay.smtp._session import Credentials
    from slimta.relay.smtp.client import SmtpRelayClient, TraceFactory

__all__ = [
    "ClientKeywords",
    "ClientOptions",
    "LmtpRelayOptions",
    "MxRelayKeywords",
    "MxRelayOptions",
]


class ClientOptions(TypedDict, total=False):
    """The :class:`~slimta.relay.smtp.client.SmtpRelayClient` keywords a relay passes on.

    Every key is optional and means what the client's parameter of the same name
    means; ``context`` is not here because the relays take it as a parameter of
    their own.
    """

    socket_creator: SocketCreator | None
    ehlo_as: str | Callable[[Address], str] | None
    auth_mechanism: str | bytes | None
    tls_immediately: bool
    tls_required: bool
    connect_timeout: float | None
    command_timeout: float | None
    data_timeout: float | None
    idle_timeout: float | None
    credentials: Credentials | None
    binary_encoder: Callable[[Message], None] | None
    allow_insecure_auth: bool
    trace: TraceFactory | None


class ClientKeywords(ClientOptions, total=False):
    """What a relay keeps and gives each client it creates: the options plus ``context``.

    A relay always sets ``context`` (its own, or a default one), so every client
    of a relay shares one :class:`ssl.SSLContext`.
    """

    context: ssl.SSLContext


class LmtpRelayOptions(ClientKeywords, total=False):
    """The keywords :class:`~slimta.relay.smtp.static.StaticLmtpRelay` passes on to
    :class:`~slimta.relay.smtp.static.StaticSmtpRelay`: the client keywords and
    ``client_class``.
    """

    client_class: type[SmtpRelayClient] | None


class MxRelayOptions(ClientOptions, total=False):
    """The keywords :class:`~slimta.relay.smtp.mx.MxSmtpRelay` passes on to each
    :class:`~slimta.relay.smtp.static.StaticSmtpRelay` it creates: the client
    options, ``pool_size`` and ``client_class``.
    """

    pool_size: int | None
    client_class: type[SmtpRelayClient] | None


class MxRelayKeywords(MxRelayOptions, total=False):
    """What :class:`~slimta.relay.smtp.mx.MxSmtpRelay` keeps: its options plus ``context``."""

    context: ssl.SSLContext
