"""A sliding window of a live stream's 16 kHz samples, addressed by absolute sample index."""

from __future__ import annotations

import numpy as np


class AudioBuffer:
    """Appends at the end, forgets the beginning: holds samples [base, base + len).

    Storage grows by doubling and is compacted when the kept part fits in the front half,
    so appends and trims cost amortised O(samples).
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._data = np.zeros(capacity, dtype=np.float32)
        self._head = 0  # index in _data of sample `base`
        self._size = 0
        self.base = 0  # absolute index of the first sample held

    @property
    def end(self) -> int:
        """Absolute index one past the last sample held."""
        return self.base + self._size

    def __len__(self) -> int:
        return self._size

    def append(self, samples: np.ndarray) -> None:
        n = len(samples)
        if self._head + self._size + n > len(self._data):
            needed = self._size + n
            if needed > len(self._data) // 2:
                grown = np.zeros(max(2 * len(self._data), 2 * needed), dtype=np.float32)
                grown[: self._size] = self._data[self._head : self._head + self._size]
                self._data = grown
            else:
                self._data[: self._size] = self._data[self._head : self._head + self._size]
            self._head = 0
        self._data[self._head + self._size : self._head + self._size + n] = samples
        self._size += n

    def trim_before(self, index: int) -> None:
        """Forget samples before absolute `index` (no-op if already gone)."""
        drop = min(max(index - self.base, 0), self._size)
        self._head += drop
        self._size -= drop
        self.base += drop

    def slice(self, start: int, end: int) -> np.ndarray:
        """A copy of absolute samples [start, end); they must still be held."""
        if start < self.base or end > self.end or start > end:
            raise IndexError(
                f"samples [{start}, {end}) not held (buffer holds [{self.base}, {self.end}))"
            )
        return self._data[self._head + start - self.base : self._head + end - self.base].copy()
