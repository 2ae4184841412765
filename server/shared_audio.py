"""A shared-memory ring of job audio from one ingest process to the model process.

Multi-process mode (server.supervisor) moves each job's audio, up to 30 s of float32 (1.9 MB),
from an ingest process to the model process without pickling it into the link: the ingest
process writes the samples into this ring and the job message carries only where they are
(an AudioSlot); the model process's reader for that link copies them out, in the order they
were written, and advances the read position kept in the ring's header, which frees the space.

Single producer (the ingest process's event loop), single consumer (the model process's
reader thread of that ingest process's link); both positions only grow, so the producer
sees free space as capacity - (written - read). An array that does not fit before the end of
the buffer starts again at its beginning (the tail it skips counts as read with it). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

HEADER_BYTES = 64  # the read position (uint64) at 0; the rest keeps the data cache-line aligned
ALIGN = 16  # each array starts on a 16-byte boundary (any numpy dtype's alignment)
# 16 MiB: ~4 minutes of float32 16 kHz audio in flight between the two processes; the model
# process copies a job out as soon as its message arrives, so the ring holds only what the
# link has not delivered yet.
DEFAULT_RING_BYTES = 16 << 20


@dataclass(frozen=True)
class AudioSlot:
    """Where a job's audio lies in the ring: what the job message carries instead of samples."""

    position: int  # the data's start, as a running byte count (offset = position % capacity)
    nbytes: int
    dtype: str  # numpy dtype string, e.g. "<f4"
    length: int  # samples

    @property
    def end(self) -> int:
        return self.position + self.nbytes


def _align(position: int) -> int:
    return -(-position // ALIGN) * ALIGN


def create_ring_memory(size: int = DEFAULT_RING_BYTES) -> shared_memory.SharedMemory:
    """A new ring's memory (zero-filled: read position 0), made by the supervisor.

    The supervisor's resource tracker registers it, so it is unlinked even if the supervisor
    is killed; the supervisor unlinks it itself when the ingest process using it is gone.
    """
    return shared_memory.SharedMemory(create=True, size=HEADER_BYTES + size)


class AudioRing:
    """One ingest process's ring, attached by name: the ingest process writes, the model
    process reads."""

    def __init__(self, memory: shared_memory.SharedMemory) -> None:
        self.memory = memory
        self.capacity = (memory.size - HEADER_BYTES) // ALIGN * ALIGN
        self._read = np.ndarray((1,), dtype=np.uint64, buffer=memory.buf, offset=0)
        self._data = np.ndarray((self.capacity,), dtype=np.uint8, buffer=memory.buf,
                                offset=HEADER_BYTES)  # fmt: skip
        self._written = 0  # the producer's position (only the producer writes)

    @classmethod
    def attach(cls, name: str) -> AudioRing:
        # Python < 3.13 registers an attached segment with the resource tracker as if it had
        # made it; harmless here: the ingest and model processes are the supervisor's spawned
        # children and share its tracker, where the name is already registered (a set).
        return cls(shared_memory.SharedMemory(name))

    @property
    def name(self) -> str:
        return self.memory.name

    @property
    def read_position(self) -> int:
        return int(self._read[0])

    @property
    def in_flight(self) -> int:
        """Bytes written and not yet read (the producer's view)."""
        return self._written - self.read_position

    # -- producer (ingest process) -------------------------------------------------------------

    def write(self, audio: np.ndarray) -> AudioSlot | None:
        """Copy audio into the ring; None when it has no room (the caller sends it inline)."""
        data = np.ascontiguousarray(audio)
        nbytes = data.nbytes
        start = _align(self._written)
        if start % self.capacity + nbytes > self.capacity:
            start = _align(start + self.capacity - start % self.capacity)  # wrap to the front
        if start + nbytes - self.read_position > self.capacity:
            return None
        offset = start % self.capacity
        self._data[offset : offset + nbytes] = data.view(np.uint8).reshape(-1)
        self._written = start + nbytes
        return AudioSlot(start, nbytes, data.dtype.str, len(data))

    # -- consumer (model process) --------------------------------------------------------------

    def read(self, slot: AudioSlot) -> np.ndarray:
        """A copy of the slot's samples; frees the ring up to its end. Slots are read in the
        order they were written."""
        offset = slot.position % self.capacity
        raw = self._data[offset : offset + slot.nbytes].copy()
        self._read[0] = slot.end
        return raw.view(np.dtype(slot.dtype))[: slot.length]

    def close(self) -> None:
        """Unmap (both sides); the supervisor unlinks the name."""
        del self._read, self._data
        self.memory.close()
