"""Helpers shared by the benchmark workers (no dependency on the library under test)."""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import time
from typing import Any


def rss_bytes() -> int:
    """The resident set size now, from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Start the peak (VmHWM) over from the current RSS (Linux ``clear_refs``).

    Without it, the peak of building the inputs (raw bytes and parsed copies)
    would count as growth of the measured section.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    """The peak resident set size since the start or :func:`reset_peak_rss`."""
    with open("/proc/self/status") as f:
        found = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
    if found is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return int(found.group(1)) * 1024


def announce() -> None:
    """Tell a profiler that the measured section starts (``BENCH_ANNOUNCE=SECONDS``).

    Prints ``CLOCK`` on stdout, then waits that long, outside the clock, so that a
    sampling profiler can attach; does nothing without the variable.
    """
    wait = os.environ.get("BENCH_ANNOUNCE")
    if wait:
        sys.stdout.write("CLOCK\n")
        sys.stdout.flush()
        time.sleep(float(wait))


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
