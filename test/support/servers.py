"""pytest plugin: every real-server fixture, registered once from ``test/conftest.py``.

The fixtures live in one module per server; importing them here is what makes pytest
see them, since only this module is listed in ``pytest_plugins``.

* ``smtp_sink``: factory, Postfix smtp-sink (``support.smtp_sink``)
* ``tls_cert``: session, self-signed certificate (``support.tls``)
* ``aiosmtpd_server``: factory, aiosmtpd in a thread (``support.aiosmtpd_server``)
* ``dovecot_lmtp``, ``dovecot_lda``: private Dovecot (``support.dovecot``)
* ``maildrop_box``: Maildir and filter for maildrop (``support.maildrop``)
* ``wsgi_server``: factory, gevent WSGI server in the test's hub (``support.wsgi_server``)
* ``redis_server``: session, a private redis-server (``support.redis_server``)
"""

from support.aiosmtpd_server import aiosmtpd_server
from support.dovecot import _dovecot_instance, dovecot_lda, dovecot_lmtp
from support.maildrop import maildrop_box
from support.redis_server import redis_prefix, redis_server
from support.smtp_sink import smtp_sink
from support.tls import tls_cert
from support.wsgi_server import wsgi_server

__all__ = [
    "_dovecot_instance",
    "aiosmtpd_server",
    "dovecot_lda",
    "dovecot_lmtp",
    "maildrop_box",
    "redis_prefix",
    "redis_server",
    "smtp_sink",
    "tls_cert",
    "wsgi_server",
]
