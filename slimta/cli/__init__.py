"""Command-line programs built on the library.

:mod:`slimta.cli.relay` is ``slimta-relay``, which relays a message with any
relay of :mod:`slimta.relay` (see :doc:`/cli`). The commands use only the
library's public hooks: the relays' ``trace`` keywords for the transcript and
:meth:`~slimta.relay.Relay.close` to let connections end politely.
"""
