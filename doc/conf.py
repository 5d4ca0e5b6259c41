"""Sphinx configuration for slimta-relay."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "slimta-relay"
author = "The slimta-relay authors"
copyright = "2026, The slimta-relay authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
nitpicky = True
# Names autodoc meets in signatures that no inventory here can resolve (no network
# for intersphinx inventories): third-party and private types.
nitpick_ignore_regex = [
    (r"py:.*", r"(gevent|pycares|redis|ssl|socket|email|collections|typing|_typeshed)\..*"),
    (r"py:.*", r".*\._[A-Za-z].*"),
    (r"py:class", r"(Envelope|RelayPolicy|Reply|RelayError|AsyncResult|BlockingDeque|T|Any)"),
    (r"py:class", r"(Message|Callable|Iterable|Mapping|Sequence|Request|SSLContext)"),
    (r"py:class", r"(socket|IO|Client|LmtpClient|Extensions|Greenlet|Popen|SplitResult)"),
    (r"py:class", r"(RelayResult|Pattern|Match|HTTPResponse|DNSResult|Channel|NoneType)"),
    (r"py:class", r"(re\.Pattern|http\.client\..*|urllib\.parse\..*|logging\..*|ellipsis)"),
    (r"py:class", r"(deque|collections\.deque|bytes-like object|optional)"),
    (r"py:class", r"(EhloAs|Address|SocketCreator|Credentials|Buffer|ReadableBuffer)"),
    (r"py:(class|exc)", r"(AddressError|AddressEncodingError)"),
    (r"py:mod", r"(http\.client|ssl|socket|email)"),
    (r"py:meth", r"(str|bytes)\..*"),
    (r"py:obj", r".*"),
    (r"py:attr", r".*"),
    (r"py:meth", r"_.*"),
    (r"py:data", r".*"),
    (r"py:exc", r"(gevent|ssl|socket)\..*"),
]
intersphinx_mapping: dict = {}
html_theme = "alabaster"
html_static_path: list = []
exclude_patterns = ["_build"]
