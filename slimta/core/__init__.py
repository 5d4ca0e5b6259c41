"""Root of the slimta exception tree, and the installed version.

Importing this module never fails: the version comes from the installed
distribution's metadata when there is one, and from a literal otherwise.
"""

from __future__ import annotations

from importlib import metadata as _metadata

__all__ = ["SlimtaError"]

#: Used when the package runs from a source tree with no distribution metadata.
_FALLBACK_VERSION = "0.1.0"


def _read_version() -> str:
    for dist in ("slimta-relay", "python-slimta"):
        try:
            return _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            continue
        except Exception:  # broken metadata must not break imports
            break
    return _FALLBACK_VERSION


__version__: str = _read_version()


class SlimtaError(Exception):
    """The base class of every exception raised by slimta."""
