"""The ichigo-stream command: one small function pair (arguments, run) per subcommand.

Configuration flows one way: argparse -> frozen options dataclasses -> constructors. Nothing
here imports torch at module level, so `--help` (and future client-side subcommands) stay
fast; the model side is imported when a subcommand that needs it runs.

Exit status: 0 success; 1 some input files failed (the others were still processed);
2 usage, configuration or model-loading errors; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__
from .constants import SAMPLE_RATE
from .errors import IchigoStreamError, ModelLoadError, SegmentationError
from .pipeline import SEGMENT_MODES, FileResult, SegmentMode, tokenize_files
from .segmentation import VadOptions
from .tokens import to_ichigo, to_ichigo_rle

if TYPE_CHECKING:
    from .loading import LoadOptions, ModelInfo
    from .model import IchigoTokenizer, TextOptions

PROG = "ichigo-stream"
# Kept here rather than imported from loading.py, which imports torch; tests pin them equal.
DTYPE_NAMES = ("float32", "float16", "bfloat16")
OUTPUT_FORMATS = ("jsonl", "ichigo", "ichigo-rle")
ENV_MODEL, ENV_WHISPER, ENV_DEVICE, ENV_DTYPE = (
    "ICHIGO_MODEL",
    "ICHIGO_WHISPER",
    "ICHIGO_DEVICE",
    "ICHIGO_DTYPE",
)
EXIT_OK, EXIT_FILES_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
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
    batch_size: int


# -- shared argument groups and their options dataclasses ------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _device(text: str) -> str:
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
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
        "--device", type=_device, help=f"cpu, cuda or cuda:N (env {ENV_DEVICE}; default cpu)"
    )
    group.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        help=f"encoder precision (env {ENV_DTYPE}; default float32)",
    )


def _load_options(args: argparse.Namespace) -> LoadOptions:
    """CLI flags win over environment variables, which win over the defaults."""
    from .loading import DEFAULT_MODEL, LoadOptions

    env = os.environ
    device = args.device or env.get(ENV_DEVICE) or "cpu"
    dtype = args.dtype or env.get(ENV_DTYPE) or "float32"
    if not _DEVICE.fullmatch(device):
        raise ModelLoadError(f"{ENV_DEVICE}={device!r}: expected cpu, cuda or cuda:N")
    if dtype not in DTYPE_NAMES:
        raise ModelLoadError(f"{ENV_DTYPE}={dtype!r}: expected one of {', '.join(DTYPE_NAMES)}")
    return LoadOptions(
        model=args.model or env.get(ENV_MODEL) or DEFAULT_MODEL,
        whisper=args.whisper or env.get(ENV_WHISPER) or None,
        device=device,
        dtype=dtype,
    )


def _add_segment_arguments(parser: argparse.ArgumentParser) -> None:
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
        type=_positive_int,
        default=8,
        metavar="N",
        help="segments per encoder batch, across files (default 8); output does not depend on it",
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


def _batch_options(args: argparse.Namespace) -> BatchOptions:
    try:
        vad = VadOptions(**{name: getattr(args, f"vad_{name}") for _, name, *_ in VAD_FLAGS})
    except SegmentationError as e:
        raise SegmentationError(f"VAD options: {e}") from None
    return BatchOptions(mode=args.segment, vad=vad, batch_size=args.batch_size)


def _add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")


# -- helpers ---------------------------------------------------------------------------------


def _error_line(message: str) -> None:
    """One line on stderr, whatever the message holds."""
    line = f"{PROG}: error: {' '.join(message.split())}"
    if "tqdm" in sys.modules and sys.stderr.isatty():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)  # above a live progress bar, not through it
    else:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    try:
        f = open(path, "w", encoding="utf-8")  # noqa: SIM115 -- closed below
    except OSError as e:
        raise IchigoStreamError(f"cannot write {path}: {e.strerror or e}") from None
    with f:
        yield f


def _load(options: LoadOptions, *, text: bool = False) -> tuple[IchigoTokenizer, ModelInfo]:
    from .loading import load_tokenizer

    return load_tokenizer(options, text=text)


def _tokenized(
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


def _report(result: FileResult) -> bool:
    """Put a failed file's one-line message on stderr; True if it failed."""
    if result.error is not None:
        _error_line(result.error)
        return True
    return False


# -- tokenize ----------------------------------------------------------------------------------

TOKENIZE_EPILOG = f"""\
output formats (--format), one line per FILE in the order given:
  jsonl       {{"file", "sample_rate": 16000, "segments": [{{"start", "end", "tokens"}}],
              "model": {{"name", "sha256", "codebook_size", "mask_token", "token_rate",
              "whisper"}}}}; start/end in seconds (whole 16 kHz samples / 16000).
              A file that fails gives {{"file", "error"}}.
  ichigo      the text Ichigo LLMs read: per segment <|sound_start|><|sound_NNNN|>...
              <|sound_end|>, segments separated by one space; a file that failed or holds
              no speech gives an empty line.
  ichigo-rle  as ichigo, runs of k > 1 equal tokens as <|duration_KK|><|sound_NNNN|>.

--plot PNG draws each file's waveform (segments shaded) and token ids over time. With
several FILEs it writes STEM-0.png, STEM-1.png, ... next to PNG (the index is the file's
position among the FILEs; failed files get no plot).

Failed files (unreadable, empty, over 30 s with --segment none, ...) are reported on stderr
and skipped; the exit status is then 1. Model errors exit with 2.
environment: {ENV_MODEL}, {ENV_WHISPER}, {ENV_DEVICE}, {ENV_DTYPE} (flags win).
"""


def _tokenize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format)")
    _add_model_arguments(parser)
    _add_segment_arguments(parser)
    parser.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default="jsonl",
        help="jsonl (default): one JSON object per file; ichigo / ichigo-rle: one line of LLM "
        "sound-token text per file (see below)",
    )
    _add_output_argument(parser)
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="also draw waveform, segments and tokens to PNG (STEM-<index>.png per file when "
        "several)",
    )


def _jsonl_line(result: FileResult, model: dict[str, Any]) -> str:
    if result.error is not None:
        return json.dumps({"file": result.file, "error": result.error})
    segments = [
        {"start": s.start / SAMPLE_RATE, "end": s.end / SAMPLE_RATE, "tokens": s.tokens}
        for s in result.segments
    ]
    record = {"file": result.file, "sample_rate": SAMPLE_RATE, "segments": segments}
    return json.dumps({**record, "model": model})


def _ichigo_line(result: FileResult, fmt: str) -> str:
    encode = to_ichigo_rle if fmt == "ichigo-rle" else to_ichigo
    return " ".join(encode(s.tokens) for s in result.segments)


def plot_paths(png: str, n_files: int) -> list[Path]:
    """Where --plot PNG writes each file's plot: PNG itself, or STEM-<index>.png when several."""
    path = Path(png)
    if n_files == 1:
        return [path]
    suffix = path.suffix or ".png"
    return [path.with_name(f"{path.stem}-{i}{suffix}") for i in range(n_files)]


def _run_tokenize(args: argparse.Namespace) -> int:
    load, batch = _load_options(args), _batch_options(args)
    plots = plot_paths(args.plot, len(args.files)) if args.plot else None
    if plots is not None:
        if not plots[0].parent.is_dir():
            raise IchigoStreamError(f"--plot {args.plot}: no directory {plots[0].parent}")
        try:
            from .plot import plot_tokens
        except ImportError:
            raise IchigoStreamError("--plot needs matplotlib: pip install matplotlib") from None
    with _output(args.output) as out:
        tokenizer, info = _load(load)
        model = info.to_dict()
        failed = False
        results = _tokenized(args.files, tokenizer, batch, keep_audio=plots is not None)
        for index, result in enumerate(results):
            failed |= _report(result)
            if args.format == "jsonl":
                line = _jsonl_line(result, model)
            else:
                line = _ichigo_line(result, args.format)
            out.write(line + "\n")
            out.flush()  # consumers see each file as soon as it is done
            if plots is not None and result.audio is not None:
                plot_tokens(
                    plots[index],
                    result.audio,
                    result.segments,
                    title=Path(result.file).name,
                    codebook_size=info.codebook_size,
                )
    return EXIT_FILES_FAILED if failed else EXIT_OK


# -- transcribe --------------------------------------------------------------------------------

TRANSCRIBE_EPILOG = """\
output: for each FILE a line "# FILE", then one line per segment:
  [MM:SS.mmm --> MM:SS.mmm] text
The text is Whisper's decoder reading the tokens, i.e. what the tokens still carry.
"""


def _transcribe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format)")
    _add_model_arguments(parser)
    _add_segment_arguments(parser)
    parser.add_argument("--language", help="language code (default: Whisper detects it)")
    parser.add_argument("--prompt", help="text prompt for Whisper's decoder")
    _add_output_argument(parser)


def timestamp(samples: int) -> str:
    """[HH:]MM:SS.mmm of a sample position, to the millisecond."""
    ms = samples * 1000 // SAMPLE_RATE
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if hours else ""
    return f"{head}{minutes:02d}:{seconds:02d}.{ms:03d}"


def _run_transcribe(args: argparse.Namespace) -> int:
    from .model import TextOptions

    load, batch = _load_options(args), _batch_options(args)
    text_options = TextOptions(language=args.language, prompt=args.prompt)
    with _output(args.output) as out:
        tokenizer, _ = _load(load, text=True)
        failed = False
        for result in _tokenized(args.files, tokenizer, batch, text_options=text_options):
            if _report(result):
                failed = True
                continue
            lines = [f"# {result.file}"] + [
                f"[{timestamp(s.start)} --> {timestamp(s.end)}] {s.text or ''}"
                for s in result.segments
            ]
            out.write("\n".join(lines) + "\n")
            out.flush()
    return EXIT_FILES_FAILED if failed else EXIT_OK


# -- make-random-model -------------------------------------------------------------------------

RANDOM_MODEL_EPILOG = """\
Writes random weights in the real file formats: the quantizer as an Ichigo .pth (or a
WhisperSpeech .model) and Whisper as an openai-whisper .pt. They run exactly as fast as real
weights, so they serve offline smoke runs, benchmarks and tests; their tokens and text are
meaningless. --full NAME gives a Whisper of that released model's full size.
"""


def _random_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT.pth", help="quantizer checkpoint to write")
    parser.add_argument(
        "--whisper-out", required=True, metavar="OUT.pt", help="Whisper checkpoint to write"
    )
    parser.add_argument(
        "--width", type=_positive_int, help="encoder width, a multiple of 64 (default 1024)"
    )
    parser.add_argument(
        "--codes", type=_positive_int, default=2561, help="codebook size incl. mask (default 2561)"
    )
    parser.add_argument(
        "--layers", type=_positive_int, help="Whisper encoder layers (default 2; fewer is faster)"
    )
    parser.add_argument(
        "--format",
        choices=("ichigo", "whisperspeech"),
        default="ichigo",
        help="quantizer file format (default ichigo)",
    )
    parser.add_argument(
        "--full",
        metavar="NAME",
        help="full-size Whisper with the dims of a released model: tiny, base, small, medium, "
        "large-v3",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _run_make_random_model(args: argparse.Namespace) -> int:
    from .checkpoint import dims_for, write_random_checkpoint
    from .whisper_weights import RELEASED_WHISPER_DIMS, random_whisper_dims, write_random_whisper

    if args.full is not None:
        if args.full not in RELEASED_WHISPER_DIMS:
            names = ", ".join(RELEASED_WHISPER_DIMS)
            raise IchigoStreamError(f"--full {args.full!r}: expected one of {names}")
        released = RELEASED_WHISPER_DIMS[args.full]
        if args.width not in (None, released["width"]) or args.layers is not None:
            raise IchigoStreamError(
                f"--full {args.full} fixes width {released['width']} and the layer counts; "
                "drop --width/--layers"
            )
        whisper_dims = random_whisper_dims(**released)
    else:
        width = args.width or 1024
        if width % 64:
            raise IchigoStreamError(f"--width {width}: must be a multiple of 64")
        whisper_dims = random_whisper_dims(width, n_layer=args.layers or 2)
    if not 2 <= args.codes <= 10_000:
        raise IchigoStreamError(f"--codes {args.codes}: must be in 2..10000 (4-digit token ids)")
    quantizer_dims = dims_for(whisper_dims.n_audio_state, args.codes)
    whisper_out, out = Path(args.whisper_out), Path(args.out)
    try:
        write_random_whisper(whisper_out, whisper_dims, seed=args.seed)
        # A WhisperSpeech file names its Whisper: point it at the one written here.
        write_random_checkpoint(
            out,
            quantizer_dims,
            format=args.format,
            whisper_name=str(whisper_out.resolve()),
            seed=args.seed + 1,
        )
    except OSError as e:
        raise IchigoStreamError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    print(
        f"wrote {out} ({args.format} quantizer: width {quantizer_dims.width}, "
        f"{quantizer_dims.codebook_size} codes, mask {quantizer_dims.mask_token}) and "
        f"{whisper_out} (Whisper: {whisper_dims.n_audio_layer} encoder / "
        f"{whisper_dims.n_text_layer} decoder layers, {whisper_dims.n_mels} mels)\n"
        f"try: {PROG} tokenize --model {out} --whisper {whisper_out} FILE"
    )
    return EXIT_OK


# -- registration and entry point --------------------------------------------------------------

COMMANDS: tuple[Command, ...] = (
    Command(
        "tokenize",
        "audio files -> Ichigo sound tokens (jsonl or LLM text)",
        _tokenize_arguments,
        _run_tokenize,
        TOKENIZE_EPILOG,
    ),
    Command(
        "transcribe",
        "audio files -> tokens -> text through Whisper's decoder",
        _transcribe_arguments,
        _run_transcribe,
        TRANSCRIBE_EPILOG,
    ),
    Command(
        "make-random-model",
        "write random-weight checkpoints in the real formats (offline smoke runs, tests)",
        _random_model_arguments,
        _run_make_random_model,
        RANDOM_MODEL_EPILOG,
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Real-time streaming speech tokenizer (Ichigo-Whisper)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=command.epilog or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ichigo-stream console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except IchigoStreamError as e:
        _error_line(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, and keep Python's final flush
        # of stdout from raising again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FILES_FAILED


if __name__ == "__main__":
    sys.exit(main())
