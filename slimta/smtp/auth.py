"""Client-side SMTP AUTH (RFC 4954) with PLAIN, LOGIN, CRAM-MD5 and XOAUTH2.

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
