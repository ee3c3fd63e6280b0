"""`ImageEmbeddingCache`: media embeddings keyed by content hash + preprocessing (which includes the token
budget), least-recently-used, bounded in bytes, so a second question about the same image skips the ViT."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class ImageEmbeddingCache:
    def __init__(self, max_bytes: int = 512 << 20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.bytes = 0

    def get(self, key: str) -> np.ndarray | None:
        value = self._items.get(key)
        if value is None:
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        if key in self._items:
            self.bytes -= self._items.pop(key).nbytes
        value.setflags(write=False)
        self._items[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._items)
