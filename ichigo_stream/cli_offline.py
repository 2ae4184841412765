"""The offline subcommands: tokenize, transcribe, make-random-model and models."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli_common import (
    EXIT_FILES_FAILED,
    EXIT_OK,
    OUTPUT_FORMATS,
    PROG,
    BatchOptions,
    Command,
    add_model_arguments,
    add_output_argument,
    add_segment_arguments,
    batch_options,
    install_hint,
    load_model,
    load_options,
    none_readable,
    open_output,
    positive_int,
    report,
    require_model_extra,
    tokenized,
)
from .constants import SAMPLE_RATE
from .errors import IchigoStreamError
from .options import LoadOptions
from .pipeline import FileResult
from .tokens import to_ichigo, to_ichigo_rle

# -- tokenize ----------------------------------------------------------------------------------

TOKENIZE_EPILOG = """\
output formats (--format), one line per FILE in the order given:
  jsonl       {"file", "sample_rate": 16000, "segments": [{"start", "end", "tokens"}],
              "model": {"name", "sha256", "codebook_size", "mask_token", "token_rate",
              "whisper"}}; start/end in seconds (whole 16 kHz samples / 16000).
              A file that fails gives {"file", "error"}.
  ichigo      the text Ichigo LLMs read: per segment <|sound_start|><|sound_NNNN|>...
              <|sound_end|>, segments separated by one space; a file that failed or holds
              no speech gives an empty line.
  ichigo-rle  as ichigo, runs of k > 1 equal tokens as <|duration_KK|><|sound_NNNN|>.

--plot PNG draws each file's waveform (segments shaded) and token ids over time. With
several FILEs it writes STEM-0.png, STEM-1.png, ... next to PNG (the index is the file's
position among the FILEs; failed files get no plot).

Failed files (unreadable, empty, over 30 s with --segment none, ...) are reported on stderr
and skipped; the exit status is then 1. Model errors exit with 2.
"""


@dataclass(frozen=True)
class TokenizeOptions:
    files: tuple[str, ...]
    load: LoadOptions
    batch: BatchOptions
    format: str  # one of OUTPUT_FORMATS
    output: str | None  # None: stdout
    plot: str | None  # PNG path (STEM-<index>.png when several files)


def tokenize_options(args: argparse.Namespace) -> TokenizeOptions:
    return TokenizeOptions(
        files=tuple(args.files),
        load=load_options(args),
        batch=batch_options(args),
        format=args.format,
        output=args.output,
        plot=args.plot,
    )


def _tokenize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format)")
    add_model_arguments(parser)
    add_segment_arguments(parser)
    parser.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default="jsonl",
        help="jsonl: one JSON object per file; ichigo / ichigo-rle: one line of LLM "
        "sound-token text per file (see below) (default: jsonl)",
    )
    add_output_argument(parser)
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="also draw waveform, segments and tokens to PNG (STEM-<index>.png per file when "
        "several; default: no plot)",
    )


def _jsonl_line(result: FileResult, model: dict[str, Any], *, text: bool = False) -> str:
    if result.error is not None:
        return json.dumps({"file": result.file, "error": result.error})
    segments: list[dict[str, Any]] = [
        {"start": s.start / SAMPLE_RATE, "end": s.end / SAMPLE_RATE, "tokens": s.tokens}
        for s in result.segments
    ]
    if text:
        for record, segment in zip(segments, result.segments, strict=True):
            record["text"] = segment.text or ""
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
    return run_tokenize(tokenize_options(args))


def run_tokenize(options: TokenizeOptions) -> int:
    require_model_extra("tokenize")
    plots = plot_paths(options.plot, len(options.files)) if options.plot else None
    if plots is not None:
        if not plots[0].parent.is_dir():
            raise IchigoStreamError(f"--plot {options.plot}: no directory {plots[0].parent}")
        try:
            from .plot import plot_tokens
        except ImportError:
            raise IchigoStreamError(
                f"--plot needs matplotlib, which is not installed: {install_hint('plot')}"
            ) from None
    with open_output(options.output) as out:
        unreadable = none_readable(options.files)
        if unreadable is not None:  # nothing to tokenize: no model loaded
            model: dict[str, Any] = {}
            results: Iterable[FileResult] = unreadable
        else:
            tokenizer, info = load_model(options.load)
            model = info.to_dict()
            results = tokenized(
                options.files, tokenizer, options.batch, keep_audio=plots is not None
            )
        failed = False
        for index, result in enumerate(results):
            failed |= report(result)
            if options.format == "jsonl":
                line = _jsonl_line(result, model)
            else:
                line = _ichigo_line(result, options.format)
            out.write(line + "\n")
            out.flush()  # consumers see each file as soon as it is done
            if plots is not None and result.audio is not None:
                plot_tokens(
                    plots[index],
                    result.audio,
                    result.segments,
                    title=Path(result.file).name,
                    codebook_size=info.codebook_size,  # only with a model loaded
                    token_rate=info.token_rate,
                )
    return EXIT_FILES_FAILED if failed else EXIT_OK


# -- transcribe --------------------------------------------------------------------------------

TRANSCRIBE_EPILOG = """\
output formats (--transcript-format, or --format), in the order of the FILEs:
  text   for each FILE a line "# FILE", then one line per segment:
           [MM:SS.mmm --> MM:SS.mmm] text
  jsonl  one JSON object per FILE: {"file", "sample_rate": 16000, "segments": [{"start",
         "end", "tokens", "text"}], "model": {...}} (as tokenize's jsonl, with each
         segment's text); a file that fails gives {"file", "error"}.
The text is Whisper's decoder reading the tokens, i.e. what the tokens still carry.
Failed files are reported on stderr and skipped (text) or given as an error object (jsonl);
the exit status is then 1.
"""
TRANSCRIBE_FORMATS = ("text", "jsonl")


@dataclass(frozen=True)
class TranscribeOptions:
    files: tuple[str, ...]
    load: LoadOptions
    batch: BatchOptions
    language: str | None  # None: Whisper detects it
    prompt: str | None
    output: str | None  # None: stdout
    format: str = "text"  # one of TRANSCRIBE_FORMATS


def transcribe_options(args: argparse.Namespace) -> TranscribeOptions:
    return TranscribeOptions(
        files=tuple(args.files),
        load=load_options(args),
        batch=batch_options(args),
        language=args.language,
        prompt=args.prompt,
        output=args.output,
        format=args.format,
    )


def _transcribe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format)")
    add_model_arguments(parser)
    add_segment_arguments(parser)
    parser.add_argument(
        "--language", metavar="LANG", help="language code (default: Whisper detects it)"
    )
    parser.add_argument(
        "--prompt", metavar="TEXT", help="text prompt for Whisper's decoder (default: none)"
    )
    # Not only --format: that is tokenize's output format (other choices), and one option
    # name (so one ICHIGO_* variable) means one thing across commands; --format is the alias.
    parser.add_argument(
        "--transcript-format",
        "--format",
        dest="format",
        choices=TRANSCRIBE_FORMATS,
        default="text",
        help="text: timestamped lines per file; jsonl: one JSON object per file (see below) "
        "(default: text)",
    )
    add_output_argument(parser)


def timestamp(samples: int) -> str:
    """[HH:]MM:SS.mmm of a sample position, to the millisecond."""
    ms = samples * 1000 // SAMPLE_RATE
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if hours else ""
    return f"{head}{minutes:02d}:{seconds:02d}.{ms:03d}"


def _run_transcribe(args: argparse.Namespace) -> int:
    return run_transcribe(transcribe_options(args))


def run_transcribe(options: TranscribeOptions) -> int:
    require_model_extra("transcribe")
    with open_output(options.output) as out:
        unreadable = none_readable(options.files)
        if unreadable is not None:  # nothing to transcribe: no model loaded
            model: dict[str, Any] = {}
            results: Iterable[FileResult] = unreadable
        else:
            from .model import TextOptions  # imports torch: only when transcribing

            text_options = TextOptions(language=options.language, prompt=options.prompt)
            tokenizer, info = load_model(options.load, text=True)
            model = info.to_dict()
            results = tokenized(options.files, tokenizer, options.batch, text_options=text_options)
        failed = False
        for result in results:
            if options.format == "jsonl":
                failed |= report(result)
                out.write(_jsonl_line(result, model, text=True) + "\n")
                out.flush()
                continue
            if report(result):
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
CHECKPOINT_FORMATS = ("ichigo", "whisperspeech")


@dataclass(frozen=True)
class RandomModelOptions:
    out: Path
    whisper_out: Path
    width: int | None  # None: 1024, or the --full model's
    codes: int
    layers: int | None  # None: 2, or the --full model's
    checkpoint_format: str  # one of CHECKPOINT_FORMATS
    full: str | None  # a released Whisper's name
    seed: int


def default_whisper_out(out: str) -> Path:
    """Where make-random-model writes Whisper without --whisper-out: OUT-whisper.pt beside OUT."""
    path = Path(out)
    return path.with_name(f"{path.stem}-whisper.pt")


def random_model_options(args: argparse.Namespace) -> RandomModelOptions:
    return RandomModelOptions(
        out=Path(args.out),
        whisper_out=Path(args.whisper_out) if args.whisper_out else default_whisper_out(args.out),
        width=args.width,
        codes=args.codes,
        layers=args.layers,
        checkpoint_format=args.checkpoint_format,
        full=args.full,
        seed=args.seed,
    )


def _random_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="quantizer checkpoint to write (.pth)")
    parser.add_argument(
        "--whisper-out",
        metavar="PATH",
        help="Whisper checkpoint to write (default: OUT's name with -whisper.pt, next to it)",
    )
    parser.add_argument(
        "--width",
        type=positive_int,
        metavar="N",
        help="encoder width, a multiple of 64 (default: 1024, or the --full model's)",
    )
    parser.add_argument(
        "--codes",
        type=positive_int,
        default=2561,
        metavar="N",
        help="codebook size incl. mask (default: 2561)",
    )
    parser.add_argument(
        "--layers",
        type=positive_int,
        metavar="N",
        help="Whisper encoder layers (default: 2, or the --full model's; fewer is faster)",
    )
    # Not --format: that is tokenize's output format, and one option name (so one
    # ICHIGO_* variable) means one thing across commands; --format stays as an alias.
    parser.add_argument(
        "--checkpoint-format",
        "--format",
        choices=CHECKPOINT_FORMATS,
        default="ichigo",
        help="quantizer file format (default: ichigo)",
    )
    parser.add_argument(
        "--full",
        metavar="NAME",
        help="full-size Whisper with the dims of a released model: tiny, base, small, medium, "
        "large-v3 (default: none, a small Whisper of --width and --layers)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: 0)")


def _run_make_random_model(args: argparse.Namespace) -> int:
    return run_make_random_model(random_model_options(args))


def run_make_random_model(options: RandomModelOptions) -> int:
    require_model_extra("make-random-model")
    from .checkpoint import dims_for, write_random_checkpoint
    from .whisper_weights import RELEASED_WHISPER_DIMS, random_whisper_dims, write_random_whisper

    if options.full is not None:
        if options.full not in RELEASED_WHISPER_DIMS:
            names = ", ".join(RELEASED_WHISPER_DIMS)
            raise IchigoStreamError(f"--full {options.full!r}: expected one of {names}")
        released = RELEASED_WHISPER_DIMS[options.full]
        if options.width not in (None, released["width"]) or options.layers is not None:
            raise IchigoStreamError(
                f"--full {options.full} fixes width {released['width']} and the layer counts; "
                "drop --width/--layers"
            )
        whisper_dims = random_whisper_dims(**released)
    else:
        width = options.width or 1024
        if width % 64:
            raise IchigoStreamError(f"--width {width}: must be a multiple of 64")
        whisper_dims = random_whisper_dims(width, n_layer=options.layers or 2)
    if not 2 <= options.codes <= 10_000:
        raise IchigoStreamError(f"--codes {options.codes}: must be in 2..10000 (4-digit token ids)")
    quantizer_dims = dims_for(whisper_dims.n_audio_state, options.codes)
    whisper_out, out = options.whisper_out, options.out
    try:
        write_random_whisper(whisper_out, whisper_dims, seed=options.seed)
        # A WhisperSpeech file names its Whisper: point it at the one written here.
        write_random_checkpoint(
            out,
            quantizer_dims,
            format=options.checkpoint_format,
            whisper_name=str(whisper_out.resolve()),
            seed=options.seed + 1,
        )
    except OSError as e:
        raise IchigoStreamError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    print(
        f"wrote {out} ({options.checkpoint_format} quantizer: width {quantizer_dims.width}, "
        f"{quantizer_dims.codebook_size} codes, mask {quantizer_dims.mask_token}) and "
        f"{whisper_out} (Whisper: {whisper_dims.n_audio_layer} encoder / "
        f"{whisper_dims.n_text_layer} decoder layers, {whisper_dims.n_mels} mels)\n"
        f"try: {PROG} tokenize --model {out} --whisper {whisper_out} FILE"
    )
    return EXIT_OK


# -- models ------------------------------------------------------------------------------------

MODELS_EPILOG = """\
Lists the released quantizer checkpoints (the REF to pass as --model, file size, the Whisper
each needs, codebook size, the LLM that reads its tokens) and the built-in `random`, and
whether each part is cached here: the quantizer in the Hugging Face cache (HF_HUB_CACHE,
HF_HOME/hub or ~/.cache/huggingface/hub), Whisper in openai-whisper's cache
($XDG_CACHE_HOME/whisper or ~/.cache/whisper), random in $XDG_CACHE_HOME/ichigo-stream/random.
Nothing is downloaded. --json prints one JSON array (keys: name, ref, size,
size_source, width, codebook_size, mask_token, llm, cached, path, whisper {name, file, size,
cached, path}).
"""


def _models_arguments(parser: argparse.ArgumentParser) -> None:
    # Not --format: one option name (so one ICHIGO_* variable) means one thing across
    # commands, and tokenize's --format takes other values.
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON array instead of the table (default: the table)",
    )


def _run_models(args: argparse.Namespace) -> int:
    from .catalogue import format_table, listing

    rows = listing()
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return EXIT_OK


# -- registration --------------------------------------------------------------

OFFLINE_COMMANDS: tuple[Command, ...] = (
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
    Command(
        "models",
        "list the released checkpoints and `random`, and which are cached here",
        _models_arguments,
        _run_models,
        MODELS_EPILOG,
    ),
)
