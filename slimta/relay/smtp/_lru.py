"""A small bounded least-recently-used map, for :mod:`slimta.relay.smtp.mx`'s caches."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A small least-recently-used map with a size bound and an eviction hook."""

    def __init__(self, maxsize: int, on_evict: Callable[[K, V], None] | None = None) -> None:
        self.maxsize = max(1, maxsize)
        self.on_evict = on_evict
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            old_key, old_value = self._data.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(old_key, old_value)

    def pop_all(self) -> list[V]:
        values = list(self._data.values())
        self._data.clear()
        return values

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
