"""Pieces shared by the ichigo-stream subcommands: argument groups, options, output, errors.

Nothing here imports torch at module level, so `--help` and the client-side subcommands
stay fast; the model side is imported when a subcommand that needs it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from .audio import check_audio_path
from .constants import SAMPLE_RATE
from .errors import AudioError, IchigoStreamError, SegmentationError
from .options import (
    COMPILE_MODES,
    DEFAULT_MODEL,
    DTYPE_NAMES,
    LoadOptions,
    device_problem,
    dtype_problem,
)
from .pipeline import SEGMENT_MODES, FileResult, SegmentMode, tokenize_files
from .segmentation import VadOptions
from .terminal import printable

if TYPE_CHECKING:
    from .model import IchigoTokenizer, TextOptions
    from .model_info import ModelInfo

PROG = "ichigo-stream"
OUTPUT_FORMATS = ("jsonl", "ichigo", "ichigo-rle")
EXIT_OK, EXIT_FILES_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
# (flag, VadOptions field, type, metavar, help): each VAD flag sets the field of its name.
VAD_FLAGS: tuple[tuple[str, str, type, str, str], ...] = (
    ("--vad-aggressiveness", "aggressiveness", int, "N", "webrtcvad aggressiveness, 0-3"),
    ("--min-silence-ms", "min_silence_ms", int, "MS", "silence that ends a segment"),
    ("--tail-ms", "tail_ms", int, "MS", "audio kept after the last voiced frame"),
    ("--preroll-ms", "preroll_ms", int, "MS", "audio kept before the first voiced frame"),
    ("--max-segment-s", "max_segment_s", float, "S", "longest VAD segment, at most 30 s"),
)
# The metavar style of every command: an upper-case noun naming the value (N, MS, S, PATH,
# URL, REF, SECRET, ...), or the set of choices; tests/unit/test_cli_help.py checks it.


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every subcommand's help: descriptions as written, and each option's default shown.

    An option whose help does not already say its default gets "(default: X)" appended;
    flags (no value) and options without a default (None) say what not giving them means in
    their own words (tests/unit/test_cli_help.py holds every option to that).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and action.nargs != 0
            and action.default not in (None, argparse.SUPPRESS)
            and "default" not in text.lower()
        ):
            text += " (default: %(default)s)"
        return text


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


# The argparse types every command shares: one per kind of value, so --device (say) is
# checked the same way by tokenize, transcribe, serve and demo, from a flag or ICHIGO_DEVICE.


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def device_arg(text: str) -> str:
    """--device: cpu, cuda or cuda:N (the rule LoadOptions checks too)."""
    problem = device_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return text


def dtype_arg(text: str) -> str:
    """--dtype: an encoder precision name (the rule LoadOptions checks too)."""
    problem = dtype_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return text


DTYPE_METAVAR = "{" + ",".join(DTYPE_NAMES) + "}"


def add_device_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    device: str | None = "cpu",
    dtype: str | None = "float32",
) -> None:
    """--device and --dtype with the shared types; a None default leaves the choice to serve."""
    parser.add_argument(
        "--device",
        type=device_arg,
        default=device,
        metavar="DEVICE",
        help="torch device for the model: cpu, cuda or cuda:N "
        f"(default: {device or 'as serve: cpu'})",
    )
    parser.add_argument(
        "--dtype",
        type=dtype_arg,
        default=dtype,
        metavar=DTYPE_METAVAR,
        help=f"encoder precision (default: {dtype or 'as serve: float32'})",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        metavar="REF",
        default=DEFAULT_MODEL,
        help="quantizer checkpoint: a local .pth/.ckpt/.model file, a Hugging Face REPO:FILE, "
        "or `random` (built-in random weights in the real formats, Whisper-tiny width, "
        "written once to the cache: runs offline, gibberish output); see `ichigo-stream models` "
        "(default: the released Ichigo-Whisper medium checkpoint)",
    )
    group.add_argument(
        "--whisper",
        metavar="REF",
        help="Whisper model: an openai-whisper name (medium, large-v3, ...) or a local .pt "
        "(default: the one the checkpoint was trained on)",
    )
    add_device_arguments(group)
    group.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="none",
        help="how the encoder runs its batches: none: as they come; buckets: padded to fixed "
        "batch sizes (1, 2, 4, ... 32); graphs: those sizes captured as CUDA graphs at load "
        "(CUDA only); inductor: compiled by torch.compile at load (slow to load). Tokens do not "
        "depend on it (default: none)",
    )


def load_options(args: argparse.Namespace) -> LoadOptions:
    """The model options of a parsed command line (environment already applied by the parser)."""
    return LoadOptions(
        model=args.model,
        whisper=args.whisper or None,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
    )


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("segmentation and batching")
    group.add_argument(
        "--segment",
        choices=SEGMENT_MODES,
        default="vad",
        help="vad: speech segments from webrtcvad; fixed: back-to-back 30 s windows; "
        "none: the whole file as one window (a file over 30 s is an error, never cut) "
        "(default: vad)",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="segments per encoder batch, across files (default: 1 on CPU, where batching does "
        "not pay, 32 on CUDA); output does not depend on it",
    )
    add_vad_arguments(group)


def add_vad_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, title: str | None = None
) -> None:
    """The VAD options (tokenize, transcribe, serve, send, mic): one flag per VadOptions field."""
    if title is not None and isinstance(parser, argparse.ArgumentParser):
        parser = parser.add_argument_group(title)
    vad = VadOptions()
    for flag, name, kind, metavar, text in VAD_FLAGS:
        default = getattr(vad, name)
        parser.add_argument(
            flag,
            dest=f"vad_{name}",
            type=kind,
            default=default,
            metavar=metavar,
            help=f"{text} (default: {default:g})",
        )


def vad_options(args: argparse.Namespace) -> VadOptions:
    """The VadOptions of the VAD flags; a bad combination is a one-line error."""
    try:
        return VadOptions(**{name: getattr(args, f"vad_{name}") for _, name, *_ in VAD_FLAGS})
    except SegmentationError as e:
        raise SegmentationError(f"VAD options: {e}") from None


def batch_options(args: argparse.Namespace) -> BatchOptions:
    return BatchOptions(mode=args.segment, vad=vad_options(args), batch_size=args.batch_size)


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="PATH", help="write here (default: stdout)")


# -- extras ----------------------------------------------------------------------------------

# The optional extras (pyproject.toml) by the top-level modules they bring.
EXTRA_OF_MODULE = {
    "torch": "model",
    "whisper": "model",
    "huggingface_hub": "model",
    "tqdm": "model",
    "sounddevice": "mic",
    "matplotlib": "plot",
}
MODEL_MODULES = ("torch", "whisper", "huggingface_hub")


def install_hint(extra: str) -> str:
    return f"pip install 'ichigo-stream[{extra}]'"


def missing_extra_message(error: ModuleNotFoundError, command: str | None) -> str | None:
    """The one line for an optional extra that is not installed; None for any other module."""
    module = (error.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    who = f"{command} needs" if command else "this needs"
    return f"{who} {module}, which is not installed (the {extra} extra): {install_hint(extra)}"


def missing_model_module() -> str | None:
    """The first module of the model extra that cannot be imported, without importing any."""
    for name in MODEL_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def require_model_extra(command: str) -> None:
    """Fail at once, in one line, where the model extra is missing (before any slow step)."""
    module = missing_model_module()
    if module is not None:
        raise IchigoStreamError(
            f"{command} needs {module}, which is not installed (the model extra): "
            f"{install_hint('model')}"
        )


# -- helpers ---------------------------------------------------------------------------------


def error_line(message: str) -> None:
    """One line on stderr, whatever the message holds (a server's words: made printable)."""
    line = f"{PROG}: error: {' '.join(printable(message).split())}"
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


def input_problems(files: Sequence[str]) -> dict[str, str]:
    """The inputs that cannot be read, with their one-line errors (the pipeline's words)."""
    problems = {}
    for name in files:
        try:
            check_audio_path(name)
        except AudioError as e:
            problems[name] = str(e)
    return problems


def none_readable(files: Sequence[str]) -> list[FileResult] | None:
    """If no input can be read: each file's failed result (to report without loading a
    model, which could take minutes); else None (a bad file among good ones is reported in
    its place in the output, as the pipeline reaches it)."""
    problems = input_problems(files)
    if len(problems) < len(files):
        return None
    return [FileResult(file=f, segments=[], n_samples=0, error=problems[f]) for f in files]


def progress_line(text: str) -> None:
    """A progress step on stderr, only when stderr is a terminal (scripts and logs stay
    clean: their stdout is the output, their stderr the errors)."""
    if sys.stderr.isatty():
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def load_model(options: LoadOptions, *, text: bool = False) -> tuple[IchigoTokenizer, ModelInfo]:
    """The model, with its steps on a terminal's stderr (loading can take minutes)."""
    whisper = options.whisper or "the checkpoint's"
    progress_line(
        f"loading the model: quantizer {options.model}, Whisper {whisper}"
        f"{' with its decoder' if text else ''}, on {options.device} ({options.dtype})..."
    )
    started = time.monotonic()
    from .loading import load_tokenizer

    tokenizer, info = load_tokenizer(options, text=text, progress=progress_line)
    progress_line(
        f"model loaded in {time.monotonic() - started:.1f} s: {info.name} "
        f"({info.codebook_size} codes), Whisper {info.whisper}"
    )
    return tokenizer, info


def audio_seconds(files: Sequence[str]) -> float | None:
    """The inputs' total duration from their headers (fast: no decoding), for the progress
    bar's ETA; a file whose header libsndfile cannot read counts as the known files' mean.
    None when no duration is known."""
    import soundfile as sf

    known: list[float] = []
    unknown = 0
    for name in files:
        try:
            known.append(sf.info(name).duration)
        except Exception:  # any format libsndfile cannot read (MP3 via ffmpeg, ...), or none
            unknown += 1
    if not known:
        return None
    return sum(known) + unknown * sum(known) / len(known)


def tokenized(
    files: Sequence[str],
    tokenizer: IchigoTokenizer,
    batch: BatchOptions,
    *,
    text_options: TextOptions | None = None,
    keep_audio: bool = False,
) -> Iterator[FileResult]:
    """The pipeline's results, with a progress bar on stderr when it is a terminal: audio
    seconds done of the total (so tqdm's rate and ETA are in audio), files done, hours done."""
    bar = None
    if sys.stderr.isatty():
        with contextlib.suppress(ImportError):
            from tqdm import tqdm

            total = audio_seconds(files)
            bar = tqdm(
                total=round(total) if total is not None else None,
                unit="audio-s",
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
    done_files, done_seconds = 0, 0.0
    try:
        for result in tokenize_files(
            files,
            tokenizer,
            mode=batch.mode,
            vad_options=batch.vad,
            batch_size=batch.batch_size,
            text=text_options is not None,
            text_options=text_options,
            keep_audio=keep_audio,
        ):
            if bar is not None:
                done_files += 1
                seconds = result.n_samples / SAMPLE_RATE
                done_seconds += seconds
                bar.update(round(done_seconds) - bar.n)
                bar.set_postfix_str(
                    f"{done_files}/{len(files)} files, {done_seconds / 3600:.2f} h audio",
                    refresh=True,
                )
            yield result
    finally:
        if bar is not None:
            bar.close()


def report(result: FileResult) -> bool:
    """Put a failed file's one-line message on stderr; True if it failed."""
    if result.error is not None:
        error_line(result.error)
        return True
    return False
