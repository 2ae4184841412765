"""Offline tokenization throughput: ichigo_stream's batched pipeline vs the reference's loop.

Both run in one process on the same checkpoint, device and speech files (real espeak-ng
speech, each under 30 s so the reference, which silently keeps only the first 30 s, sees
all of it). The reference runs its per-file `quantize` loop in float32, as its demo does;
ichigo_stream runs its pipeline (decoding overlapped with model work, segments of many files
sharing encoder batches). Audio is decoded the same way for both (soundfile + soxr): the
reference's own torchaudio reader cannot import next to a CPU torch.

    python benchmarks/bench_tokenize.py --random shallow              # CPU smoke run
    python benchmarks/bench_tokenize.py --random medium --device cuda --dtype float16 \
        --batch-size 32

Prints a table of audio seconds per wall second and the ratio, and whether the tokens of
the two are identical (they must be when both run float32 with --segment none).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import speech
import torch

from ichigo_stream.audio import load_audio
from ichigo_stream.checkpoint import dims_for, write_random_checkpoint
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.loading import LoadOptions, load_tokenizer
from ichigo_stream.pipeline import default_batch_size, tokenize_files
from ichigo_stream.reference import reference_model
from ichigo_stream.whisper_weights import (
    RELEASED_WHISPER_DIMS,
    random_whisper_dims,
    write_random_whisper,
)

RANDOM_MODELS = {
    "shallow": dict(width=1024, n_layer=2, n_head=16, text_layers=1),  # medium's width, 2 layers
    "medium": RELEASED_WHISPER_DIMS["medium"],  # full size: costs exactly what real weights cost
}


def make_speech(folder: Path, n_files: int, seed: int, sentences: Path | None = None) -> list[Path]:
    """n_files WAVs of 3..28 s of espeak-ng speech at 16 kHz (the spoken sentences cached in
    `sentences`, else made in `folder`)."""
    rng = np.random.default_rng(seed)
    clips = [
        load_audio(wav) for wav in speech.spoken("tokenize", sentences or folder / "sentences")
    ]
    files = []
    for i in range(n_files):
        target = rng.uniform(3.0, 28.0) * SAMPLE_RATE
        parts: list[np.ndarray] = []
        while sum(len(p) for p in parts) < target:
            parts.append(clips[rng.integers(len(clips))])
        audio = np.concatenate(parts)[: int(target)]
        path = folder / f"speech{i:03d}.wav"
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        files.append(path)
    return files


def random_model(kind: str, cache: Path) -> tuple[Path, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    whisper = cache / f"whisper-random-{kind}.pt"
    quantizer = cache / "merge-medium-vi-2d-2560c-dim64-random.pth"
    if not whisper.exists():
        write_random_whisper(whisper, random_whisper_dims(**RANDOM_MODELS[kind]))
    if not quantizer.exists():
        write_random_checkpoint(quantizer, dims_for(1024))
    return quantizer, whisper


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_reference(model: torch.nn.Module, files: list[Path], device: str) -> tuple[float, list]:
    sync(device)
    start = time.perf_counter()
    tokens = []
    for path in files:
        audio = torch.from_numpy(load_audio(path))[None].to(device)
        tokens.append(model.quantize(audio)[0].tolist())
    sync(device)
    return time.perf_counter() - start, tokens


def run_ours(tokenizer, files: list[Path], args: argparse.Namespace) -> tuple[float, list]:
    sync(args.device)
    start = time.perf_counter()
    results = list(tokenize_files(files, tokenizer, mode=args.segment, batch_size=args.batch_size))
    sync(args.device)
    elapsed = time.perf_counter() - start
    return elapsed, [[t for s in r.segments for t in s.tokens] for r in results]


def peak_memory(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="quantizer checkpoint (default: a random one, see --random)"
    )
    parser.add_argument("--whisper", help="Whisper .pt or name (with --model)")
    parser.add_argument("--random", choices=sorted(RANDOM_MODELS), default="shallow")
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "ichigo-stream" / "bench"
    )
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, help="default: 1 on CPU, 32 on CUDA")
    parser.add_argument("--segment", choices=["none", "vad", "fixed"], default="none")
    parser.add_argument("--repeats", type=int, default=2, help="best of N timed runs each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--speech-cache",
        type=Path,
        help="folder of the spoken sentences, made with espeak-ng where missing (default: a "
        "temporary folder); a machine without espeak-ng reads them from one made elsewhere",
    )
    parser.add_argument(
        "--compile", default="none", help="ichigo_stream's --compile mode (default: none)"
    )
    args = parser.parse_args(argv)

    if args.model:
        quantizer, whisper = Path(args.model), args.whisper
    else:
        quantizer, whisper = random_model(args.random, args.cache)
    with tempfile.TemporaryDirectory() as tmp:
        files = make_speech(Path(tmp), args.files, args.seed, args.speech_cache)
        audio_seconds = sum(sf.info(f).frames for f in files) / SAMPLE_RATE

        tokenizer, info = load_tokenizer(
            LoadOptions(
                model=str(quantizer),
                whisper=str(whisper),
                device=args.device,
                dtype=args.dtype,
                compile=args.compile,
            )
        )
        reference = reference_model(quantizer, Path(whisper)).to(args.device)
        reference.whmodel[0].to(args.device)
        # Warm-up: first calls pay for allocator growth and kernel selection.
        run_ours(tokenizer, files[:2], args)
        run_reference(reference, files[:1], args.device)
        peak_memory(args.device)

        ref_times, our_times = [], []
        for _ in range(args.repeats):
            elapsed, ref_tokens = run_reference(reference, files, args.device)
            ref_times.append(elapsed)
            ref_peak = peak_memory(args.device)
            elapsed, our_tokens = run_ours(tokenizer, files, args)
            our_times.append(elapsed)
            our_peak = peak_memory(args.device)

    batch = args.batch_size or default_batch_size(tokenizer.device.type)
    ref_speed = audio_seconds / min(ref_times)
    our_speed = audio_seconds / min(our_times)
    identical = ref_tokens == our_tokens
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"device {device_name}, {args.files} files, {audio_seconds:.1f} s of speech, "
        f"whisper {info.whisper}"
    )
    print(f"{'':34} {'audio s / wall s':>16} {'best wall s':>12} {'peak GiB':>9}")
    rows = [
        ("reference loop (float32, batch 1)", ref_speed, min(ref_times), ref_peak),
        (
            f"ichigo_stream ({args.dtype}, batch {batch}"
            + (f", {args.compile})" if args.compile != "none" else ")"),
            our_speed,
            min(our_times),
            our_peak,
        ),
    ]
    for name, speed, wall, peak in rows:
        print(f"{name:34} {speed:16.2f} {wall:12.2f} {peak if peak is not None else '-':>9}")
    print(f"ratio ichigo_stream / reference: {our_speed / ref_speed:.2f}x")
    print(
        f"tokens identical to the reference: {'yes' if identical else 'no'} "
        f"(segment {args.segment})"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                dict(
                    device=device_name,
                    files=args.files,
                    audio_seconds=audio_seconds,
                    reference=dict(speed=ref_speed, wall=min(ref_times), peak_gib=ref_peak),
                    ours=dict(speed=our_speed, wall=min(our_times), peak_gib=our_peak),
                    ratio=our_speed / ref_speed,
                    identical=identical,
                    speech_sha256=speech.input_sha256("tokenize"),
                    args={k: str(v) for k, v in vars(args).items()},
                ),
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
