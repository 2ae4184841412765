"""Text decoding throughput: the worker's batched decoder vs decoding one segment at a time.

The server decodes the text of many sessions' segments (finals, and partials for live
captions) in one decoder batch (ichigo_stream/text_decoding.py), each item with its own
language and forced prefix; before, it decoded one segment at a time. Both sides here run
the same requests through the same function, in one process: one call with the whole batch
vs one call per item, and the outputs must be equal.

The requests: random token lists of 3..20 s (random weights cost exactly what real ones do;
the decoder always attends to the 1500 positions of a window), languages cycling through
en, vi, fr, ja, and every other item with a forced prefix of a few text tokens (as captions
give). Random weights never say EOT, so every item decodes `--sample-len` tokens (Whisper's
default 224 is the worst case; real speech stops at its last word): the timing is per decoded
token, the ratio is what matters.

    python benchmarks/bench_text.py --random tiny --batch 8 --sample-len 32     # CPU smoke run
    python benchmarks/bench_text.py --random medium --device cuda --dtype float16 --batch 32

Prints, for each batch size, items per second one at a time and batched, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ichigo_stream.checkpoint import dims_for, write_random_checkpoint
from ichigo_stream.loading import LoadOptions, load_tokenizer
from ichigo_stream.text_decoding import TextRequest, decode_texts
from ichigo_stream.whisper_weights import (
    RELEASED_WHISPER_DIMS,
    random_whisper_dims,
    write_random_whisper,
)

RANDOM_MODELS = {
    "tiny": dict(width=384, n_layer=1),  # the tests' model: the decoder's fixed costs
    "shallow": dict(width=1024, n_layer=2, n_head=16, text_layers=1),  # medium's width
    "medium": RELEASED_WHISPER_DIMS["medium"],  # full size: costs exactly what real weights cost
}
LANGUAGES = ("en", "vi", "fr", "ja")
TOKENS_PER_SECOND = 25


def random_model(kind: str, cache: Path) -> tuple[Path, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    dims = RANDOM_MODELS[kind]
    whisper = cache / f"whisper-random-text-{kind}.pt"
    width = dims["width"]
    quantizer = cache / f"quantizer-random-{width}.pth"
    if not whisper.exists():
        write_random_whisper(whisper, random_whisper_dims(**dims))
    if not quantizer.exists():
        write_random_checkpoint(quantizer, dims_for(width))
    return quantizer, whisper


def requests(tokenizer, n: int, seed: int, sample_len: int) -> list[TextRequest]:
    g = torch.Generator().manual_seed(seed)
    seconds = torch.randint(3, 21, (n,), generator=g).tolist()
    lists = [
        torch.randint(0, tokenizer.dims.codebook_size - 1, (s * TOKENS_PER_SECOND,), generator=g)
        for s in seconds
    ]
    # Prefixes as captions give them: the first text tokens of an earlier decoding.
    seeds = decode_texts(
        tokenizer, [TextRequest(t.tolist(), "en") for t in lists], sample_len=min(4, sample_len)
    )
    return [
        TextRequest(t.tolist(), LANGUAGES[i % len(LANGUAGES)], s.text_tokens if i % 2 else ())
        for i, (t, s) in enumerate(zip(lists, seeds, strict=True))
    ]


def one_at_a_time(tokenizer, batch: list[TextRequest], sample_len: int):
    return [decode_texts(tokenizer, [r], sample_len=sample_len)[0] for r in batch]


def timed(device: str, fn, tokenizer, batch: list[TextRequest], sample_len: int):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(tokenizer, batch, sample_len=sample_len)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="quantizer checkpoint (default: a random one)")
    parser.add_argument("--whisper", help="Whisper .pt or name (with --model)")
    parser.add_argument("--random", choices=sorted(RANDOM_MODELS), default="tiny")
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "ichigo-stream" / "bench"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, nargs="+", default=[8], help="batch sizes to measure")
    parser.add_argument("--sample-len", type=int, default=224, help="text tokens per item")
    parser.add_argument("--repeats", type=int, default=2, help="best of N timed runs each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    if args.model:
        quantizer, whisper = Path(args.model), args.whisper
    else:
        quantizer, whisper = random_model(args.random, args.cache)
    options = LoadOptions(
        model=str(quantizer), whisper=str(whisper), device=args.device, dtype=args.dtype
    )
    tokenizer, _ = load_tokenizer(options, text=True)
    decode_texts(tokenizer, requests(tokenizer, 2, args.seed, 4), sample_len=4)  # warm up

    rows = []
    print(f"{'batch':>5} {'alone items/s':>14} {'batched items/s':>16} {'ratio':>6}  equal")
    for n in args.batch:
        batch = requests(tokenizer, n, args.seed, args.sample_len)
        alone_s, batched_s = float("inf"), float("inf")
        for _ in range(args.repeats):
            t, alone = timed(args.device, one_at_a_time, tokenizer, batch, args.sample_len)
            alone_s = min(alone_s, t)
            t, batched = timed(args.device, decode_texts, tokenizer, batch, args.sample_len)
            batched_s = min(batched_s, t)
        # Equal text; on a GPU a batch shape may pick other kernels and flip a rare near-tie.
        equal = [a.text for a in alone] == [b.text for b in batched]
        row = {
            "batch": n,
            "alone_s": round(alone_s, 4),
            "batched_s": round(batched_s, 4),
            "alone_items_per_s": round(n / alone_s, 3),
            "batched_items_per_s": round(n / batched_s, 3),
            "ratio": round(alone_s / batched_s, 3),
            "equal": equal,
        }
        rows.append(row)
        print(
            f"{n:>5} {row['alone_items_per_s']:>14} {row['batched_items_per_s']:>16} "
            f"{row['ratio']:>6}  {equal}"
        )
    if args.json:
        report = {
            "model": args.model or f"random {args.random}",
            "device": args.device,
            "dtype": args.dtype,
            "sample_len": args.sample_len,
            "threads": torch.get_num_threads(),
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
