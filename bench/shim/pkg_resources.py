"""Benchmark-only stand-in for ``pkg_resources``.

python-slimta 5.0.5 calls ``pkg_resources.require('python-slimta')[0].version`` at
import time, which fails on current setuptools. The benchmark puts this directory
first on ``PYTHONPATH`` for the python-slimta worker only.
"""

from importlib.metadata import version as _version


class _Dist:
    def __init__(self, name: str) -> None:
        self.version = _version(name)


def require(name: str) -> list:
    return [_Dist(name)]
