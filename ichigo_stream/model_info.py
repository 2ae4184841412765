"""What describes a model to token consumers (ModelInfo): the record every tokens output carries.

Torch-free, so the protocol and clients can use it. What names a model to load is LoadOptions,
in ichigo_stream.options.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
