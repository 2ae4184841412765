"""What the model sustains: encoder windows per second at each batch size, measured and tracked.

Thread-free and clock-free: the worker times its batches and reports (size, seconds) here,
first at warm-up (a few timed batches: WARM_UP_SIZES, WARM_UP_REPEATS), then every batch it
runs while serving, so the estimate follows what the device really does (another process on
the GPU, thermal throttling, a slower CPU than the warm-up suggested).

Every job costs one encoder window whatever its length (the encoder pads each clip to 30 s),
so windows are the unit of both capacity (here) and demand (server.admission).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

# Smoothing of each batch size's seconds: a new batch moves the estimate by this share, so
# the last ~1/SMOOTHING batches of a size count (one slow batch does not halve the capacity).
SMOOTHING = 0.2
# Warm-up: a batch of one and a full batch (the two ends: a batch between them is estimated
# by interpolating its seconds), each timed WARM_UP_REPEATS times after one untimed batch
# that pays for lazy initialisation. On CPU max_batch is 1 (pipeline.default_batch_size):
# three windows in all.
WARM_UP_REPEATS = 2


def warm_up_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes warm-up times: 1 and max_batch."""
    return (1,) if max_batch == 1 else (1, max_batch)


class Capacity:
    """Seconds per batch by batch size (smoothed), and the windows/s that implies."""

    def __init__(self, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self._seconds: dict[int, float] = {}  # batch size -> smoothed seconds per batch
        self._sizes: list[int] = []  # the measured sizes, sorted

    def observe(self, size: int, seconds: float) -> None:
        """One batch of `size` windows took `seconds` (model time only)."""
        if size < 1 or not math.isfinite(seconds) or seconds < 0:
            return  # nothing to learn from (a clock step, an empty batch)
        old = self._seconds.get(size)
        if old is None:
            bisect.insort(self._sizes, size)
            self._seconds[size] = seconds
        else:
            self._seconds[size] = old + SMOOTHING * (seconds - old)

    @property
    def measured(self) -> bool:
        return bool(self._sizes)

    def batch_seconds(self, size: int) -> float:
        """Seconds a batch of `size` takes: measured, or interpolated between the nearest
        measured sizes (batch time is close to affine in its size); beyond the largest
        measured size, its seconds per window; below the smallest, the smallest's seconds
        (a smaller batch is not slower)."""
        if not self._sizes:
            return 0.0
        i = bisect.bisect_left(self._sizes, size)
        if i < len(self._sizes) and self._sizes[i] == size:
            return self._seconds[size]
        if i == 0:
            return self._seconds[self._sizes[0]]
        below = self._sizes[i - 1]
        if i == len(self._sizes):
            return self._seconds[below] * size / below
        above = self._sizes[i]
        share = (size - below) / (above - below)
        return self._seconds[below] + share * (self._seconds[above] - self._seconds[below])

    def windows_per_s(self, largest_batch: int | None = None) -> float:
        """Windows/s sustained at the best batch size up to largest_batch (the load allows no
        bigger one: a batch takes at most one waiting final per session in turn); inf while
        nothing has been measured (no warm-up: nothing is refused for capacity)."""
        if not self._sizes:
            return math.inf
        top = self.max_batch if largest_batch is None else min(largest_batch, self.max_batch)
        best = 0.0
        for size in range(1, max(1, top) + 1):
            seconds = self.batch_seconds(size)
            best = max(best, size / seconds if seconds > 0 else math.inf)
        return best

    def table(self, sizes: Sequence[int] | None = None) -> dict[int, float]:
        """Windows/s by batch size (the measured sizes by default), for logs and benchmarks."""
        chosen = self._sizes if sizes is None else sizes
        out = {}
        for size in chosen:
            seconds = self.batch_seconds(size)
            out[size] = size / seconds if seconds > 0 else math.inf
        return out
