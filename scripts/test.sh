#!/usr/bin/env bash
# One command that prepares a fresh Debian machine and runs every check:
#   bash scripts/test.sh [extra pytest args]
# It installs the real mail servers the integration tests talk to (when missing),
# builds .venv with the package and its test tools, then runs ruff, mypy, the
# Sphinx build (warnings are errors) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || need_pkgs+=(postfix)
[ -x /usr/sbin/dovecot ] || need_pkgs+=(dovecot-core)
[ -e /usr/lib/dovecot/lmtp ] || need_pkgs+=(dovecot-lmtpd)
command -v maildrop >/dev/null 2>&1 || need_pkgs+=(maildrop)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need_pkgs+=(redis-server)
command -v swaks >/dev/null 2>&1 || need_pkgs+=(swaks)
[ -x /usr/sbin/spamd ] || need_pkgs+=(spamd spamassassin)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "== installing Debian packages: ${need_pkgs[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
echo "== installing slimta-relay and test tools into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test,dev]'

echo "== ruff"
.venv/bin/ruff check slimta test bench examples
echo "== mypy"
.venv/bin/mypy
echo "== sphinx"
.venv/bin/sphinx-build -q -W -n -b html doc doc/_build/html
echo "== pytest"
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin:/usr/lib/dovecot"
.venv/bin/python -m pytest "$@"

# The DNS layer must also work on the newest pycares 4.x (callbacks, getsock(),
# flat results): run the DNS and MX tests again in a second environment.
if [ $# -eq 0 ]; then
    echo "== pytest (pycares 4)"
    if [ ! -x .venv-pycares4/bin/python ]; then
        "$PY" -m venv .venv-pycares4
    fi
    .venv-pycares4/bin/python -m pip install -q --disable-pip-version-check \
        --config-settings editable_mode=compat -e '.[test]' 'pycares>=4,<5'
    .venv-pycares4/bin/python -c 'import pycares; assert pycares.__version__.startswith("4."), pycares.__version__'
    .venv-pycares4/bin/python -m pytest -q test/integration/test_slimta_util_dns.py test/integration/test_slimta_relay_smtp_mx.py
fi
