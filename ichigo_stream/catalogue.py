"""The known models: the released Ichigo checkpoints, the built-in random one, and which are
cached here (`ichigo-stream models`). Torch-free.

Sizes are the published files' sizes where a source was found (named beside each), else
marked unknown; they are shown to say what a download costs, never checked against files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .model_cache import (
    hub_cache_dir,
    hub_cached_file,
    random_cache_dir,
    split_hub_ref,
    whisper_cache_dir,
    whisper_cached_file,
)
from .options import DEFAULT_MODEL, RANDOM_MODEL


@dataclass(frozen=True)
class WhisperRelease:
    name: str
    file_name: str  # the file openai-whisper downloads (the basename of whisper._MODELS[name])
    size: str
    size_source: str


# Sizes: openai-whisper's own download progress bar (tqdm in binary units: "1.42G/1.42G",
# "2.88G/2.88G"), which agrees with the parameter counts (769 M, 1550 M) at 2 bytes each.
WHISPERS: dict[str, WhisperRelease] = {
    "medium": WhisperRelease(
        "medium", "medium.pt", "about 1.42 GiB", "openai-whisper's download progress bar"
    ),
    "large-v3": WhisperRelease(
        "large-v3", "large-v3.pt", "about 2.88 GiB", "openai-whisper's download progress bar"
    ),
}


@dataclass(frozen=True)
class Release:
    """A released quantizer checkpoint (shared/ichigo-reference.md's table)."""

    name: str
    ref: str  # Hugging Face REPO:FILE, what --model takes
    size: str
    size_source: str
    whisper: str  # a key of WHISPERS
    width: int
    codebook_size: int  # incl. the mask code
    mask_token: int
    llm: str  # the LLM that reads its tokens


RELEASES: tuple[Release, ...] = (
    Release(
        name='Ichigo-whisper v0.1 "merge-medium-vi-2d-2560c-dim64"',
        ref=DEFAULT_MODEL,
        size="273 MB",
        size_source="the Hugging Face file listing of homebrewltd/Ichigo-whisper-v0.1",
        whisper="medium",
        width=1024,
        codebook_size=2561,
        mask_token=2048,
        llm="Ichigo-llama3.1 v0.5",
    ),
    Release(
        name="WhisperVQ v3 7-lang",
        ref="WhisperSpeech/WhisperSpeech:whisper-vq-stoks-v3-7lang.model",
        size="about 91 MB",
        size_source="jan-hq's copy whisper-vq-stoks-v3-7lang-fixed.model is 90.9 MB",
        whisper="medium",
        width=1024,
        codebook_size=513,
        mask_token=512,
        llm="Ichigo-llama3.1 v0.3/v0.4",
    ),
    Release(
        name="ichigo-asr-2502-en",
        ref="homebrewltd/ichigo-asr:ichigo-asr-2502-en.ckpt",
        size="size unknown",
        size_source="no published size found",
        whisper="large-v3",
        width=1280,
        codebook_size=513,
        mask_token=512,
        llm="-",
    ),
)

# --model random: small enough to run fast on a laptop CPU (Whisper tiny's width, 2 encoder
# layers and 1 decoder layer), in the real formats; its tokens and text are meaningless.
RANDOM_WIDTH = 384
RANDOM_ENCODER_LAYERS = 2
RANDOM_DECODER_LAYERS = 1
RANDOM_CODEBOOK_SIZE = 2561
RANDOM_VERSION = 1  # in the file names: a change of the recipe never reuses older files
_RANDOM_STEM = f"random-v{RANDOM_VERSION}"
RANDOM_QUANTIZER_FILE = f"{_RANDOM_STEM}-ichigo-{RANDOM_WIDTH}w-{RANDOM_CODEBOOK_SIZE}c.pth"
RANDOM_WHISPER_FILE = f"{_RANDOM_STEM}-whisper-{RANDOM_WIDTH}w-{RANDOM_ENCODER_LAYERS}l.pt"


def release_for(ref: str) -> Release | None:
    """The released checkpoint a --model REF names, if any."""
    return next((r for r in RELEASES if r.ref == ref), None)


def random_files(folder: Path | None = None) -> tuple[Path, Path]:
    """The quantizer and Whisper files of --model random (written on first use)."""
    folder = folder or random_cache_dir()
    return folder / RANDOM_QUANTIZER_FILE, folder / RANDOM_WHISPER_FILE


def listing(
    hub_cache: Path | None = None,
    whisper_cache: Path | None = None,
    random_cache: Path | None = None,
) -> list[dict[str, Any]]:
    """Every known model with its facts and what of it is cached (quantizer and Whisper
    separately): the rows of `ichigo-stream models`, and its --format json."""
    hub_cache = hub_cache or hub_cache_dir()
    whisper_cache = whisper_cache or whisper_cache_dir()
    rows = []
    for release in RELEASES:
        repo, filename = split_hub_ref(release.ref) or ("", "")
        quantizer = hub_cached_file(repo, filename, hub_cache)
        whisper = WHISPERS[release.whisper]
        whisper_file = whisper_cached_file(whisper.file_name, whisper_cache)
        row = asdict(release)
        row["whisper"] = {
            "name": whisper.name,
            "file": whisper.file_name,
            "size": whisper.size,
            "cached": whisper_file is not None,
            "path": str(whisper_file) if whisper_file else None,
        }
        row["cached"] = quantizer is not None
        row["path"] = str(quantizer) if quantizer else None
        rows.append(row)
    quantizer, whisper_path = random_files(random_cache)
    rows.append(
        {
            "name": f"random weights (width {RANDOM_WIDTH}, real formats, gibberish output)",
            "ref": RANDOM_MODEL,
            "size": "written on first use, no download",
            "size_source": "",
            "width": RANDOM_WIDTH,
            "codebook_size": RANDOM_CODEBOOK_SIZE,
            "mask_token": 2048,
            "llm": "-",
            "whisper": {
                "name": f"random (width {RANDOM_WIDTH}, {RANDOM_ENCODER_LAYERS} layers)",
                "file": whisper_path.name,
                "size": "",
                "cached": whisper_path.is_file(),
                "path": str(whisper_path) if whisper_path.is_file() else None,
            },
            "cached": quantizer.is_file(),
            "path": str(quantizer) if quantizer.is_file() else None,
        }
    )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The human listing: one block per model."""
    mark = {True: "cached", False: "not cached"}
    lines = []
    for row in rows:
        whisper = row["whisper"]
        lines.append(f"{row['ref']}")
        lines.append(f"  {row['name']}")
        size = f", {row['size']}" if row["size"] else ""
        lines.append(
            f"  quantizer: {mark[row['cached']]}{size}; width {row['width']}, "
            f"{row['codebook_size']} codes (mask {row['mask_token']}); LLM: {row['llm']}"
        )
        wsize = f", {whisper['size']}" if whisper["size"] else ""
        state = mark[whisper["cached"]]
        lines.append(f"  whisper:   {whisper['name']} ({whisper['file']}): {state}{wsize}")
        lines.append("")
    return "\n".join(lines).rstrip("\n")
