"""The reference implementation (ichigo-asr 0.1.1) built from a checkpoint file: parity tests
and side-by-side benchmarks use it (install it as .ci/install does; it is not a dependency).

ichigo_asr imports torchaudio at module level but reads no files here; torchaudio from PyPI
is a CUDA build that cannot import with the CPU torch, so an empty stand-in module takes
its name before ichigo_asr is imported.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

from .safe_load import load_checkpoint_file


def _import_reference() -> tuple[type, type]:
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    from ichigo_asr.config.vq_config import VQConfig
    from ichigo_asr.models.vq_transformer import RQBottleneckTransformer

    return RQBottleneckTransformer, VQConfig


def reference_model(checkpoint: Path, whisper_path: Path) -> torch.nn.Module:
    """The reference RQBottleneckTransformer with the file's weights and a local Whisper .pt."""
    model_cls, vq_config = _import_reference()
    spec = load_checkpoint_file(checkpoint)  # never a full unpickle, even in tests
    if "config" in spec:  # WhisperSpeech .model: its keys predate ichigo-asr's renames
        cfg, tunables = spec["config"], spec["tunables"]
        config = vq_config(
            query_mult=tunables["query_mult"],
            rope=tunables["rope"],
            mask_embs=tunables["mask_embs"],
            downsample_conv=tunables["downsample_conv"],
            downsample_mean=tunables["downsample_mean"],
        )
        args = {k: cfg[k] for k in cfg if k != "whisper_model_name"}
        model = model_cls(**args, whisper_model_name=str(whisper_path), config=config)
        state = {
            k.replace("out_blocks.", "_out_blocks.", 1) if k.startswith("out_blocks.") else k: v
            for k, v in spec["state_dict"].items()
        }
        state["_codebook_usage"] = model._codebook_usage
    else:  # Ichigo .pth/.ckpt: the architecture of ichigo_asr's make_vq_model family
        state = {k.replace("model.", "", 1): v for k, v in spec["state_dict"].items()}
        width = state["mlp_ln.weight"].shape[0]
        codes = state["rq.layers.0._codebook.embed"].shape[-2]
        model = model_cls(
            vq_codes=codes - 1,
            q_depth=1,
            depth=1,
            n_head=width // 64,
            head_width=64,
            codebook_dim=state["rq.layers.0._codebook.embed"].shape[-1],
            threshold_ema_dead_code=0,
            use_cosine_sim=True,
            downsample=2,
            whisper_model_name=str(whisper_path),
            config=vq_config(),
        )
    model.load_state_dict(state)
    model.eval()
    model.ensure_whisper("cpu")
    return model
