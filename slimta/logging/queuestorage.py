"""The queue storage logger: one machine-readable line per store operation.

Stores log ``queue:<id>:write``, ``queue:<id>:meta`` and ``queue:<id>:remove``
lines at DEBUG through a :class:`~slimta.logging.QueueStorageLogger`, usually obtained with
:func:`slimta.logging.getQueueStorageLogger`.
"""

from __future__ import annotations

from slimta.logging import QueueStorageLogger

__all__ = ["QueueStorageLogger"]
