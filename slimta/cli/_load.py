"""``slimta-relay --count N --concurrency C``: relay many copies and summarise.

Each copy is a separate :meth:`~slimta.relay.Relay.attempt` on its own copy of
the envelope, at most ``C`` at a time (a :class:`gevent.pool.Pool`). The relay
itself is built with a pool of ``C`` connections kept open between messages, so
the numbers measure connection reuse as a real MTA would use it.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import gevent.pool

from slimta.cli._message import Outcome, Status, outcomes_of
from slimta.envelope import Envelope
from slimta.relay import Relay, RelayError, RelayResult

__all__ = ["LoadResult", "percentile", "run_load"]

#: Width of the progress bar, in characters.
BAR_WIDTH = 30
#: Least time between two redraws of the progress bar, in seconds.
REDRAW_INTERVAL_SECONDS = 0.1


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0.0 when empty).

    :param fraction: 0.5 for the median, 0.99 for p99.
    """
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LoadResult:
    """What a load run measured."""

    count: int
    concurrency: int
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    failed: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def failures_by_code(self) -> collections.Counter[str]:
        """How many recipients failed with each reply code."""
        return collections.Counter(
            (outcome.reply.code or "???") if outcome.reply is not None else "???"
            for outcome in self.outcomes
            if outcome.status is not Status.DELIVERED
        )

    def summary(self) -> list[str]:
        """The report, one line per item."""
        rate = self.count / self.elapsed if self.elapsed > 0 else 0.0
        ordered = sorted(self.latencies)
        ms = [1000.0 * percentile(ordered, q) for q in (0.5, 0.9, 0.99)]
        lines = [
            f"messages:    {self.count} sent, {self.delivered} delivered, {self.failed} failed",
            f"concurrency: {self.concurrency}",
            f"elapsed:     {self.elapsed:.3f} s",
            f"throughput:  {rate:.1f} messages/s",
            f"latency:     p50 {ms[0]:.1f} ms, p90 {ms[1]:.1f} ms, p99 {ms[2]:.1f} ms",
        ]
        failures = self.failures_by_code()
        if failures:
            parts = ", ".join(f"{code} x{n}" for code, n in sorted(failures.items()))
            lines.append(f"failures:    {parts} (recipients, by reply code)")
        else:
            lines.append("failures:    none")
        return lines


class _Progress:
    """A one-line progress bar, redrawn in place; only used on a terminal."""

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = total
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < REDRAW_INTERVAL_SECONDS:
            return
        self._drawn = now
        filled = BAR_WIDTH * done // max(self.total, 1)
        rate = done / (now - self.started) if now > self.started else 0.0
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.out.write(f"\r[{bar}] {done}/{self.total} {rate:.0f} msg/s")
        self.out.flush()

    def finish(self) -> None:
        self.update(self.total, force=True)
        self.out.write("\n")
        self.out.flush()


def run_load(
    relay: Relay,
    envelope: Envelope,
    count: int,
    concurrency: int,
    progress_out: TextIO | None = None,
) -> LoadResult:
    """Relay ``count`` copies of ``envelope``, ``concurrency`` at a time.

    :param progress_out: where to draw a progress bar, or ``None`` for none.
    """
    result = LoadResult(count=count, concurrency=concurrency)
    progress = _Progress(progress_out, count) if progress_out is not None else None
    recipients = list(envelope.recipients)

    def one(index: int) -> None:
        copy = envelope.copy()
        started = time.monotonic()
        outcome: RelayResult | RelayError
        try:
            outcome = relay.attempt(copy, 0)
        except RelayError as exc:
            outcome = exc
        result.latencies.append(time.monotonic() - started)
        outcomes = outcomes_of(recipients, outcome)
        result.outcomes.extend(outcomes)
        if all(item.status is Status.DELIVERED for item in outcomes):
            result.delivered += 1
        else:
            result.failed += 1
        if progress is not None:
            progress.update(result.delivered + result.failed)

    pool = gevent.pool.Pool(concurrency)
    started = time.monotonic()
    try:
        for index in range(count):
            pool.spawn(one, index)
        pool.join(raise_error=True)
    finally:
        pool.kill()
    result.elapsed = time.monotonic() - started
    if progress is not None:
        progress.finish()
    return result
