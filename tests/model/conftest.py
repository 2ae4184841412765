"""Random model checkpoints in the real file formats, written once per session (needs torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from models import (
    ModelFiles,
    medium_width_whisper,
    merged_model,
    tiny_model,
    whisperspeech_model,
)


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
