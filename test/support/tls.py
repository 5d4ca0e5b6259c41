"""A throwaway self-signed certificate for every TLS-speaking test server.

One certificate serves STARTTLS and implicit TLS on aiosmtpd and TLS on the WSGI
server. Its SANs cover the names the relay is pointed at in tests (``localhost``,
``127.0.0.1``, anything under ``.test``), so clients can verify it for real instead
of switching verification off.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import gevent.ssl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsCert", "make_self_signed", "tls_cert"]

#: How long the certificate is valid either side of now; generous against clock skew.
VALIDITY_DAYS = 30


@dataclass(frozen=True)
class TlsCert:
    """Paths of a PEM certificate and key, plus ready-made contexts for both ends.

    Servers that run in their own thread (aiosmtpd) take :meth:`server_context`;
    servers and clients that run in the test's gevent hub take the ``gevent_*``
    variants, because with gevent 26 a plain :class:`ssl.SSLContext` makes blocking
    sockets that freeze the hub.
    """

    cert_path: str
    key_path: str

    @property
    def ca_path(self) -> str:
        """The certificate is its own CA: trust this file to verify it."""
        return self.cert_path

    def server_context(self) -> ssl.SSLContext:
        """A stdlib server context, for servers running outside the gevent hub."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def gevent_server_context(self) -> gevent.ssl.SSLContext:
        """A gevent server context, for servers running in the test's own hub."""
        context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> gevent.ssl.SSLContext:
        """A verifying gevent client context that trusts only this certificate.

        This is what the gevent-based code under test should be given.
        """
        context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.ca_path)
        return context

    def stdlib_client_context(self) -> ssl.SSLContext:
        """A verifying stdlib client context, for blocking clients such as smtplib."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.ca_path)
        return context


def make_self_signed(directory: str, common_name: str = "localhost") -> TlsCert:
    """Write a fresh self-signed certificate and key into ``directory``.

    ECDSA P-256 keeps generation to a few milliseconds (RSA would take far longer).
    The certificate is marked as a CA (with key identifiers and key usage) so that
    OpenSSL accepts it as its own trust anchor, even under ``VERIFY_X509_STRICT``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("*.test"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=VALIDITY_DAYS))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(sans, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.chmod(key_path, 0o600)
    return TlsCert(cert_path=cert_path, key_path=key_path)


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCert]:
    """One self-signed certificate (SANs localhost, 127.0.0.1, ``*.test``) per session."""
    yield make_self_signed(str(tmp_path_factory.mktemp("tls")))
