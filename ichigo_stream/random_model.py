"""`--model random`: random weights in the real formats, written once to the cache and reused.

The quantizer is a merged-layout Ichigo .pth (2561 codes, mask 2048) and Whisper an
openai-whisper .pt, both of Whisper tiny's width with few layers (catalogue.RANDOM_*), so
every command runs offline and fast on a laptop; the tokens and text mean nothing.
Each file is written to a temporary name in the same folder and renamed into place, so two
processes starting at once never read a half-written file (both write the same weights).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .catalogue import (
    RANDOM_CODEBOOK_SIZE,
    RANDOM_DECODER_LAYERS,
    RANDOM_ENCODER_LAYERS,
    RANDOM_WIDTH,
    random_files,
)
from .checkpoint import dims_for, write_random_checkpoint
from .errors import ModelLoadError
from .whisper_weights import random_whisper_dims, write_random_whisper


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(temp))
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def ensure_random_model(folder: Path | None = None) -> tuple[Path, Path]:
    """The (quantizer, Whisper) files of --model random, written on first use only."""
    quantizer, whisper = random_files(folder)
    try:
        if not whisper.is_file():
            dims = random_whisper_dims(
                RANDOM_WIDTH, n_layer=RANDOM_ENCODER_LAYERS, text_layers=RANDOM_DECODER_LAYERS
            )
            _write_atomically(whisper, lambda p: write_random_whisper(p, dims, seed=0))
        if not quantizer.is_file():
            qdims = dims_for(RANDOM_WIDTH, RANDOM_CODEBOOK_SIZE)
            _write_atomically(
                quantizer, lambda p: write_random_checkpoint(p, qdims, format="ichigo", seed=1)
            )
    except OSError as e:
        raise ModelLoadError(
            f"--model random: cannot write its files in {quantizer.parent} "
            f"({e.strerror or e}); set XDG_CACHE_HOME to a writable folder"
        ) from None
    return quantizer, whisper
