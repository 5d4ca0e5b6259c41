"""The old private home of :mod:`slimta.queue.outcome`, kept for importers not yet moved.

Remove it once nothing imports ``slimta.queue._outcome``.
"""

from __future__ import annotations

from slimta.queue.outcome import (
    Outcome,
    all_delivered,
    bounce_address,
    classify,
    default_backoff,
    group_by_reply,
    is_null_sender,
    unhandled_reply,
)

__all__ = [
    "Outcome",
    "all_delivered",
    "bounce_address",
    "classify",
    "default_backoff",
    "group_by_reply",
    "is_null_sender",
    "unhandled_reply",
]
