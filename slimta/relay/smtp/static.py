"""Relays that send every message to one fixed server (a smart host).

These classes only configure a :class:`~slimta.relay.pool.RelayPool`: the SMTP
or LMTP conversation lives in the client classes they create.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from slimta.relay._timeouts import Timeouts
from slimta.relay.options import ClientKeywords, ClientOptions, LmtpRelayOptions
from slimta.relay.pool import RelayPool
from slimta.relay.smtp.client import SmtpRelayClient
from slimta.relay.smtp.lmtpclient import LmtpRelayClient

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["StaticSmtpRelay", "StaticLmtpRelay"]


class StaticSmtpRelay(RelayPool):
    """Delivers every message to ``host:port`` over a pool of SMTP connections.

    :param host: the server's name or address. An absolute path (starting with
        ``/``) is a unix socket, and ``port`` is then ignored.
    :param port: the server's TCP port.
    :param pool_size: the most connections open at once; ``None`` means no limit.
    :param client_class: the client to create, by default :attr:`_default_class`.
    :param context: the :class:`ssl.SSLContext` for STARTTLS and implicit TLS;
        ``None`` builds :func:`ssl.create_default_context`.
    :param client_kwargs: any other :class:`~slimta.relay.smtp.client.SmtpRelayClient`
        keyword: ``socket_creator``, ``ehlo_as``, ``auth_mechanism``,
        ``tls_immediately``, ``tls_required``, ``connect_timeout``,
        ``command_timeout``, ``data_timeout``, ``idle_timeout`` (seconds a
        connection is kept for reuse), ``credentials``, ``binary_encoder``,
        ``allow_insecure_auth``, ``trace`` (a wire trace per connection).
    """

    #: The client class used when ``client_class`` is not given.
    _default_class: type[SmtpRelayClient] = SmtpRelayClient

    def __init__(
        self,
        host: str,
        port: int = 25,
        pool_size: int | None = None,
        client_class: type[SmtpRelayClient] | None = None,
        context: ssl.SSLContext | None = None,
        **client_kwargs: Unpack[ClientOptions],
    ) -> None:
        super().__init__(pool_size)
        self.host = host
        self.port = port
        self._client_class = client_class or self._default_class
        self._client_kwargs: ClientKeywords = {
            **client_kwargs,
            "context": context or ssl.create_default_context(),
        }

    @property
    def timeouts(self) -> Timeouts:
        """The timeouts given for the clients, as one value; the rest are the client's defaults."""
        return Timeouts.from_keywords(self._client_kwargs)

    def add_client(self) -> SmtpRelayClient:
        """Create (but do not start) one connection to ``host:port``."""
        return self._client_class((self.host, self.port), self.queue, **self._client_kwargs)


class StaticLmtpRelay(StaticSmtpRelay):
    """Delivers every message to an LMTP server, e.g. dovecot.

    :param host: the server's name or address, or the absolute path of its
        unix socket (``port`` is then ignored).
    :param port: the server's TCP port.
    :param pool_size: the most connections open at once; ``None`` means no limit.
    :param client_kwargs: as for :class:`StaticSmtpRelay`, plus its ``client_class``
        and ``context`` (see :class:`~slimta.relay.options.LmtpRelayOptions`).
    """

    _default_class: type[SmtpRelayClient] = LmtpRelayClient

    def __init__(
        self,
        host: str = "localhost",
        port: int = 24,
        pool_size: int | None = None,
        **client_kwargs: Unpack[LmtpRelayOptions],
    ) -> None:
        super().__init__(host, port, pool_size, **client_kwargs)
