"""Turn --model / --whisper references into a ready IchigoTokenizer and its ModelInfo."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .catalogue import release_for
from .checkpoint import QuantizerCheckpoint, build_head, read_checkpoint, sha256_file
from .constants import ENCODER_POSITIONS
from .errors import ModelLoadError
from .model import IchigoTokenizer
from .model_cache import (
    MissingFile,
    Network,
    hub_cache_dir,
    hub_cached_file,
    hub_repo_folder,
    missing_message,
    split_hub_ref,
)
from .model_info import ModelInfo
from .options import DEFAULT_MODEL, DTYPE_NAMES, RANDOM_MODEL, LoadOptions
from .random_model import ensure_random_model
from .whisper_weights import build_encoder, build_text_model, read_whisper, resolve_whisper

# Encoder precisions by name (the names live in options, which CLI parsing imports).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
assert tuple(DTYPES) == DTYPE_NAMES


def resolve_model(ref: str, network: Network | None = None) -> Path | MissingFile:
    """A local path, or a Hugging Face REPO:FILE: its cached copy, else one fast try of the
    network, then the hub's download (into its cache).

    Returns a MissingFile (for the caller's one message) when the file is not cached and the
    network is off (HF_HUB_OFFLINE) or unreachable: huggingface_hub's own retries (minutes of
    warnings) only ever run against a hub that has just answered.
    """
    if os.path.exists(ref):
        if os.path.isdir(ref):
            raise ModelLoadError(
                f"--model {ref} is a directory; pass the checkpoint file inside it"
            )
        return Path(ref)
    parts = split_hub_ref(ref)
    if parts is None:
        raise ModelLoadError(
            f"--model {ref!r}: no such file, and not a Hugging Face reference of the form "
            f"REPO:FILE (e.g. {DEFAULT_MODEL}) nor {RANDOM_MODEL!r}"
        )
    repo, filename = parts
    cache = hub_cache_dir()
    cached = hub_cached_file(repo, filename, cache)
    if cached is not None:
        return cached
    from huggingface_hub import hf_hub_download, hf_hub_url

    url = hf_hub_url(repo_id=repo, filename=filename)
    network = network or Network()
    if not network.reachable(url):
        release = release_for(ref)
        return MissingFile(
            what=f"the quantizer {ref}",
            file_name=filename,
            size=release.size if release else "size not listed",
            looked_in=hub_repo_folder(repo, cache),
            source=url,
            flag="--model",
        )
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache))
    except Exception as e:
        raise ModelLoadError(
            f"could not fetch {filename} from the Hugging Face repo {repo} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Check the name, or download the file "
            "and pass its local path with --model PATH"
        ) from None


@dataclass(frozen=True)
class LocatedModel:
    """The files a LoadOptions names, found (the quantizer already read)."""

    model_path: Path
    checkpoint: QuantizerCheckpoint
    whisper_ref: str  # as named: an openai-whisper name or a path
    whisper_path: Path


def locate(options: LoadOptions) -> LocatedModel:
    """The quantizer and Whisper the options name, from the caches or one fast download
    attempt; a ModelLoadError naming everything missing at once."""
    network = Network()
    if options.model == RANDOM_MODEL:
        found, random_whisper = ensure_random_model()
    else:
        found = resolve_model(options.model, network)
    checkpoint = read_checkpoint(found) if isinstance(found, Path) else None
    if options.whisper:
        whisper_ref: str | None = options.whisper
    elif options.model == RANDOM_MODEL:
        whisper_ref = str(random_whisper)
    elif checkpoint is not None:
        whisper_ref = checkpoint.whisper_name
    else:
        release = release_for(options.model)
        whisper_ref = release.whisper if release else None
    whisper_found = resolve_whisper(whisper_ref, network) if whisper_ref else None
    missing = [m for m in (found, whisper_found) if isinstance(m, MissingFile)]
    if missing:
        message = missing_message(missing, network.down or "network unreachable")
        if whisper_ref is None:
            message += "; then also the Whisper that checkpoint names"
        raise ModelLoadError(message)
    assert isinstance(found, Path) and checkpoint is not None
    if whisper_ref is None or not isinstance(whisper_found, Path):
        raise ModelLoadError(
            f"cannot tell which Whisper {found.name} needs (width {checkpoint.dims.width}); "
            "pass --whisper NAME_OR_PATH"
        )
    return LocatedModel(found, checkpoint, whisper_ref, whisper_found)


def _check_device(device: str, dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ModelLoadError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            "--device cuda asked for but no CUDA GPU is visible to torch; use --device cpu"
        )
    return DTYPES[dtype]


def load_tokenizer(
    options: LoadOptions = LoadOptions(),
    *,
    text: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[IchigoTokenizer, ModelInfo]:
    """Load the quantizer and Whisper's encoder (and its decoder only when text is wanted).

    `progress` gets one line per step (which file, its size): loading can take minutes, and
    a command line or a server log shows where it is.
    """
    step = progress or (lambda _: None)
    dtype = _check_device(options.device, options.dtype)
    located = locate(options)
    model_path, checkpoint = located.model_path, located.checkpoint
    whisper_ref = located.whisper_ref
    step(f"quantizer {model_path} ({_size(model_path)}) read")
    step(
        f"reading Whisper {whisper_ref} from {located.whisper_path} ({_size(located.whisper_path)})"
    )
    whisper_dims, whisper_state = read_whisper(located.whisper_path)
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
    step(f"building the encoder on {options.device} ({options.dtype})")
    encoder = build_encoder(whisper_dims, whisper_state)
    tokenizer = IchigoTokenizer(encoder, build_head(checkpoint), whisper_dims.n_mels)
    tokenizer.to_runtime(options.device, dtype)
    if text:
        step("building Whisper's decoder (text)")
        text_model = build_text_model(whisper_dims, whisper_state, tokenizer.encoder)
        decoder_dtype = torch.float16 if dtype == torch.float16 else torch.float32
        text_model.decoder.to(options.device, decoder_dtype)
        tokenizer.attach_text_model(text_model)
    if options.compile != "none":
        # Last, once every weight is where it stays: a CUDA graph reads them where captured.
        step(f"preparing fixed-shape encoder batches ({options.compile})")
        try:
            tokenizer.use_fixed_shapes(options.compile)
        except Exception as e:  # a compiler or driver failure: say which option caused it
            raise ModelLoadError(
                f"--compile {options.compile} failed on {options.device}: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                "try --compile none"
            ) from e
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


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:,.1f} MB"
