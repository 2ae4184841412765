"""What names a model (load options) and what describes it to token consumers (ModelInfo).

Torch-free, so command-line parsing, the protocol and clients can use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_MODEL = "homebrewltd/ichigo-whisper:merge-medium-vi-2d-2560c-dim64.pth"
DTYPE_NAMES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class LoadOptions:
    model: str = DEFAULT_MODEL  # a local path or a Hugging Face REPO:FILE
    whisper: str | None = None  # None: the Whisper the checkpoint was trained on
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelInfo:
    """What a token consumer needs to know about the model that made the tokens."""

    name: str
    sha256: str
    codebook_size: int
    mask_token: int
    token_rate: int
    whisper: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
