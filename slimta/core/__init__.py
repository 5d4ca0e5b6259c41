"""Root of the slimta exception tree, and the installed version.

Importing this module never fails: the version comes from the installed
distribution's metadata when there is one, and from a literal otherwise.
"""

from __future__ import annotations

from importlib import metadata as _metadata

__all__ = ["SlimtaError"]

#: This distribution's name: the only metadata the version is read from.
_DISTRIBUTION = "slimta-relay"

#: Used when the package runs from a source tree with no distribution metadata
#: (kept equal to the version in ``setup.py``).
_FALLBACK_VERSION = "0.1.0"


def _read_version() -> str:
    # Only our own distribution's metadata: python-slimta, installed next to
    # us, is another project, and its version must never be reported as ours.
    try:
        version = _metadata.version(_DISTRIBUTION)
    except Exception:  # missing or broken metadata must not break imports
        return _FALLBACK_VERSION
    return version if isinstance(version, str) and version else _FALLBACK_VERSION


__version__: str = _read_version()


class SlimtaError(Exception):
    """The base class of every exception raised by slimta."""
