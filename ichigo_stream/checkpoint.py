"""Quantizer checkpoint files: read both released formats, write random ones of any config.

Two formats exist (shared/ichigo-reference.md):
- Ichigo / Lightning (`.pth`, `.ckpt`): {"state_dict": {"model.<key>": tensor}}, no config;
  the architecture is inferred from tensor shapes (and the file name for known releases).
- WhisperSpeech (`.model`): {"config": {...}, "tunables": {...}, "state_dict": {...}}.

Files are read by safe_load.load_checkpoint_file, which never runs code from the file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from .errors import ModelLoadError
from .geometry import RELEASED_DOWNSAMPLE, TokenGeometry
from .model import QuantizerDims, QuantizerHead
from .safe_load import StandIn, load_checkpoint_file

CheckpointFormat = Literal["ichigo", "whisperspeech"]

# Whisper model implied by the encoder width, when the file does not name one.
WHISPER_BY_WIDTH = {384: "tiny", 512: "base", 768: "small", 1024: "medium", 1280: "large-v3"}
# The merged Ichigo codebook: 2048 new codes, then the mask code, then the 512 WhisperVQ codes.
MERGED_CODEBOOK_SIZE = 2561
MERGED_MASK_TOKEN = 2048

# Buffers that only training uses; present in released files, ignored here.
_TRAINING_KEYS = re.compile(
    r"^(rq\.layers\.\d+\._codebook\.(initted|cluster_size|embed_avg)|_codebook_usage|val_true|val_total)$"
)
_RENAMES = (
    (re.compile(r"^rq\.layers\.0\.project_(in|out)\."), r"project_\1."),
    (re.compile(r"^_?out_blocks\.(\d+)\."), r"blocks.\1."),
)
_CODEBOOK_KEY = "rq.layers.0._codebook.embed"

# The reference's constructor defaults (RQBottleneckTransformer.__init__), which a .model
# file's config falls back to for a field it lacks. downsample=1 in particular: such a file
# gets one token per encoder position (1500 per window, 50 per second), as in the reference.
REFERENCE_CONFIG_DEFAULTS: dict[str, Any] = {
    "vq_codes": 512,
    "q_depth": 12,
    "depth": 1,
    "n_head": 2,
    "head_width": 64,
    "ffn_mult": 4,
    "codebook_dim": 2,
    "downsample": 1,
}
# WhisperSpeech's Tunables.upgrade defaults for files older than these fields.
TUNABLE_DEFAULTS: dict[str, Any] = {
    "query_mult": 1,
    "rope": False,
    "mask_embs": False,
    "downsample_conv": False,
    "downsample_mean": False,
}


def ichigo_mask_token(codebook_size: int) -> int:
    """The mask code of an Ichigo-format file, which does not record it: 2048 in the merged
    2561-code layout, otherwise the last code (WhisperVQ's layout)."""
    return MERGED_MASK_TOKEN if codebook_size == MERGED_CODEBOOK_SIZE else codebook_size - 1


@dataclass(frozen=True)
class QuantizerCheckpoint:
    """A quantizer checkpoint read from disk, in this package's parameter names."""

    dims: QuantizerDims
    whisper_name: str | None  # the Whisper model the quantizer was trained on, if known
    format: CheckpointFormat
    state_dict: dict[str, Tensor]


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _head_state(raw: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """File keys -> QuantizerHead keys; training buffers dropped, unknown keys kept."""
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        if _TRAINING_KEYS.match(key):
            continue
        if key == _CODEBOOK_KEY:
            state["codebook"] = value.reshape(value.shape[-2], value.shape[-1])
            continue
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        state[key] = value
    return state


def _infer_dims(state: dict[str, Tensor], file_name: str) -> QuantizerDims:
    try:
        width = state["mlp_ln.weight"].shape[0]
        ffn_mult = state["mlp.0.weight"].shape[0] // width
        codebook_size, codebook_dim = state["codebook"].shape
    except KeyError as e:
        raise ModelLoadError(
            f"{file_name}: not an Ichigo quantizer checkpoint (no {e.args[0]!r} tensor); "
            "expected a .pth/.ckpt with 'model.'-prefixed quantizer weights or a WhisperSpeech "
            ".model"
        ) from None
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    inv_freq = state.get("blocks.0.attn.rotary.inv_freq")
    head_width = 2 * inv_freq.shape[0] if inv_freq is not None else 64
    mask = ichigo_mask_token(codebook_size)
    return QuantizerDims(
        width=width,
        n_head=width // head_width,
        depth=depth,
        ffn_mult=ffn_mult,
        codebook_size=codebook_size,
        codebook_dim=codebook_dim,
        mask_token=mask,
        rope=inv_freq is not None,
    )


def _tunables(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The file's tunables, over WhisperSpeech's defaults for the fields it lacks."""
    tunables = spec.get("tunables")
    nested = config.get("config")
    if tunables is None and isinstance(nested, StandIn) and isinstance(nested.state, dict):
        # ichigo-asr's save_model stores its VQConfig object (read as a stand-in) in the
        # config instead of a tunables dict; its fields are the tunables.
        tunables = nested.state
    if tunables is not None and not isinstance(tunables, dict):
        raise ModelLoadError(f"'tunables' is a {type(tunables).__name__}, expected a dict")
    return {**TUNABLE_DEFAULTS, **(tunables or {})}


def _whisperspeech_dims(
    config: dict[str, Any], tunables: dict[str, Any], codebook_size: int
) -> QuantizerDims:
    cfg = {**REFERENCE_CONFIG_DEFAULTS, **config}
    if tunables["downsample_conv"]:
        raise ModelLoadError("WhisperSpeech checkpoints with downsample_conv are not supported")
    if cfg["q_depth"] != 1:
        raise ModelLoadError(
            f"config['q_depth'] = {cfg['q_depth']}: only one-codebook quantizers are supported"
        )
    if not tunables["mask_embs"]:
        # Without a mask code the reference returns the tokens of the whole padded window,
        # padding included, whatever the audio's length: not tokens of the audio.
        raise ModelLoadError(
            "tunables['mask_embs'] is false (or missing): the reference then returns tokens "
            "for the whole padded 30 s window, not only for the audio; not supported"
        )
    expected = cfg["vq_codes"] + 1
    if expected != codebook_size:
        raise ModelLoadError(f"config says {expected} codes but the codebook holds {codebook_size}")
    try:
        TokenGeometry(cfg["downsample"])
    except ValueError as e:
        missing = " (missing, so the reference's default 1)" if "downsample" not in config else ""
        field = f"config['downsample'] = {cfg['downsample']!r}{missing}"
        raise ModelLoadError(f"{field}: {e}") from None
    try:
        return QuantizerDims(
            width=cfg["n_head"] * cfg["head_width"],
            n_head=cfg["n_head"],
            depth=cfg["depth"],
            ffn_mult=cfg["ffn_mult"],
            codebook_size=codebook_size,
            codebook_dim=cfg["codebook_dim"],
            mask_token=cfg["vq_codes"],
            downsample=cfg["downsample"],
            downsample_mean=bool(tunables["downsample_mean"]),
            query_mult=tunables["query_mult"],
            rope=bool(tunables["rope"]),
        )
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"config does not describe a quantizer: {e}") from None


def read_checkpoint(path: str | os.PathLike[str]) -> QuantizerCheckpoint:
    """Read a quantizer checkpoint in either released format."""
    path = Path(path)
    try:
        spec = load_checkpoint_file(path)
    except FileNotFoundError:
        raise ModelLoadError(f"quantizer checkpoint {path} does not exist") from None
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {e}); expected an Ichigo "
            ".pth/.ckpt or a WhisperSpeech .model file"
        ) from None
    if not isinstance(spec, dict) or not isinstance(spec.get("state_dict"), dict):
        raise ModelLoadError(
            f"{path}: no 'state_dict' inside; expected an Ichigo or WhisperSpeech checkpoint"
        )
    raw = spec["state_dict"]
    if "config" in spec:
        config = spec["config"]
        if not isinstance(config, dict):
            raise ModelLoadError(f"{path}: 'config' is a {type(config).__name__}, expected a dict")
        state = _head_state(raw, "")
        if "codebook" not in state:
            raise ModelLoadError(f"{path}: WhisperSpeech file without a codebook ({_CODEBOOK_KEY})")
        try:
            dims = _whisperspeech_dims(config, _tunables(spec, config), state["codebook"].shape[0])
        except ModelLoadError as e:
            raise ModelLoadError(f"{path}: {e}") from None
        whisper_name = config.get("whisper_model_name")
        fmt: CheckpointFormat = "whisperspeech"
    else:
        prefix = "model." if any(key.startswith("model.") for key in raw) else ""
        state = _head_state(raw, prefix)
        dims = _infer_dims(state, path.name)
        whisper_name = WHISPER_BY_WIDTH.get(dims.width)
        fmt = "ichigo"
    _check_state(state, dims, path)
    return QuantizerCheckpoint(dims=dims, whisper_name=whisper_name, format=fmt, state_dict=state)


def _check_state(state: dict[str, Tensor], dims: QuantizerDims, path: Path) -> None:
    expected = QuantizerHead(dims).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ModelLoadError(
            f"{path}: weights do not fit the quantizer architecture {dims}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )


def build_head(checkpoint: QuantizerCheckpoint) -> QuantizerHead:
    head = QuantizerHead(checkpoint.dims)
    head.load_state_dict(checkpoint.state_dict)
    return head.eval()


# -- random checkpoints in the real formats (tests, benchmarks, smoke runs) -----------------


def random_head_state(dims: QuantizerDims, seed: int = 0) -> dict[str, Tensor]:
    """Random weights at sensible scales; the codebook L2-normalised as training leaves it."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in QuantizerHead(dims).state_dict().items():
        if key.endswith("inv_freq"):
            state[key] = value
        elif key.endswith(("ln.weight", "ln_post.weight")):
            state[key] = torch.ones_like(value)
        elif key.endswith(("ln.bias", "ln_post.bias")):
            state[key] = torch.zeros_like(value)
        else:
            fan_in = value.shape[-1] if value.ndim > 1 else dims.width
            std = 0.02 if key == "positional_embedding.weight" else fan_in**-0.5
            state[key] = torch.randn(value.shape, generator=generator) * std
    state["codebook"] = torch.nn.functional.normalize(state["codebook"], dim=-1)
    return state


def _file_state(
    state: dict[str, Tensor], dims: QuantizerDims, block_prefix: str
) -> dict[str, Tensor]:
    """QuantizerHead keys -> the reference's file keys, training buffers included."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "codebook":
            out[_CODEBOOK_KEY] = value[None].clone()
        elif key.startswith("project_"):
            out[f"rq.layers.0.{key}"] = value
        elif key.startswith("blocks."):
            out[block_prefix + key[len("blocks.") :]] = value
        else:
            out[key] = value
    size = dims.codebook_size
    out["rq.layers.0._codebook.initted"] = torch.tensor([True])
    out["rq.layers.0._codebook.cluster_size"] = torch.ones(1, size)
    out["rq.layers.0._codebook.embed_avg"] = state["codebook"][None].clone()
    out["val_true"] = torch.zeros(1)
    out["val_total"] = torch.zeros(1)
    return out


def write_random_checkpoint(
    path: str | os.PathLike[str],
    dims: QuantizerDims = QuantizerDims(),
    *,
    format: CheckpointFormat = "ichigo",
    whisper_name: str = "medium",
    seed: int = 0,
    omit: Collection[str] = (),
) -> Path:
    """Write a random-weight quantizer checkpoint of any config in a released file format.

    "ichigo" writes what the merged .pth holds ({"state_dict": {"model.*": ...}}, blocks under
    "_out_blocks"); "whisperspeech" writes a .model ({"config", "tunables", "state_dict"},
    blocks under "out_blocks"), with any downsample, even one that loading refuses. `omit`
    names config or tunables fields to leave out, as files older than those fields do.
    Random weights cost exactly what real ones do to run.
    """
    path = Path(path)
    state = random_head_state(dims, seed)
    if format == "ichigo":
        if dims.downsample != RELEASED_DOWNSAMPLE or not dims.downsample_mean:
            raise ValueError(
                f"the Ichigo format does not record downsample: its files always mean "
                f"{RELEASED_DOWNSAMPLE} frames; use format='whisperspeech'"
            )
        if omit:
            raise ValueError("the Ichigo format has no config fields to omit")
        if dims.mask_token != ichigo_mask_token(dims.codebook_size):
            raise ValueError(
                f"the Ichigo format implies mask token {ichigo_mask_token(dims.codebook_size)} "
                f"for a {dims.codebook_size}-code codebook"
            )
        file_state = _file_state(state, dims, "_out_blocks.")
        file_state["_codebook_usage"] = torch.zeros(dims.codebook_size)
        spec: dict[str, Any] = {"state_dict": {f"model.{k}": v for k, v in file_state.items()}}
    elif format == "whisperspeech":
        if dims.mask_token != dims.codebook_size - 1:
            raise ValueError("the WhisperSpeech format puts the mask code last")
        spec = {
            "config": {
                "vq_codes": dims.codebook_size - 1,
                "q_depth": 1,
                "depth": dims.depth,
                "n_head": dims.n_head,
                "head_width": dims.head_width,
                "ffn_mult": dims.ffn_mult,
                "codebook_dim": dims.codebook_dim,
                "threshold_ema_dead_code": 0,
                "use_cosine_sim": True,
                "downsample": dims.downsample,
                "whisper_model_name": whisper_name,
            },
            "tunables": {
                "query_mult": dims.query_mult,
                "rope": dims.rope,
                "mask_embs": True,
                "downsample_conv": False,
                "downsample_mean": dims.downsample_mean,
                "codebook_dim": dims.codebook_dim,
            },
            "state_dict": _file_state(state, dims, "out_blocks."),
        }
        unknown = set(omit) - set(spec["config"]) - set(spec["tunables"])
        if unknown:
            raise ValueError(f"no such config or tunables fields to omit: {sorted(unknown)}")
        for part in ("config", "tunables"):
            spec[part] = {k: v for k, v in spec[part].items() if k not in omit}
    else:
        raise ValueError(f"unknown checkpoint format {format!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(spec, path)
    return path


def dims_for(
    whisper_width: int, codebook_size: int = MERGED_CODEBOOK_SIZE, **kw: Any
) -> QuantizerDims:
    """Quantizer dims of the released family for a Whisper width (head width 64)."""
    mask = ichigo_mask_token(codebook_size)
    return replace(
        QuantizerDims(
            width=whisper_width,
            n_head=whisper_width // 64,
            codebook_size=codebook_size,
            mask_token=mask,
        ),
        **kw,
    )
