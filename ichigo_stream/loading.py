"""Turn --model / --whisper references into a ready IchigoTokenizer and its ModelInfo."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import build_head, read_checkpoint, sha256_file
from .constants import ENCODER_POSITIONS
from .errors import ModelLoadError
from .model import IchigoTokenizer
from .model_info import ModelInfo
from .options import DEFAULT_MODEL, DTYPE_NAMES, LoadOptions
from .whisper_weights import build_encoder, build_text_model, read_whisper, resolve_whisper

# Encoder precisions by name (the names live in options, which CLI parsing imports).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
assert tuple(DTYPES) == DTYPE_NAMES


def resolve_model(ref: str) -> Path:
    """A local path, or a Hugging Face reference REPO:FILE fetched through the hub's cache."""
    if os.path.exists(ref):
        if os.path.isdir(ref):
            raise ModelLoadError(
                f"--model {ref} is a directory; pass the checkpoint file inside it"
            )
        return Path(ref)
    repo, sep, filename = ref.partition(":")
    if not sep or not repo or not filename or "/" not in repo:
        raise ModelLoadError(
            f"--model {ref!r}: no such file, and not a Hugging Face reference of the form "
            f"REPO:FILE (e.g. {DEFAULT_MODEL})"
        )
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=repo, filename=filename))
    except Exception as e:
        raise ModelLoadError(
            f"could not fetch {filename} from the Hugging Face repo {repo} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Check the network and the name, or "
            "download the file and pass its local path with --model PATH"
        ) from None


def _check_device(device: str, dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ModelLoadError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            "--device cuda asked for but no CUDA GPU is visible to torch; use --device cpu"
        )
    return DTYPES[dtype]


def load_tokenizer(
    options: LoadOptions = LoadOptions(), *, text: bool = False
) -> tuple[IchigoTokenizer, ModelInfo]:
    """Load the quantizer and Whisper's encoder (and its decoder only when text is wanted)."""
    dtype = _check_device(options.device, options.dtype)
    model_path = resolve_model(options.model)
    checkpoint = read_checkpoint(model_path)
    whisper_ref = options.whisper or checkpoint.whisper_name
    if whisper_ref is None:
        raise ModelLoadError(
            f"cannot tell which Whisper {model_path.name} needs (width {checkpoint.dims.width}); "
            "pass --whisper NAME_OR_PATH"
        )
    whisper_dims, whisper_state = read_whisper(resolve_whisper(whisper_ref))
    if whisper_dims.n_audio_state != checkpoint.dims.width:
        raise ModelLoadError(
            f"Whisper {whisper_ref!r} has width {whisper_dims.n_audio_state} but the quantizer "
            f"{model_path.name} expects {checkpoint.dims.width}; pass the matching --whisper "
            "(1024: medium, 1280: large-v3)"
        )
    if whisper_dims.n_audio_ctx != ENCODER_POSITIONS:
        raise ModelLoadError(
            f"Whisper {whisper_ref!r} has {whisper_dims.n_audio_ctx} audio positions; the "
            f"tokenizer's 30 s windows need Whisper's {ENCODER_POSITIONS}"
        )
    encoder = build_encoder(whisper_dims, whisper_state)
    tokenizer = IchigoTokenizer(encoder, build_head(checkpoint), whisper_dims.n_mels)
    tokenizer.to_runtime(options.device, dtype)
    if text:
        text_model = build_text_model(whisper_dims, whisper_state, tokenizer.encoder)
        decoder_dtype = torch.float16 if dtype == torch.float16 else torch.float32
        text_model.decoder.to(options.device, decoder_dtype)
        tokenizer.attach_text_model(text_model)
    del whisper_state
    info = ModelInfo(
        name=model_path.name,
        sha256=sha256_file(model_path),
        codebook_size=checkpoint.dims.codebook_size,
        mask_token=checkpoint.dims.mask_token,
        token_rate=tokenizer.geometry.token_rate,  # from the checkpoint's downsample
        whisper=Path(whisper_ref).stem if os.path.isfile(whisper_ref) else whisper_ref,
    )
    return tokenizer, info
