"""Fixed-shape encoder batches: windows padded to a few batch sizes, optionally captured.

A CUDA graph or a torch.compile'd function is specialised to its input shape, and the worker
sees every batch size from 1 to max_batch. So batches are padded up to the next bucket
(1, 2, 4, ... 32; a larger batch runs as several): the pad rows are all-zero mel windows whose
tokens are dropped. Padding cannot change the real rows' tokens because nothing in the
encoder or the quantizer head mixes rows of a batch: convolutions, attention (no mask, each
window attends to itself), LayerNorms and the codebook argmax all work per window
(tests/model/test_fixed_shape.py checks it token for token at every batch size).

Modes (LoadOptions.compile):
- buckets: eager PyTorch at the padded shapes (on CPU: to test the padding; on a GPU: stable
  cuBLAS/cuDNN algorithm choices);
- graphs: each bucket captured once as a CUDA graph (vLLM's and TGI's approach for their
  decoders: capture the largest bucket first into one shared memory pool, replay with the
  inputs copied into a static buffer); no per-kernel launch cost, which is what dominates
  small batches of a width-1024 encoder;
- inductor: torch.compile(dynamic=False) per bucket (fused kernels), and on CUDA each
  compiled bucket captured as a graph as above (our capture rather than mode="reduce-overhead",
  whose CUDA-graph trees keep per-thread state, while we load in one thread and serve in
  another).
Everything is compiled or captured at load (warm_up), never while serving a client.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# Batch sizes the encoder is run at: powers of two up to the server's default max_batch (32,
# pipeline.default_batch_size on a GPU). Six shapes keep compile/capture time and graph memory
# small; padding wastes at most half a batch, and only when a batch is not full anyway.
DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
# Eager passes before a capture: the first runs pick cuBLAS/cuDNN algorithms and allocate
# workspaces, which a graph capture must not do (PyTorch's CUDA-graph docs use 3, on a side stream).
CAPTURE_WARMUP_PASSES = 3

WindowTokens = Callable[[Tensor], Tensor]  # (B, n_mels, 3000) mels -> (B, tokens_per_window) ids


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds n rows (n <= the largest bucket)."""
    i = bisect.bisect_left(buckets, n)
    if n < 1 or i == len(buckets):
        raise ValueError(f"batch of {n} rows does not fit buckets {tuple(buckets)}")
    return buckets[i]


def split_rows(n: int, max_rows: int) -> list[range]:
    """Row ranges of at most max_rows each covering 0..n, in order."""
    return [range(start, min(start + max_rows, n)) for start in range(0, n, max_rows)]


class _CapturedBucket:
    """One bucket's CUDA graph: its input view of the shared static buffer, its output."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: Tensor, outputs: Tensor) -> None:
        self.graph = graph
        self.inputs = inputs
        self.outputs = outputs


class FixedShapeEncoder:
    """Runs window_tokens only at bucketed batch sizes, eager, compiled or as CUDA graphs.

    Calls come from one thread at a time (the model worker's, or the offline pipeline's):
    the CUDA graphs share one static input buffer and one memory pool.
    """

    def __init__(
        self,
        window_tokens: WindowTokens,
        mode: str,
        *,
        window_shape: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
    ) -> None:
        if mode not in ("buckets", "graphs", "inductor"):
            raise ValueError(f"unknown fixed-shape mode {mode!r}")
        if list(buckets) != sorted(set(buckets)) or not buckets or buckets[0] < 1:
            raise ValueError(f"buckets must be increasing positive sizes, got {tuple(buckets)}")
        self.mode = mode
        self.buckets = tuple(buckets)
        self.window_shape = window_shape
        self.dtype = dtype
        self.device = device
        self.capture = device.type == "cuda" and mode in ("graphs", "inductor")
        if mode == "graphs" and not self.capture:
            raise ValueError("CUDA graphs need a CUDA device")
        self._run: WindowTokens = (
            torch.compile(window_tokens, dynamic=False) if mode == "inductor" else window_tokens
        )
        self._graphs: dict[int, _CapturedBucket] = {}
        self._static: Tensor | None = None
        self._pool: object | None = None
        self.shapes_run: set[int] = set()  # batch sizes the model has actually seen

    @property
    def max_bucket(self) -> int:
        return self.buckets[-1]

    def __call__(self, mels: Tensor) -> Tensor:
        """(B, n_mels, 3000) windows -> (B, tokens_per_window) ids, for any B >= 1."""
        rows = split_rows(mels.shape[0], self.max_bucket)
        parts = [self._bucketed(mels[r.start : r.stop]) for r in rows]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile and/or capture every bucket now (largest first, so the smaller graphs
        reuse its memory pool), so that no client waits for it."""
        for size in reversed(self.buckets):
            self._bucketed(self._zeros(size))

    def _zeros(self, rows: int) -> Tensor:
        return torch.zeros((rows, *self.window_shape), dtype=self.dtype, device=self.device)

    def _bucketed(self, part: Tensor) -> Tensor:
        n = part.shape[0]
        size = bucket_for(n, self.buckets)
        if self.capture:
            captured = self._graphs.get(size) or self._capture(size)
            captured.inputs[:n].copy_(part)
            captured.inputs[n:].zero_()
            captured.graph.replay()
            # The next replay overwrites the static output: keep our rows now.
            return captured.outputs[:n].clone()
        if n < size:
            part = torch.cat([part, self._zeros(size - n)])
        self.shapes_run.add(size)
        return self._run(part)[:n]

    def _capture(self, size: int) -> _CapturedBucket:
        if self._static is None:
            # One input buffer for all graphs: each bucket's graph reads its first rows.
            self._static = self._zeros(self.max_bucket)
            self._pool = torch.cuda.graph_pool_handle()
        inputs = self._static[:size]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(CAPTURE_WARMUP_PASSES):  # also where inductor compiles this shape
                self._run(inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self._run(inputs)
        captured = _CapturedBucket(graph, inputs, outputs)
        self._graphs[size] = captured
        self.shapes_run.add(size)
        return captured
