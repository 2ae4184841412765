"""ichigo_stream: turn live speech into Ichigo-Whisper tokens.

The front door, like openai-whisper's ``whisper.load_model``::

    import ichigo_stream

    tokenizer, info = ichigo_stream.load_tokenizer(device="cpu")          # the model extra
    for result in ichigo_stream.tokenize_files(["a.wav"], tokenizer):
        print(result.file, [s.tokens for s in result.segments])

    async for event in ichigo_stream.stream(chunks, ichigo_stream.ClientOptions(url)):
        ...                                                               # no torch needed

Importing this package never imports torch (nor websockets): the names below are loaded on
first use (PEP 562), and only load_tokenizer's call needs the ``model`` extra.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    AudioError,
    AuthenticationError,
    ClientError,
    ConnectionLost,
    IchigoStreamError,
    ModelLoadError,
    ProtocolError,
    RemoteError,
    SegmentationError,
    TokenFormatError,
)
from .options import DEFAULT_MODEL, LoadOptions

if TYPE_CHECKING:
    from .client import ClientOptions, stream
    from .messages import Segment
    from .model import IchigoTokenizer
    from .model_info import ModelInfo
    from .pipeline import FileResult, tokenize_files

__version__ = "0.1.0"

# name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "tokenize_files": "pipeline",
    "FileResult": "pipeline",
    "stream": "client",
    "ClientOptions": "client",
    "Segment": "messages",
    "ModelInfo": "model_info",
}

__all__ = [
    "DEFAULT_MODEL",
    "AudioError",
    "AuthenticationError",
    "ClientError",
    "ClientOptions",
    "ConnectionLost",
    "FileResult",
    "IchigoStreamError",
    "LoadOptions",
    "ModelInfo",
    "ModelLoadError",
    "ProtocolError",
    "RemoteError",
    "Segment",
    "SegmentationError",
    "TokenFormatError",
    "__version__",
    "load_tokenizer",
    "stream",
    "tokenize_files",
]


def load_tokenizer(
    model: str | LoadOptions = DEFAULT_MODEL,
    *,
    whisper: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    text: bool = False,
) -> tuple[IchigoTokenizer, ModelInfo]:
    """Load a tokenizer: `model` is a local checkpoint or a Hugging Face REPO:FILE (or a whole
    LoadOptions); `whisper` an openai-whisper name or .pt (default: the checkpoint's own).
    text=True also loads Whisper's decoder (tokens -> text). Needs the ``model`` extra."""
    if isinstance(model, LoadOptions):
        options = model
    else:
        options = LoadOptions(model=model, whisper=whisper, device=device, dtype=dtype)
    from .loading import load_tokenizer as load

    return load(options, text=text)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # once: later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
