"""DKIM signing and verifying with dkimpy for the relay tests: one RSA key, two selectors."""

from __future__ import annotations

import base64
import re

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from support.corpus import HeaderModel, load

DOMAIN = b"example.org"
#: Two selectors, one per canonicalisation; both publish the same key.
SELECTORS = {b"relaxed2023": (b"relaxed", b"relaxed"), b"simple2023": (b"simple", b"simple")}
SIGNED_HEADERS = [
    b"From",
    b"To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"Content-Type",
    b"List-Unsubscribe",
]
PLACEHOLDERS = {"dkim-signature", "arc-seal", "arc-message-signature", "arc-authentication-results"}
# The b= tag of a DKIM-Signature field, up to the end of the field.
_B_TAG_RE = re.compile(rb"(?<=[;\s])b=([A-Za-z0-9+/=\s]+)\Z")


class Keys:
    """One RSA key: the PEM dkimpy signs with and the TXT record it verifies with."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)
        self.lookups: list[bytes] = []

    def dnsfunc(self, name: bytes, timeout: float = 5) -> bytes:
        """dkimpy's DNS hook: the TXT record of ``<selector>._domainkey.<domain>.``."""
        self.lookups.append(name)
        wanted = {selector + b"._domainkey." + DOMAIN + b"." for selector in SELECTORS}
        return self.txt if name in wanted else b""


def unfold_b(signature: bytes) -> bytes:
    """Put the ``b=`` value of a signature field on one line.

    The value's folding whitespace is part of the value, and the value is left out
    when the signature is computed, so the signature stays valid either way.
    """
    body = signature[:-2] if signature.endswith(b"\r\n") else signature
    match = _B_TAG_RE.search(body)
    assert match is not None, signature
    value = re.sub(rb"\s+", b"", match.group(1))
    return body[: match.start()] + b"b=" + value + b"\r\n"


def without_placeholders(data: bytes) -> bytes:
    model = HeaderModel.from_message(data)
    model.fields = [raw for raw in model.fields if model.name_of(raw).lower() not in PLACEHOLDERS]
    return model.flat()


def signed(name: str, keys: Keys, long_b: bool) -> bytes:
    """The corpus message ``name`` with two fresh signatures on top."""
    message = without_placeholders(load(name))
    for selector, canonicalize in SELECTORS.items():
        signature = dkim.sign(
            message,
            selector,
            DOMAIN,
            keys.private_pem,
            canonicalize=canonicalize,
            include_headers=SIGNED_HEADERS,
        )
        if long_b:
            signature = unfold_b(signature)
            assert max(len(line) for line in signature.split(b"\r\n")) > 300
        message = signature + message
    return message


def verify_all(message: bytes, keys: Keys) -> list[bool]:
    """Whether each DKIM-Signature in ``message`` verifies, top to bottom."""
    count = len(re.findall(rb"(?im)^DKIM-Signature:", message))
    checker = dkim.DKIM(message, minkey=1024)
    return [bool(checker.verify(idx=index, dnsfunc=keys.dnsfunc)) for index in range(count)]
