import importlib
import subprocess
import sys

import slimta.core


def test_version_is_a_string():
    assert isinstance(slimta.core.__version__, str) and slimta.core.__version__


def test_slimta_is_a_namespace_package():
    import slimta

    assert getattr(slimta, "__file__", None) is None


def test_imports_have_no_side_effects():
    code = (
        "import sys, socket\n"
        "socket.getaddrinfo = None\n"  # any DNS at import time would blow up
        "import slimta.core, slimta.envelope, slimta.policy, slimta.relay, slimta.relay.pool,"
        " slimta.relay.blackhole, slimta.smtp, slimta.smtp.reply, slimta.smtp.extensions,"
        " slimta.util.deque, slimta.logging\n"
        "assert 'pkg_resources' not in sys.modules\n"
        "import gevent.monkey\n"
        "assert not gevent.monkey.is_module_patched('socket')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_names_exist():
    for name in [
        "slimta.core",
        "slimta.envelope",
        "slimta.policy",
        "slimta.relay",
        "slimta.relay.pool",
        "slimta.relay.blackhole",
        "slimta.smtp",
        "slimta.smtp.reply",
        "slimta.smtp.extensions",
        "slimta.util.deque",
        "slimta.logging",
    ]:
        module = importlib.import_module(name)
        for attr in module.__all__:
            assert hasattr(module, attr), (name, attr)
