#!/usr/bin/env bash
# Prepares the peers the benchmarks compare against (run once, by hand):
#   - .bench/slimta-orig: python-slimta 5.0.5 with pycares < 5 (its DNS code needs 4.x);
#   - aiosmtplib in the project's .venv;
#   - postfix's smtp-sink and smtp-source (Debian package postfix).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v smtp-source >/dev/null 2>&1 && [ ! -x /usr/sbin/smtp-source ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
[ -x .venv/bin/python ] || bash scripts/test.sh --co -q >/dev/null
.venv/bin/pip install -q --disable-pip-version-check aiosmtplib psutil
if [ ! -x .bench/slimta-orig/bin/python ]; then
    python3 -m venv .bench/slimta-orig
fi
.bench/slimta-orig/bin/pip install -q --disable-pip-version-check 'python-slimta==5.0.5' 'pycares<5' psutil
echo "peers ready"
