"""Small random checkpoints in the real file formats, written once per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ichigo_stream.checkpoint import dims_for, write_random_checkpoint
from ichigo_stream.whisper_weights import random_whisper_dims, write_random_whisper


@dataclass(frozen=True)
class ModelFiles:
    quantizer: Path
    whisper: Path


def tiny_model(root: Path) -> ModelFiles:
    """Width 384 (Whisper tiny's), one encoder layer, merged 2561-code layout: fast."""
    whisper = write_random_whisper(
        root / "whisper-tiny1.pt", random_whisper_dims(384, n_layer=1), seed=1
    )
    quantizer = write_random_checkpoint(root / "tiny-2561c.pth", dims_for(384), seed=2)
    return ModelFiles(quantizer, whisper)


def medium_width_whisper(root: Path) -> Path:
    """A shallow (2-layer) Whisper of medium's width 1024 and its real context sizes."""
    return write_random_whisper(
        root / "whisper-w1024-2l.pt", random_whisper_dims(1024, n_layer=2), seed=3
    )


def merged_model(root: Path, whisper: Path) -> ModelFiles:
    """The merged Ichigo-whisper v0.1 config (2561 codes, mask 2048) in the .pth format."""
    quantizer = write_random_checkpoint(
        root / "merge-medium-vi-2d-2560c-dim64.pth", dims_for(1024), seed=4
    )
    return ModelFiles(quantizer, whisper)


def whisperspeech_model(root: Path, whisper: Path) -> ModelFiles:
    """A WhisperVQ-style 513-code quantizer in the WhisperSpeech .model format."""
    quantizer = write_random_checkpoint(
        root / "whisper-vq-stoks-v3-7lang.model",
        dims_for(1024, 513),
        format="whisperspeech",
        seed=5,
    )
    return ModelFiles(quantizer, whisper)
