"""Shared fixtures: random model checkpoints in the real formats, real speech from espeak-ng."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from models import (
    ModelFiles,
    medium_width_whisper,
    merged_model,
    tiny_model,
    whisperspeech_model,
)

from ichigo_stream.constants import SAMPLE_RATE


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model_files(model_dir: Path) -> ModelFiles:
    return tiny_model(model_dir)


@pytest.fixture(scope="session")
def w1024_whisper(model_dir: Path) -> Path:
    return medium_width_whisper(model_dir)


@pytest.fixture(scope="session")
def merged_model_files(model_dir: Path, w1024_whisper: Path) -> ModelFiles:
    return merged_model(model_dir, w1024_whisper)


@pytest.fixture(scope="session")
def whisperspeech_model_files(model_dir: Path, w1024_whisper: Path) -> ModelFiles:
    return whisperspeech_model(model_dir, w1024_whisper)


Speak = Callable[..., np.ndarray]


@pytest.fixture(scope="session")
def speak(tmp_path_factory: pytest.TempPathFactory) -> Speak:
    """speak(text, voice="en-us", wpm=175) -> float32 mono speech at SAMPLE_RATE, by espeak-ng.

    Cached per session; each call returns a fresh copy. espeak-ng is a required test tool
    (.ci/install), so a missing binary fails loudly rather than skipping.
    """
    folder = tmp_path_factory.mktemp("speak")
    cache: dict[tuple[str, str, int], np.ndarray] = {}

    def _speak(text: str, voice: str = "en-us", wpm: int = 175) -> np.ndarray:
        key = (text, voice, wpm)
        if key not in cache:
            wav = folder / f"speech{len(cache)}.wav"
            cmd = ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text]
            subprocess.run(cmd, check=True, capture_output=True)
            raw, rate = sf.read(wav, dtype="float32")  # espeak-ng speaks at 22.05 kHz
            cache[key] = soxr.resample(raw, rate, SAMPLE_RATE).astype(np.float32)
        return cache[key].copy()

    return _speak
