"""Offline batch tokenization: many files -> segments -> shared encoder batches -> tokens.

Decoding and segmentation run a few files ahead in a small thread pool, so reading the next
files overlaps model work; the model itself only ever runs in the caller's thread. Segments
from consecutive files share encoder batches, which is what keeps a directory of short clips
fast. Results come back in input order, and a file that cannot be read or segmented becomes a
FileResult with an error while the others go on.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from .audio import load_audio
from .errors import IchigoStreamError, SegmentationError
from .segmentation import DEFAULT_VAD_OPTIONS, Span, VadOptions, split

if TYPE_CHECKING:  # the model side (torch) is only needed once tokenize_files runs
    from .model import IchigoTokenizer, TextOptions

SegmentMode = Literal["vad", "fixed", "none"]
SEGMENT_MODES: tuple[SegmentMode, ...] = ("vad", "fixed", "none")
# Decoding is mostly libsndfile/soxr/ffmpeg (GIL released) plus the VAD's Python loop: a few
# threads keep up with the encoder; more only hold more decoded audio in memory.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def default_batch_size(device_type: str) -> int:
    """Clips per encoder batch: 1 on CPU, 32 on a GPU.

    On CPU a batch is no faster per clip than one clip (measured: 8 clips of 15 s in one
    batch took 10-15% longer than one at a time, on a 2-core machine), and it holds 8x the
    activations; a GPU needs batches to fill its cores.
    """
    return 1 if device_type == "cpu" else 32


@dataclass(frozen=True)
class SegmentResult:
    """Samples [start, end) of the file's 16 kHz audio, its tokens, and its text if asked for."""

    start: int
    end: int
    tokens: list[int]
    text: str | None = None


@dataclass(frozen=True)
class FileResult:
    """One input file: its segments in time order, or the error that stopped it."""

    file: str
    segments: list[SegmentResult]
    n_samples: int
    error: str | None = None
    # The decoded 16 kHz audio, only with keep_audio=True (plots); not part of equality.
    audio: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Decoded:
    """A file as the pool hands it over: audio and segments, or an error message."""

    file: str
    audio: np.ndarray | None
    segments: list[Span]
    error: str | None = None


def _decode(file: str, mode: SegmentMode, vad_options: VadOptions) -> _Decoded:
    """Runs on a pool thread: read, resample and segment one file, never raising."""
    try:
        audio = load_audio(file)  # its errors already name the file
    except IchigoStreamError as e:
        return _Decoded(file, None, [], str(e))
    except Exception as e:  # an unforeseen decoder failure must not end the whole run
        return _Decoded(file, None, [], f"cannot load audio '{file}': {type(e).__name__}: {e}")
    try:
        return _Decoded(file, audio, split(audio, mode, vad_options))
    except IchigoStreamError as e:
        return _Decoded(file, None, [], f"cannot segment '{file}': {e}")


class _Pending:
    """A decoded file waiting for the tokens of its segments (main thread only)."""

    def __init__(self, decoded: _Decoded) -> None:
        self.decoded = decoded
        self.tokens: list[list[int] | None] = [None] * len(decoded.segments)
        self.texts: list[str | None] = [None] * len(decoded.segments)
        self.remaining = len(decoded.segments)

    def result(self, keep_audio: bool) -> FileResult:
        d = self.decoded
        if d.error is not None:
            return FileResult(d.file, [], 0, d.error)
        assert d.audio is not None and self.remaining == 0
        segments = [
            SegmentResult(seg.start, seg.end, tokens or [], text)
            for seg, tokens, text in zip(d.segments, self.tokens, self.texts, strict=True)
        ]
        return FileResult(d.file, segments, len(d.audio), None, d.audio if keep_audio else None)


def clip_tokens(tokenizer: IchigoTokenizer, clips: Sequence[np.ndarray]) -> list[list[int]]:
    """Tokens of each 16 kHz mono float32 clip (<= 30 s), in one encoder batch.

    The model step of the offline pipeline and of the server's worker alike.
    """
    import torch

    return [tokens.tolist() for tokens in tokenizer.quantize([torch.from_numpy(c) for c in clips])]


def token_texts(
    tokenizer: IchigoTokenizer, token_lists: Sequence[Sequence[int]], options: TextOptions
) -> list[str]:
    """Whisper's text of each token list, in one decoder batch (the text model must be loaded).

    The text step of the offline pipeline and of the server's worker alike. A list with no
    tokens (a clip under one token: 40 ms at downsample 2) has nothing to decode: its text is "".
    """
    todo = [k for k, tokens in enumerate(token_lists) if len(tokens)]
    texts = [""] * len(token_lists)
    if todo:
        decoded = tokenizer.decode_text([token_lists[k] for k in todo], options)
        for k, text in zip(todo, decoded, strict=True):
            texts[k] = text
    return texts


def _run_batch(
    tokenizer: IchigoTokenizer,
    batch: list[tuple[_Pending, int]],
    text_options: TextOptions | None,
) -> None:
    """One encoder batch (and, for text, one decoder batch) over segments of any files."""
    clips = []
    for pending, i in batch:
        seg, audio = pending.decoded.segments[i], pending.decoded.audio
        assert audio is not None
        clips.append(audio[seg.start : seg.end])
    token_lists = clip_tokens(tokenizer, clips)
    texts: list[str | None] = [None] * len(batch)
    if text_options is not None:
        texts = list(token_texts(tokenizer, token_lists, text_options))
    for (pending, i), tokens, text in zip(batch, token_lists, texts, strict=True):
        pending.tokens[i] = tokens
        pending.texts[i] = text
        pending.remaining -= 1


def tokenize_files(
    paths: Iterable[str | os.PathLike[str]],
    tokenizer: IchigoTokenizer,
    *,
    mode: SegmentMode = "vad",
    vad_options: VadOptions = DEFAULT_VAD_OPTIONS,
    batch_size: int | None = None,
    text: bool = False,
    text_options: TextOptions | None = None,
    progress: Callable[[int], None] | None = None,
    keep_audio: bool = False,
    workers: int = DEFAULT_WORKERS,
    prefetch: int | None = None,
) -> Iterator[FileResult]:
    """Tokenize files in input order; each FileResult is yielded as soon as it is complete.

    Up to `prefetch` files (default 2 * workers) are decoded ahead of the model; segments of
    consecutive files fill encoder batches of `batch_size` clips (default: default_batch_size,
    by device). Every clip is its own padded
    30 s window, so batch_size changes speed, not tokens (bit-identical on CPU, tested; a GPU
    may pick other kernels per batch shape and flip a rare near-tie). `progress(n)` gets the
    number of files just finished (tqdm's update fits). With text=True the tokenizer must
    have its text model (load_tokenizer(..., text=True)).
    """
    if mode not in SEGMENT_MODES:
        raise SegmentationError(f"unknown segment mode {mode!r}: expected one of {SEGMENT_MODES}")
    if batch_size is None:
        batch_size = default_batch_size(tokenizer.device.type)
    if batch_size < 1 or workers < 1 or (prefetch is not None and prefetch < 1):
        raise ValueError(
            f"batch_size, workers and prefetch must be >= 1, got {batch_size}, {workers}, "
            f"{prefetch}"
        )
    if text and not tokenizer.has_text_model:
        raise ValueError("text=True needs a tokenizer loaded with its text model (text=True)")
    if text and text_options is None:
        from .model import TextOptions

        text_options = TextOptions()
    # Checked above, run below: argument errors raise at the call, not at the first next().
    return _tokenize(
        map(os.fspath, paths),
        tokenizer,
        mode,
        vad_options,
        batch_size,
        text_options if text else None,
        progress,
        keep_audio,
        workers,
        2 * workers if prefetch is None else prefetch,
    )


def _tokenize(
    files: Iterator[str],
    tokenizer: IchigoTokenizer,
    mode: SegmentMode,
    vad_options: VadOptions,
    batch_size: int,
    text_options: TextOptions | None,
    progress: Callable[[int], None] | None,
    keep_audio: bool,
    workers: int,
    window: int,
) -> Iterator[FileResult]:
    pool = ThreadPoolExecutor(workers, thread_name_prefix="ichigo-decode")
    decoding: deque[Future[_Decoded]] = deque()
    waiting: deque[_Pending] = deque()  # files in input order, not yet yielded
    queue: deque[tuple[_Pending, int]] = deque()  # (file, segment index) awaiting the encoder

    def refill() -> None:
        while len(decoding) < window:
            file = next(files, None)
            if file is None:
                return
            decoding.append(pool.submit(_decode, file, mode, vad_options))

    def finished() -> Iterator[FileResult]:
        while waiting and waiting[0].remaining == 0:
            result = waiting.popleft().result(keep_audio)
            if progress is not None:
                progress(1)
            yield result

    try:
        refill()
        while decoding or queue:
            # Take decoded files until a batch is full, so one batch can span files.
            while decoding and len(queue) < batch_size:
                pending = _Pending(decoding.popleft().result())
                refill()
                waiting.append(pending)
                queue.extend((pending, i) for i in range(len(pending.decoded.segments)))
                yield from finished()  # errors and silent files need no model work
            if queue:
                batch = [queue.popleft() for _ in range(min(batch_size, len(queue)))]
                _run_batch(tokenizer, batch, text_options)
                yield from finished()
        assert not waiting
    finally:
        # On early exit (consumer stopped, Ctrl-C) drop queued decodes instead of waiting.
        pool.shutdown(wait=False, cancel_futures=True)
