"""A sliding window of a live stream's 16 kHz samples, addressed by absolute sample index."""

from __future__ import annotations

import numpy as np

from .audio import pcm16_to_float32


class AudioBuffer:
    """Appends at the end, forgets the beginning: holds samples [base, base + len).

    Storage grows by doubling and is compacted when the kept part fits in the front half,
    so appends and trims cost amortised O(samples).

    Stores float32 samples, or int16 PCM (`dtype=np.int16`: a stream that arrives as 16 kHz
    16-bit PCM is kept as it came, and read as float only when a slice is taken).
    """

    def __init__(self, capacity: int = 1 << 16, dtype: np.dtype | type = np.float32) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.int16)):
            raise ValueError(f"AudioBuffer holds float32 or int16 samples, not {self.dtype}")
        self._data = np.zeros(capacity, dtype=self.dtype)
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
        if samples.dtype != self.dtype and self.dtype == np.int16:
            raise ValueError(f"an int16 AudioBuffer takes int16 PCM, not {samples.dtype}")
        n = len(samples)
        if self._head + self._size + n > len(self._data):
            needed = self._size + n
            if needed > len(self._data) // 2:
                grown = np.zeros(max(2 * len(self._data), 2 * needed), dtype=self.dtype)
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
        """Absolute samples [start, end) as a new float32 array; they must still be held.

        int16 storage is read by pcm16_to_float32 (x / 2**15): the same floats as decoding
        the PCM to float first and storing those."""
        if start < self.base or end > self.end or start > end:
            raise IndexError(
                f"samples [{start}, {end}) not held (buffer holds [{self.base}, {self.end}))"
            )
        held = self._data[self._head + start - self.base : self._head + end - self.base]
        return pcm16_to_float32(held) if self.dtype == np.int16 else held.copy()
