"""SMTP AUTH (RFC 4954): the client side (PLAIN, LOGIN, CRAM-MD5, XOAUTH2) and, at
the end of the module, the server side (:class:`AuthSession`, :class:`ServerAuth`).

Each mechanism is a small sans-I/O object: it gives an optional initial response
and answers challenges with bytes. :func:`authenticate` drives one exchange over
an :class:`~slimta.smtp.io.IO` and returns the server's final reply.

Choice of mechanism: names are matched case-insensitively; an explicit one must be
advertised and known, else :class:`InvalidMechanismError`. Otherwise the first of
PLAIN, LOGIN and CRAM-MD5 **in the server's order** is used; XOAUTH2 only when
named; names we do not implement (``SCRAM-*``, GSSAPI, OAUTHBEARER, …) are ignored.

Cleartext rule: on an unencrypted connection, PLAIN, LOGIN and XOAUTH2 would reveal
the secret, so unless ``allow_insecure`` is given they are not eligible, nothing
secret is written, and a ``454 4.7.0`` reply comes back instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar

from slimta.smtp import SmtpError
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from slimta.smtp.io import IO

__all__ = [
    "ServerAuthError",
    "InvalidMechanismError",
    "Mechanism",
    "Plain",
    "Login",
    "CramMd5",
    "XOAuth2",
    "MECHANISMS",
    "choose_mechanism",
    "authenticate",
    "AuthSession",
    "ServerAuth",
    "ServerCredentials",
    "ServerMechanism",
    "PlainServer",
    "LoginServer",
    "CramMd5Server",
    "SERVER_MECHANISMS",
]

#: The AUTH reply's command name.
AUTH_COMMAND = b"AUTH"


class ServerAuthError(SmtpError):
    """The server's side of an AUTH exchange made no sense.

    :param msg: what went wrong.
    :param reply: the reply that triggered it (kept as :attr:`reply`).
    """

    def __init__(self, msg: str, reply: Reply) -> None:
        super().__init__(msg)
        self.reply = reply


class InvalidMechanismError(SmtpError):
    """The requested mechanism is not advertised or not supported, or none is usable.

    Its :attr:`reply` is ``504 5.5.4``.
    """

    def __init__(self, mechanism: str | None = None) -> None:
        text = "Invalid authentication mechanism"
        super().__init__(f"{text}: {mechanism}" if mechanism else text)
        self.mechanism = mechanism
        self.reply = Reply("504", "5.5.4 " + text, command=AUTH_COMMAND)


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class Mechanism:
    """One SASL client exchange, without I/O.

    :param authcid: the user name.
    :param secret: the password or token.
    :param authzid: the identity to act as, when different.
    """

    #: The SASL name, upper case.
    name: ClassVar[str] = ""
    #: True when the secret travels in a recoverable form.
    cleartext: ClassVar[bool] = True
    #: The most server challenges this mechanism answers.
    max_challenges: ClassVar[int] = 0

    def __init__(
        self, authcid: str | bytes, secret: str | bytes, authzid: str | bytes | None = None
    ) -> None:
        self.authcid = _to_bytes(authcid)
        self.secret = _to_bytes(secret)
        self.authzid = _to_bytes(authzid) if authzid else b""
        self.step = 0

    def initial_response(self) -> bytes | None:
        """The response sent on the ``AUTH`` line, or ``None`` to wait for a challenge."""
        return None

    def respond(self, challenge: bytes) -> bytes:
        """Answer one decoded challenge."""
        raise NotImplementedError


class Plain(Mechanism):
    """RFC 4616: ``authzid NUL authcid NUL secret`` as the initial response."""

    name = "PLAIN"

    def initial_response(self) -> bytes:
        return self.authzid + b"\0" + self.authcid + b"\0" + self.secret


class Login(Mechanism):
    """The de-facto LOGIN mechanism: user name, then password, one per challenge."""

    name = "LOGIN"
    max_challenges = 2

    def respond(self, challenge: bytes) -> bytes:
        self.step += 1
        return self.authcid if self.step == 1 else self.secret


class CramMd5(Mechanism):
    """RFC 2195: ``authcid SP hex(HMAC-MD5(secret, challenge))``."""

    name = "CRAM-MD5"
    cleartext = False
    max_challenges = 1

    def respond(self, challenge: bytes) -> bytes:
        digest = hmac.new(self.secret, challenge, hashlib.md5).hexdigest()
        return self.authcid + b" " + digest.encode("ascii")


class XOAuth2(Mechanism):
    """Google/Microsoft XOAUTH2: a bearer token; an error challenge gets an empty answer."""

    name = "XOAUTH2"
    max_challenges = 1

    def initial_response(self) -> bytes:
        return b"user=" + self.authcid + b"\x01auth=Bearer " + self.secret + b"\x01\x01"

    def respond(self, challenge: bytes) -> bytes:
        return b""


#: The mechanisms we implement, by name.
MECHANISMS: dict[str, type[Mechanism]] = {m.name: m for m in (Plain, Login, CramMd5, XOAuth2)}
#: The mechanisms chosen automatically (XOAUTH2 must be asked for).
AUTO_MECHANISMS = frozenset({"PLAIN", "LOGIN", "CRAM-MD5"})


def _eligible(mech: type[Mechanism], encrypted: bool, allow_insecure: bool) -> bool:
    return encrypted or allow_insecure or not mech.cleartext


def choose_mechanism(
    advertised: str,
    mechanism: str | bytes | None = None,
    encrypted: bool = False,
    allow_insecure: bool = False,
) -> type[Mechanism] | None:
    """Pick the mechanism to use.

    :param advertised: the AUTH extension's parameter, e.g. ``'PLAIN LOGIN'``.
    :param mechanism: an explicit choice, or ``None`` for automatic.
    :param encrypted: whether the connection is under TLS.
    :param allow_insecure: allow cleartext mechanisms without TLS.
    :returns: the mechanism class, or ``None`` when the only candidates are
        cleartext ones that the connection does not allow.
    :raises InvalidMechanismError: an explicit mechanism that is not advertised
        or not implemented, or no implemented mechanism is advertised at all.
    """
    offered = [name.upper() for name in advertised.split()]
    if mechanism is not None:
        name = (
            mechanism.decode("ascii", "replace") if isinstance(mechanism, bytes) else mechanism
        ).upper()
        mech = MECHANISMS.get(name)
        if mech is None or name not in offered:
            raise InvalidMechanismError(name)
        return mech if _eligible(mech, encrypted, allow_insecure) else None
    known = False
    for name in offered:
        if name in AUTO_MECHANISMS:
            known = True
            mech = MECHANISMS[name]
            if _eligible(mech, encrypted, allow_insecure):
                return mech
    if not known:
        raise InvalidMechanismError()
    return None


def insecure_reply() -> Reply:
    """A fresh ``454 4.7.0`` reply for refused cleartext authentication."""
    return Reply(
        "454", "4.7.0 Refusing to authenticate over an unencrypted connection", AUTH_COMMAND
    )


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data) if data else b"="


def authenticate(
    io: IO,
    advertised: str,
    authcid: str | bytes,
    secret: str | bytes,
    authzid: str | bytes | None = None,
    mechanism: str | bytes | None = None,
    allow_insecure: bool = False,
) -> Reply:
    """Run one AUTH exchange.

    :param io: the connection; must have nothing queued that expects a reply.
    :param advertised: the server's AUTH parameter (its mechanism names).
    :returns: the final reply (``235`` on success), or a ``454`` reply, with
        nothing written, when the cleartext rule refuses every candidate.
    :raises InvalidMechanismError: see :func:`choose_mechanism`.
    :raises ServerAuthError: a challenge that is not base64, or more challenges
        than the mechanism has answers for.
    """
    mech_class = choose_mechanism(advertised, mechanism, io.encrypted, allow_insecure)
    if mech_class is None:
        return insecure_reply()
    mech = mech_class(authcid, secret, authzid)
    initial = mech.initial_response()
    command = b"AUTH " + mech.name.encode("ascii")
    if initial is None:
        io.send_command(command)
        io.flush_send()
    else:
        io.send_command(command + b" " + _b64(initial), secret=True)
    challenges = 0
    while True:
        code, text = io.recv_reply()
        if code != "334":
            return Reply(code, text, AUTH_COMMAND, io.address)
        challenge_reply = Reply(code, text, AUTH_COMMAND, io.address)
        challenges += 1
        if challenges > mech.max_challenges:
            raise ServerAuthError("Too many AUTH challenges", challenge_reply)
        try:
            challenge = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ServerAuthError("Invalid AUTH challenge", challenge_reply)
        response = mech.respond(challenge)
        io.send_command(base64.b64encode(response), secret=True)


# -- server side ---------------------------------------------------------------
#
# python-slimta 5.0.5 exports ``AuthSession`` and ``ServerAuthError`` here and
# delegates the SASL work to pysasl. The server mechanisms below are our own and
# give the ``handle_auth(reply, creds)`` hook an object with pysasl's credential
# interface (``authcid``, ``authzid``, ``verify(identity)``), plus
# ``check_secret(secret)`` for code written against older pysasl releases.


class _AuthReplyError(ServerAuthError):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text.split(" ", 1)[1], Reply(code, text, AUTH_COMMAND))


def _invalid_auth_string() -> ServerAuthError:
    return _AuthReplyError("501", "5.5.2 Invalid authentication string")


def _invalid_mechanism() -> ServerAuthError:
    return _AuthReplyError("504", "5.5.4 Invalid authentication mechanism")


def _insecure_mechanism() -> ServerAuthError:
    return _AuthReplyError("504", "5.5.4 Insecure authentication mechanism requires TLS")


def _canceled() -> ServerAuthError:
    return _AuthReplyError("501", "5.7.0 Authentication canceled by client")


def _prep(value: str) -> bytes:
    return value.encode("utf-8")


class ServerCredentials:
    """What a client sent to authenticate, for the ``handle_auth`` hook.

    The secret is kept private: it is never part of ``repr()`` or a log line.

    :param authcid: the user name.
    :param authzid: the identity to act as (defaults to ``authcid``).
    """

    __slots__ = ("_authcid", "_authzid", "_secret", "_challenge", "_digest")

    def __init__(self, authcid: str, authzid: str | None = None) -> None:
        self._authcid = authcid
        self._authzid = authzid or authcid
        self._secret: str | None = None
        self._challenge: bytes | None = None
        self._digest: bytes | None = None

    @property
    def authcid(self) -> str:
        """The authentication identity (user name)."""
        return self._authcid

    @property
    def authzid(self) -> str:
        """The authorization identity."""
        return self._authzid

    @property
    def has_secret(self) -> bool:
        """True when the cleartext secret was sent (PLAIN, LOGIN)."""
        return self._secret is not None

    def check_secret(self, secret: str | None) -> bool:
        """Compare the credentials with the known ``secret``, in constant time."""
        if secret is None:
            return False
        if self._secret is not None:
            return hmac.compare_digest(_prep(self._secret), _prep(secret))
        if self._challenge is not None and self._digest is not None:
            expected = hmac.new(_prep(secret), self._challenge, hashlib.md5).hexdigest()
            return hmac.compare_digest(expected.encode("ascii"), self._digest)
        return False

    def verify(self, identity: object) -> bool:
        """pysasl's interface: check against an identity object.

        ``identity`` needs ``compare_authcid(str)`` and either
        ``compare_secret(str)`` (cleartext mechanisms) or ``get_clear_secret()``.
        """
        if identity is None:
            return False
        if not identity.compare_authcid(self._authcid):  # type: ignore[attr-defined]
            return False
        if self._secret is not None:
            return bool(identity.compare_secret(self._secret))  # type: ignore[attr-defined]
        getter = getattr(identity, "get_clear_secret", None)
        return self.check_secret(getter() if getter is not None else None)

    def __repr__(self) -> str:
        return f"ServerCredentials({self._authcid!r}, ..., {self._authzid!r})"


class ServerMechanism:
    """One server-side SASL exchange, without I/O.

    :meth:`step` gets the client's decoded responses so far and returns either a
    challenge (``bytes``) or the finished :class:`ServerCredentials`.
    """

    #: The SASL name, as bytes (pysasl's form).
    name: ClassVar[bytes] = b""
    #: True when the secret travels in a recoverable form (offered under TLS only).
    insecure: ClassVar[bool] = True

    def step(self, responses: list[bytes]) -> bytes | ServerCredentials:
        """The next challenge, or the credentials once every response is in.

        :param responses: the client's decoded responses so far.
        :raises ServerAuthError: a malformed response.
        """
        raise NotImplementedError


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_auth_string()


class PlainServer(ServerMechanism):
    """RFC 4616 PLAIN: ``authzid NUL authcid NUL secret``."""

    name = b"PLAIN"

    def step(self, responses: list[bytes]) -> bytes | ServerCredentials:
        if not responses:
            return b""
        parts = responses[0].split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise _invalid_auth_string()
        authzid, authcid, secret = (_text(part) for part in parts)
        creds = ServerCredentials(authcid, authzid)
        creds._secret = secret
        return creds


class LoginServer(ServerMechanism):
    """The LOGIN mechanism: a user name challenge, then a password challenge."""

    name = b"LOGIN"

    def step(self, responses: list[bytes]) -> bytes | ServerCredentials:
        if not responses:
            return b"Username:"
        if len(responses) == 1:
            return b"Password:"
        creds = ServerCredentials(_text(responses[0]))
        creds._secret = _text(responses[1])
        return creds


class CramMd5Server(ServerMechanism):
    """RFC 2195 CRAM-MD5: a unique challenge, answered with ``user SP hmac``."""

    name = b"CRAM-MD5"
    insecure = False

    def __init__(self, hostname: str = "localhost") -> None:
        self.challenge = f"<{secrets.token_hex(8)}.{int(time.time())}@{hostname}>".encode()

    def step(self, responses: list[bytes]) -> bytes | ServerCredentials:
        if not responses:
            return self.challenge
        user, _, digest = responses[0].rpartition(b" ")
        if not user or len(digest) != 32:
            raise _invalid_auth_string()
        creds = ServerCredentials(_text(user))
        creds._challenge = self.challenge
        creds._digest = digest.lower()
        return creds


#: The server mechanisms by name; ``auth=True`` means PLAIN and LOGIN.
SERVER_MECHANISMS: dict[bytes, type[ServerMechanism]] = {
    m.name: m for m in (PlainServer, LoginServer, CramMd5Server)
}
DEFAULT_SERVER_MECHANISMS = (b"PLAIN", b"LOGIN")


class ServerAuth:
    """The mechanisms a server offers (what python-slimta built with pysasl).

    :param names: mechanism names (``str`` or ``bytes``); default PLAIN and LOGIN.
    :param allow_insecure: offer cleartext mechanisms without TLS.
    :raises KeyError: an unknown mechanism name.
    """

    def __init__(
        self, names: Iterable[str | bytes] | None = None, allow_insecure: bool = False
    ) -> None:
        chosen = []
        for name in names if names is not None else DEFAULT_SERVER_MECHANISMS:
            key = (name.encode("ascii") if isinstance(name, str) else bytes(name)).upper()
            chosen.append(SERVER_MECHANISMS[key])
        self.mechanisms: list[type[ServerMechanism]] = chosen
        self.allow_insecure = allow_insecure

    @property
    def server_mechanisms(self) -> list[type[ServerMechanism]]:
        """Every configured server mechanism."""
        return list(self.mechanisms)

    @property
    def client_mechanisms(self) -> list[type[Mechanism]]:
        """The client mechanisms with the same names."""
        names = {m.name.decode("ascii") for m in self.mechanisms}
        return [MECHANISMS[n] for n in MECHANISMS if n in names]

    def get_server(self, name: bytes) -> type[ServerMechanism] | None:
        """The mechanism called ``name`` (upper case), if configured."""
        for mech in self.mechanisms:
            if mech.name == name:
                return mech
        return None


_AUTH_ARG_RE = re.compile(rb"([A-Za-z0-9_-]{1,20})(?:[ \t]+(\S+))?[ \t]*\Z")


class AuthSession:
    """The AUTH extension of one server session (python-slimta's name).

    ``str(session)`` is the EHLO parameter (the usable mechanism names) and
    raises ``ValueError`` when none is usable, so the extension is not offered:
    cleartext mechanisms are usable only once the connection is encrypted,
    unless the :class:`ServerAuth` allows them.

    :param auth: a :class:`ServerAuth`.
    :param io: the session's :class:`~slimta.smtp.io.IO`.
    """

    def __init__(self, auth: ServerAuth, io: IO) -> None:
        self.auth = auth
        self.io = io
        #: Reads one line of the exchange; the server sets its own reader.
        self.recv_line: Callable[[], bytes] = io.recv_line
        #: Used in the CRAM-MD5 challenge.
        self.hostname = "localhost"

    def _usable(self, mech: type[ServerMechanism]) -> bool:
        return self.io.encrypted or self.auth.allow_insecure or not mech.insecure

    @property
    def server_mechanisms(self) -> list[type[ServerMechanism]]:
        """The mechanisms usable on this connection now."""
        return [m for m in self.auth.server_mechanisms if self._usable(m)]

    @property
    def client_mechanisms(self) -> list[type[Mechanism]]:
        """The client mechanisms with the configured names."""
        return self.auth.client_mechanisms

    def __str__(self) -> str:
        names = [m.name.decode("ascii") for m in self.server_mechanisms]
        if not names:
            raise ValueError("No mechanisms available")
        return " ".join(names)

    def _challenge(self, challenge: bytes, initial: bytes | None) -> bytes:
        if initial is None:
            Reply("334", base64.b64encode(challenge).decode("ascii")).send(self.io, flush=True)
            initial = self.recv_line()
        if initial.strip() == b"*":
            raise _canceled()
        if initial.strip() == b"=":
            return b""
        try:
            return base64.b64decode(initial.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise _invalid_auth_string()

    def server_attempt(self, arg: bytes | None) -> ServerCredentials:
        """Run the exchange for ``AUTH <arg>``.

        :returns: the credentials the client sent (not yet verified).
        :raises ServerAuthError: unknown or unusable mechanism, malformed or
            canceled exchange; its ``reply`` is what the client gets.
        """
        match = _AUTH_ARG_RE.match(arg or b"")
        if match is None:
            raise _invalid_mechanism()
        name, initial = match.group(1).upper(), match.group(2)
        mech_class = self.auth.get_server(name)
        if mech_class is None:
            raise _invalid_mechanism()
        if not self._usable(mech_class):
            raise _insecure_mechanism()
        mech = CramMd5Server(self.hostname) if mech_class is CramMd5Server else mech_class()
        responses: list[bytes] = []
        for _ in range(4):
            step = mech.step(responses)
            if isinstance(step, ServerCredentials):
                return step
            responses.append(self._challenge(step, initial))
            initial = None
        raise _invalid_auth_string()

    def client_attempt(
        self,
        authcid: str | bytes,
        secret: str | bytes,
        authzid: str | bytes | None,
        mech_name: str | bytes | None,
    ) -> Reply:
        """Client side, python-slimta's form: see :func:`authenticate`."""
        advertised = " ".join(m.name for m in self.client_mechanisms)
        return authenticate(self.io, advertised, authcid, secret, authzid, mech_name)
