"""``python -m slimta.relay``: the ``slimta-relay`` command (see :mod:`slimta.cli.relay`)."""

from __future__ import annotations

import sys

from slimta.cli.relay import PASSWORD_ENV as PASSWORD_ENV
from slimta.cli.relay import main as main

__all__ = ["PASSWORD_ENV", "main"]

if __name__ == "__main__":
    sys.exit(main())
