"""Whisper weights: find them (openai-whisper names or local .pt) and build the parts we use."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import whisper
from whisper.model import AudioEncoder, ModelDimensions, Whisper

from .catalogue import WHISPERS
from .errors import ModelLoadError
from .model_cache import MissingFile, Network, whisper_cache_dir, whisper_cached_file
from .safe_load import load_checkpoint_file


def resolve_whisper(ref: str, network: Network | None = None) -> Path | MissingFile:
    """A local .pt path, or an openai-whisper model name: its cached file (openai-whisper
    checks its SHA-256), else one fast try of the network, then openai-whisper's download.

    Returns a MissingFile (for the caller's one message) when the file is not cached and the
    network is off (HF_HUB_OFFLINE counts for openai-whisper's downloads too) or unreachable.
    """
    if os.path.isfile(ref):
        return Path(ref)
    if ref not in whisper._MODELS:
        raise ModelLoadError(
            f"--whisper {ref!r} is neither a file nor an openai-whisper model name "
            f"({', '.join(whisper.available_models())})"
        )
    network = network or Network()
    url = whisper._MODELS[ref]
    cache = whisper_cache_dir()
    file_name = os.path.basename(url)
    if whisper_cached_file(file_name, cache) is None and not network.reachable(url):
        release = WHISPERS.get(ref)
        return MissingFile(
            what=f"Whisper {ref}",
            file_name=file_name,
            size=release.size if release else "size not listed",
            looked_in=cache,
            source=url,
            flag="--whisper",
        )
    try:
        # Verifies a cached file's SHA-256 (downloading again only if it does not match).
        return Path(whisper._download(url, str(cache), False))
    except Exception as e:
        raise ModelLoadError(
            f"could not download Whisper '{ref}' ({type(e).__name__}: {e}). Check the network, "
            f"or put the openai-whisper checkpoint {file_name} in {cache} or pass a local "
            "file with --whisper PATH.pt"
        ) from None


def read_whisper(path: Path) -> tuple[ModelDimensions, dict[str, torch.Tensor]]:
    """openai-whisper's {"dims", "model_state_dict"} file, read without running its pickle."""
    try:
        checkpoint = load_checkpoint_file(path)
        dims = ModelDimensions(**checkpoint["dims"])
        state = checkpoint["model_state_dict"]
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"{path} is not an openai-whisper checkpoint ({type(e).__name__}: {e}); expected a .pt "
            "holding 'dims' and 'model_state_dict'"
        ) from None
    return dims, state


def build_encoder(dims: ModelDimensions, state: dict[str, torch.Tensor]) -> AudioEncoder:
    """Whisper's audio encoder alone: the decoder's weights are not kept."""
    encoder = AudioEncoder(
        dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
    )
    prefix = "encoder."
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return encoder.eval()


def build_text_model(
    dims: ModelDimensions, state: dict[str, torch.Tensor], encoder: AudioEncoder
) -> Whisper:
    """A Whisper model for decoding embeddings to text, sharing our encoder (never run on it)."""
    model = Whisper(dims)
    model.load_state_dict(state)
    model.encoder = encoder
    return model.eval()


def random_whisper_dims(
    width: int = 1024,
    n_layer: int = 2,
    n_head: int | None = None,
    n_mels: int = 80,
    text_layers: int = 1,
) -> ModelDimensions:
    """Dims of a Whisper with real context sizes and vocabulary but chosen width and depth."""
    return ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=1500,
        n_audio_state=width,
        n_audio_head=n_head or width // 64,
        n_audio_layer=n_layer,
        n_vocab=51866 if n_mels == 128 else 51865,
        n_text_ctx=448,
        n_text_state=width,
        n_text_head=n_head or width // 64,
        n_text_layer=text_layers,
    )


# openai-whisper's own dimensions of the released models, for full-size random weights.
RELEASED_WHISPER_DIMS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=384, n_layer=4, n_head=6, text_layers=4),
    "base": dict(width=512, n_layer=6, n_head=8, text_layers=6),
    "small": dict(width=768, n_layer=12, n_head=12, text_layers=12),
    "medium": dict(width=1024, n_layer=24, n_head=16, text_layers=24),
    "large-v3": dict(width=1280, n_layer=32, n_head=20, text_layers=32, n_mels=128),
}


def write_random_whisper(
    path: str | os.PathLike[str], dims: ModelDimensions, *, seed: int = 0, half: bool = True
) -> Path:
    """Write a random-weight Whisper in openai-whisper's file format ({dims, model_state_dict}).

    Weights are stored in float16 like the released files; the encoder keeps its sinusoidal
    positions so the encoder output has a realistic structure.
    """
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("ln.weight") or name.endswith("ln_post.weight"):
                param.fill_(1.0)
            elif param.ndim == 1:
                param.zero_()
            else:
                fan_in = param[0].numel() if param.ndim > 1 else 1
                param.normal_(0.0, fan_in**-0.5 if "embedding" not in name else 0.02)
    state = model.state_dict()
    if half:
        state = {k: v.half() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": asdict(dims), "model_state_dict": state}, path)
    return path
