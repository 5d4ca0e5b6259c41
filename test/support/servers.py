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
* ``haproxy``: factory, HAProxy sending PROXY headers to a backend (``support.haproxy``)
* ``spamd``: session, a private SpamAssassin spamd (``support.spamd``)
* ``smtp_edge``: factory, an SmtpEdge and its queue in the test's hub (``support.smtp_edge``)
* ``wsgi_edge``: factory, a WsgiEdge and its queue in the test's hub (``support.wsgi_edge``)
"""

from support.aiosmtpd_server import aiosmtpd_server
from support.dovecot import _dovecot_instance, dovecot_lda, dovecot_lmtp
from support.haproxy import haproxy
from support.maildrop import maildrop_box
from support.redis_server import redis_prefix, redis_server
from support.smtp_edge import smtp_edge
from support.smtp_sink import smtp_sink
from support.spamd import spamd
from support.tls import tls_cert
from support.wsgi_edge import wsgi_edge
from support.wsgi_server import wsgi_server

__all__ = [
    "_dovecot_instance",
    "aiosmtpd_server",
    "dovecot_lda",
    "dovecot_lmtp",
    "haproxy",
    "maildrop_box",
    "redis_prefix",
    "redis_server",
    "smtp_edge",
    "smtp_sink",
    "spamd",
    "tls_cert",
    "wsgi_edge",
    "wsgi_server",
]
