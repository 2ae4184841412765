"""The benchmarks' speech: one list of sentences, and their synthesis by espeak-ng.

Both benchmarks speak from here. Each takes the part it was measured with (`texts`), in the
same order, voice and rate as when the figures in docs/benchmarks.md were made: the order
matters (the benchmarks pick clips by seeded random index), and `input_sha256` lets a run and
tests/integration/test_benchmarks.py prove that the inputs have not changed.

The other tests keep their own sentences: each is that test's input, chosen for what it
asserts, and spoken through the `speak` fixture of tests/conftest.py. They do not share this
module because tests/ cannot import from benchmarks/ (a folder of scripts, not a package),
and the library should not carry test fixtures.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

# Spoken by both benchmarks: 3-5 s each, ordinary read speech.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Speech tokens let a language model listen without a separate recognizer.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "The weather report says rain will move in from the west by late afternoon.",
    "A streaming tokenizer must answer within milliseconds of the end of speech.",
)
# bench_tokenize only: one more long sentence to build its 3-28 s files from.
TONGUE_TWISTER = (
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells."
)
# bench_stream only: short turns, so sessions also send segments of well under a second.
SHORT_UTTERANCES = ("Yes.", "Could you repeat that, please?")

BENCHMARKS = {
    "tokenize": (*SENTENCES, TONGUE_TWISTER),
    "stream": (*SENTENCES, *SHORT_UTTERANCES),
}
# espeak-ng's voice; its rate is left at espeak-ng's default (175 words per minute).
VOICE = "en-us"


def texts(benchmark: str) -> tuple[str, ...]:
    """The sentences `benchmark` ('tokenize' or 'stream') speaks, in its order."""
    return BENCHMARKS[benchmark]


def input_sha256(benchmark: str) -> str:
    """sha256 of the benchmark's sentences joined by newlines: equal sha, equal inputs."""
    return hashlib.sha256("\n".join(texts(benchmark)).encode()).hexdigest()


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, wav: Path, *, quiet: bool = True, voice: str = VOICE) -> Path:
    """`text` spoken by espeak-ng into `wav` (22.05 kHz mono; callers resample on load)."""
    # Written under a temporary name: an interrupted run never leaves a truncated cache entry.
    tmp = wav.with_suffix(".tmp.wav")
    cmd = ["espeak-ng", "-v", voice, "-w", str(tmp), text]
    subprocess.run(cmd, check=True, capture_output=quiet)
    os.replace(tmp, wav)
    return wav


def spoken(benchmark: str, folder: Path, voice: str = VOICE) -> list[Path]:
    """One WAV per sentence of `benchmark`, in its order, synthesized into `folder` once.

    Files are named by a hash of voice and text, so a cache never serves an old recording
    of a sentence that has since changed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for text in texts(benchmark):
        key = hashlib.sha256(f"{voice}\n{text}".encode()).hexdigest()[:16]
        wav = folder / f"espeak-{key}.wav"
        files.append(wav if wav.exists() else synthesize(text, wav, voice=voice))
    return files
