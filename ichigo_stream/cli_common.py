"""Pieces shared by the ichigo-stream subcommands: argument groups, options, output, errors.

Nothing here imports torch at module level, so `--help` and the client-side subcommands
stay fast; the model side is imported when a subcommand that needs it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from .errors import IchigoStreamError, ModelLoadError, SegmentationError
from .model_info import DEFAULT_MODEL, DTYPE_NAMES, LoadOptions
from .pipeline import SEGMENT_MODES, FileResult, SegmentMode, tokenize_files
from .segmentation import VadOptions

if TYPE_CHECKING:
    from .model import IchigoTokenizer, TextOptions
    from .model_info import ModelInfo

PROG = "ichigo-stream"
OUTPUT_FORMATS = ("jsonl", "ichigo", "ichigo-rle")
ENV_MODEL, ENV_WHISPER, ENV_DEVICE, ENV_DTYPE = (
    "ICHIGO_MODEL",
    "ICHIGO_WHISPER",
    "ICHIGO_DEVICE",
    "ICHIGO_DTYPE",
)
EXIT_OK, EXIT_FILES_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
# (flag, VadOptions field, type, metavar, help): each VAD flag sets the field of its name.
VAD_FLAGS: tuple[tuple[str, str, type, str, str], ...] = (
    ("--vad-aggressiveness", "aggressiveness", int, "0-3", "webrtcvad aggressiveness"),
    ("--min-silence-ms", "min_silence_ms", int, "MS", "silence that ends a segment"),
    ("--tail-ms", "tail_ms", int, "MS", "audio kept after the last voiced frame"),
    ("--preroll-ms", "preroll_ms", int, "MS", "audio kept before the first voiced frame"),
    ("--max-segment-s", "max_segment_s", float, "S", "longest VAD segment, at most 30 s"),
)


@dataclass(frozen=True)
class Command:
    """A subcommand: add_arguments fills its parser, run executes it and returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str = ""


@dataclass(frozen=True)
class BatchOptions:
    """How files are cut and batched (see pipeline.tokenize_files)."""

    mode: SegmentMode
    vad: VadOptions
    batch_size: int | None  # None: by device (pipeline.default_batch_size)


# -- shared argument groups and their options dataclasses ------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def device_arg(text: str) -> str:
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (each also read from its environment variable)")
    group.add_argument(
        "--model",
        metavar="REF",
        help=f"quantizer checkpoint: a local .pth/.ckpt/.model file or a Hugging Face REPO:FILE "
        f"(env {ENV_MODEL}; default: the released Ichigo-Whisper medium checkpoint)",
    )
    group.add_argument(
        "--whisper",
        metavar="REF",
        help=f"Whisper model: an openai-whisper name (medium, large-v3, ...) or a local .pt "
        f"(env {ENV_WHISPER}; default: the one the checkpoint was trained on)",
    )
    group.add_argument(
        "--device", type=device_arg, help=f"cpu, cuda or cuda:N (env {ENV_DEVICE}; default cpu)"
    )
    group.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        help=f"encoder precision (env {ENV_DTYPE}; default float32)",
    )


def load_options(args: argparse.Namespace) -> LoadOptions:
    """CLI flags win over environment variables, which win over the defaults."""
    env = os.environ
    device = args.device or env.get(ENV_DEVICE) or "cpu"
    dtype = args.dtype or env.get(ENV_DTYPE) or "float32"
    if not DEVICE_PATTERN.fullmatch(device):
        raise ModelLoadError(f"{ENV_DEVICE}={device!r}: expected cpu, cuda or cuda:N")
    if dtype not in DTYPE_NAMES:
        raise ModelLoadError(f"{ENV_DTYPE}={dtype!r}: expected one of {', '.join(DTYPE_NAMES)}")
    return LoadOptions(
        model=args.model or env.get(ENV_MODEL) or DEFAULT_MODEL,
        whisper=args.whisper or env.get(ENV_WHISPER) or None,
        device=device,
        dtype=dtype,
    )


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    vad = VadOptions()
    group = parser.add_argument_group("segmentation and batching")
    group.add_argument(
        "--segment",
        choices=SEGMENT_MODES,
        default="vad",
        help="vad: speech segments from webrtcvad (default); fixed: back-to-back 30 s windows; "
        "none: the whole file as one window (a file over 30 s is an error, never cut)",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="segments per encoder batch, across files (default 1 on CPU, where batching does "
        "not pay, 32 on CUDA); output does not depend on it",
    )
    for flag, name, kind, metavar, text in VAD_FLAGS:
        default = getattr(vad, name)
        group.add_argument(
            flag,
            dest=f"vad_{name}",
            type=kind,
            default=default,
            metavar=metavar,
            help=f"{text} (default {default:g})",
        )


def batch_options(args: argparse.Namespace) -> BatchOptions:
    try:
        vad = VadOptions(**{name: getattr(args, f"vad_{name}") for _, name, *_ in VAD_FLAGS})
    except SegmentationError as e:
        raise SegmentationError(f"VAD options: {e}") from None
    return BatchOptions(mode=args.segment, vad=vad, batch_size=args.batch_size)


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")


# -- helpers ---------------------------------------------------------------------------------


def error_line(message: str) -> None:
    """One line on stderr, whatever the message holds."""
    line = f"{PROG}: error: {' '.join(message.split())}"
    if "tqdm" in sys.modules and sys.stderr.isatty():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)  # above a live progress bar, not through it
    else:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def open_output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    try:
        f = open(path, "w", encoding="utf-8")  # noqa: SIM115 -- closed below
    except OSError as e:
        raise IchigoStreamError(f"cannot write {path}: {e.strerror or e}") from None
    with f:
        yield f


def load_model(options: LoadOptions, *, text: bool = False) -> tuple[IchigoTokenizer, ModelInfo]:
    from .loading import load_tokenizer

    return load_tokenizer(options, text=text)


def tokenized(
    files: Sequence[str],
    tokenizer: IchigoTokenizer,
    batch: BatchOptions,
    *,
    text_options: TextOptions | None = None,
    keep_audio: bool = False,
) -> Iterator[FileResult]:
    """The pipeline's results, with a progress bar on stderr when it is a terminal."""
    bar = None
    if sys.stderr.isatty():
        with contextlib.suppress(ImportError):
            from tqdm import tqdm

            bar = tqdm(total=len(files), unit="file", file=sys.stderr, leave=False)
    try:
        yield from tokenize_files(
            files,
            tokenizer,
            mode=batch.mode,
            vad_options=batch.vad,
            batch_size=batch.batch_size,
            text=text_options is not None,
            text_options=text_options,
            progress=bar.update if bar is not None else None,
            keep_audio=keep_audio,
        )
    finally:
        if bar is not None:
            bar.close()


def report(result: FileResult) -> bool:
    """Put a failed file's one-line message on stderr; True if it failed."""
    if result.error is not None:
        error_line(result.error)
        return True
    return False
