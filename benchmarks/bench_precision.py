"""Token agreement of float16 / bfloat16 encoders (and --compile modes) with float32.

The same speech (the benchmark sentences spoken by espeak-ng in several voices, each clip its
own window) is tokenized once per precision on one device; a token agrees when it equals the
float32 token at the same position (clip lengths, so token counts, do not depend on the
precision). Reported as a percentage of all tokens, with the worst clip and the clips that
are identical, per precision and per voice.

    python benchmarks/bench_precision.py                          # CPU, built-in random model
    python benchmarks/bench_precision.py --random medium --device cuda --compile graphs
    python benchmarks/bench_precision.py --model merge-medium-vi-2d-2560c-dim64.pth \\
        --whisper medium --device cuda                            # the real weights

Random weights measure the plumbing, not the number that matters: how often reduced precision
flips an argmax depends on how close the codebook's cosine similarities are, which random
codebooks do not share with the trained one. The figure for real weights needs --model and
--whisper pointing at them. --speech-cache keeps the spoken clips: a machine without
espeak-ng (the GPU machines) reads them from a folder made elsewhere.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import speech
import torch

from ichigo_stream.audio import load_audio
from ichigo_stream.loading import LoadOptions, load_tokenizer
from ichigo_stream.options import COMPILE_MODES, DTYPE_NAMES, RANDOM_MODEL
from ichigo_stream.pipeline import clip_tokens

VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us+f3")


@dataclass(frozen=True)
class Clip:
    voice: str
    audio: np.ndarray


@dataclass(frozen=True)
class Agreement:
    """Tokens of one configuration against float32's."""

    name: str
    matched: int
    total: int
    identical_clips: int
    clips: int
    worst_clip: float  # the lowest per-clip agreement, percent
    by_voice: dict[str, float]
    seconds: float  # wall time to tokenize all clips (load and warm-up excluded)

    @property
    def percent(self) -> float:
        return 100.0 * self.matched / self.total if self.total else 100.0


def spoken_clips(voices: tuple[str, ...], cache: Path) -> list[Clip]:
    """Every benchmark sentence in every voice; from the cache where already spoken."""
    clips = []
    for voice in voices:
        folder = cache / voice.replace("+", "_")
        for wav in speech.spoken("tokenize", folder, voice):
            clips.append(Clip(voice, load_audio(wav)))
    return clips


def tokens_of(options: LoadOptions, clips: list[Clip], batch: int) -> tuple[list, float]:
    """Each clip's tokens under `options` (batches of `batch` clips), and the wall time."""
    tokenizer, _ = load_tokenizer(options)
    audio = [c.audio for c in clips]
    clip_tokens(tokenizer, audio[:batch])  # warm-up: kernel choice, allocator growth
    sync(options.device)
    start = time.perf_counter()
    tokens = []
    for i in range(0, len(audio), batch):
        tokens += clip_tokens(tokenizer, audio[i : i + batch])
    sync(options.device)
    elapsed = time.perf_counter() - start
    del tokenizer
    gc.collect()
    if options.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return tokens, elapsed


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compare(name: str, want: list, got: list, clips: list[Clip], seconds: float) -> Agreement:
    matched = total = identical = 0
    worst = 100.0
    voice_counts: dict[str, list[int]] = {}
    for clip, a, b in zip(clips, want, got, strict=True):
        assert len(a) == len(b), "token counts depend on clip length only"
        same = sum(x == y for x, y in zip(a, b, strict=True))
        matched, total = matched + same, total + len(a)
        identical += same == len(a)
        if a:
            worst = min(worst, 100.0 * same / len(a))
        counts = voice_counts.setdefault(clip.voice, [0, 0])
        counts[0] += same
        counts[1] += len(a)
    by_voice = {v: 100.0 * m / t if t else 100.0 for v, (m, t) in voice_counts.items()}
    return Agreement(name, matched, total, identical, len(clips), worst, by_voice, seconds)


def print_table(rows: list[Agreement], device: str, model: str) -> None:
    print(f"device {device}, model {model}")
    voices = list(rows[0].by_voice) if rows else []
    head = (
        f"{'configuration':28} {'agree %':>8} {'worst clip %':>12} {'identical':>10} {'wall s':>7}"
    )
    print(head + "".join(f" {v[:12]:>12}" for v in voices))
    for r in rows:
        line = (
            f"{r.name:28} {r.percent:8.2f} {r.worst_clip:12.1f} "
            f"{r.identical_clips:>4}/{r.clips:<5} {r.seconds:7.2f}"
        )
        print(line + "".join(f" {r.by_voice[v]:12.2f}" for v in voices))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help=f"quantizer checkpoint (default: {RANDOM_MODEL!r})")
    p.add_argument("--whisper", help="Whisper .pt or name, with --model")
    p.add_argument(
        "--random",
        choices=("builtin", "shallow", "medium"),
        default="builtin",
        help="without --model: builtin: `--model random` (tiny); shallow: medium width, 2 "
        "layers; medium: full-size medium (default: builtin)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtypes",
        default="float16,bfloat16",
        help="precisions compared with float32, comma-separated (default: float16,bfloat16)",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="none",
        help="also run float32 with this --compile mode, and the precisions with it",
    )
    p.add_argument("--voices", default=",".join(VOICES), help="espeak-ng voices")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--clips", type=int, help="use only the first N clips (smoke runs)")
    p.add_argument(
        "--speech-cache",
        type=Path,
        default=Path.home() / ".cache" / "ichigo-stream" / "bench-precision",
        help="folder of the spoken clips (made with espeak-ng where missing)",
    )
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ichigo-stream" / "bench")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    if bad := [d for d in dtypes if d not in DTYPE_NAMES or d == "float32"]:
        p.error(f"--dtypes {bad}: expected float16 and/or bfloat16")

    if args.model:
        model, whisper = args.model, args.whisper
    elif args.random == "builtin":
        model, whisper = RANDOM_MODEL, None
    else:
        from bench_tokenize import random_model

        quantizer, whisper_path = random_model(args.random, args.cache)
        model, whisper = str(quantizer), str(whisper_path)
    clips = spoken_clips(tuple(v for v in args.voices.split(",") if v), args.speech_cache)
    clips = clips[: args.clips] if args.clips else clips

    def options(dtype: str, compile: str = "none") -> LoadOptions:
        return LoadOptions(
            model=model, whisper=whisper, device=args.device, dtype=dtype, compile=compile
        )

    want, seconds = tokens_of(options("float32"), clips, args.batch_size)
    rows = [compare("float32", want, want, clips, seconds)]
    configs = [(d, "none") for d in dtypes]
    if args.compile != "none":
        configs = [("float32", args.compile)] + [(d, args.compile) for d in dtypes]
    for dtype, mode in configs:
        got, seconds = tokens_of(options(dtype, mode), clips, args.batch_size)
        name = dtype if mode == "none" else f"{dtype} --compile {mode}"
        rows.append(compare(name, want, got, clips, seconds))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    label = Path(model).name if args.model else f"random ({args.random})"
    print_table(rows, device, label)
    if args.json:
        data = dict(
            device=device,
            model=label,
            date=time.strftime("%Y-%m-%d %H:%M:%S"),
            clips=len(clips),
            tokens=rows[0].total,
            rows=[dict(vars(r), percent=r.percent) for r in rows],
        )
        args.json.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
