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


def _version_with_metadata(versions: dict) -> str:
    """slimta.core.__version__ imported afresh in a child whose metadata holds ``versions``."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        f"versions = {versions!r}\n"
        "def version(name):\n"
        "    if name not in versions:\n"
        "        raise m.PackageNotFoundError(name)\n"
        "    if isinstance(versions[name], Exception):\n"
        "        raise versions[name]\n"
        "    return versions[name]\n"
        "m.version = version\n"
        "import slimta.core\n"
        "print(slimta.core.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def _setup_py_version() -> str:
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "setup.py")) as f:
        found = re.search(r'version="([^"]+)"', f.read())
    assert found
    return found.group(1)


def test_version_is_our_distributions():
    assert _version_with_metadata({"slimta-relay": "9.8.7", "python-slimta": "5.0.5"}) == "9.8.7"


def test_version_never_reads_another_distribution():
    # slimta-relay's metadata missing, python-slimta's present: never "5.0.5".
    got = _version_with_metadata({"python-slimta": "5.0.5"})
    assert got != "5.0.5"
    assert got == slimta.core._FALLBACK_VERSION == _setup_py_version()


def test_broken_metadata_falls_back_to_the_literal():
    got = _version_with_metadata({"slimta-relay": ValueError("broken"), "python-slimta": "5.0.5"})
    assert got == _setup_py_version()
