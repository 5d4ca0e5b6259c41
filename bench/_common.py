"""Helpers shared by the benchmark workers (no dependency on the library under test)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

#: About 2 KB of message body, 78-column lines, built once before the clock starts.
LINE = b"The quick brown fox jumps over the lazy dog, again and again and again...\r\n"


def body_of(size: int) -> bytes:
    """A body of ``size`` bytes made of CRLF-terminated text lines."""
    reps = size // len(LINE) + 1
    return (LINE * reps)[:size]


def rss_bytes() -> int:
    """The resident set size now, from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Clock:
    """Wall and CPU time of a measured section."""

    def __enter__(self) -> Clock:
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.elapsed = time.perf_counter() - self.t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu = (ru1.ru_utime - self.ru0.ru_utime) + (ru1.ru_stime - self.ru0.ru_stime)


def emit(**result: Any) -> None:
    """Print the worker's result as one JSON line on stdout (the driver reads it)."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
