"""Checkpoint formats, architecture inference, model info and clear load errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from models import ModelFiles

from ichigo_stream.checkpoint import (
    build_head,
    dims_for,
    read_checkpoint,
    write_random_checkpoint,
)
from ichigo_stream.errors import ModelLoadError
from ichigo_stream.loading import DEFAULT_MODEL, LoadOptions, load_tokenizer
from ichigo_stream.whisper_weights import random_whisper_dims, write_random_whisper


def test_merged_checkpoint_dims_are_inferred_from_shapes(merged_model_files: ModelFiles) -> None:
    checkpoint = read_checkpoint(merged_model_files.quantizer)
    dims = checkpoint.dims
    assert checkpoint.format == "ichigo"
    assert (dims.width, dims.n_head, dims.depth, dims.ffn_mult) == (1024, 16, 1, 4)
    assert (dims.codebook_size, dims.codebook_dim, dims.mask_token) == (2561, 64, 2048)
    assert dims.rope and dims.downsample == 2 and dims.query_mult == 2
    assert checkpoint.whisper_name == "medium"
    # 22.66 M parameters, as the released merged quantizer (the codebook is a buffer).
    params = sum(p.numel() for p in build_head(checkpoint).parameters())
    assert round(params / 1e6, 2) == 22.66


def test_whisperspeech_checkpoint_dims_come_from_its_config(
    whisperspeech_model_files: ModelFiles,
) -> None:
    checkpoint = read_checkpoint(whisperspeech_model_files.quantizer)
    assert checkpoint.format == "whisperspeech"
    assert (checkpoint.dims.codebook_size, checkpoint.dims.mask_token) == (513, 512)
    assert checkpoint.whisper_name == "medium"


def test_lightning_ckpt_for_large_v3_loads(tmp_path: Path) -> None:
    """The ichigo-asr-2502-en layout: Lightning .ckpt, width 1280, 513 codes, 128 mels."""
    path = tmp_path / "ichigo-asr-2502-en.ckpt"
    write_random_checkpoint(path, dims_for(1280, 513), seed=7)
    spec = torch.load(path, weights_only=True)
    spec.update({"pytorch-lightning_version": "2.4.0", "epoch": 3, "global_step": 1000})
    torch.save(spec, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.whisper_name == "large-v3"
    assert (checkpoint.dims.width, checkpoint.dims.n_head, checkpoint.dims.mask_token) == (
        1280,
        20,
        512,
    )
    whisper = write_random_whisper(
        tmp_path / "large-v3-shallow.pt", random_whisper_dims(1280, n_layer=1, n_mels=128)
    )
    tokenizer, info = load_tokenizer(LoadOptions(model=str(path), whisper=str(whisper)))
    assert tokenizer.n_mels == 128
    assert info.codebook_size == 513 and info.mask_token == 512
    tokens = tokenizer.quantize([torch.randn(16000) * 0.1])[0]
    assert len(tokens) == 25 and int(tokens.max()) < 513


def test_pickled_lightning_objects_load_with_a_warning(tmp_path: Path) -> None:
    path = write_random_checkpoint(tmp_path / "q.ckpt", dims_for(384), seed=1)
    spec = torch.load(path, weights_only=True)
    spec["hyper_parameters"] = {"config": Path("not/a/tensor")}  # a pickled Python object
    torch.save(spec, path)
    with pytest.warns(UserWarning, match="only load checkpoints you trust"):
        assert read_checkpoint(path).dims.width == 384


def test_model_info(tiny_model_files: ModelFiles) -> None:
    _, info = load_tokenizer(
        LoadOptions(model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper))
    )
    digest = hashlib.sha256(tiny_model_files.quantizer.read_bytes()).hexdigest()
    assert info.to_dict() == {
        "name": tiny_model_files.quantizer.name,
        "sha256": digest,
        "codebook_size": 2561,
        "mask_token": 2048,
        "token_rate": 25,
        "whisper": tiny_model_files.whisper.stem,
    }


def test_the_default_model_is_ichigo_whisper_v01() -> None:
    assert DEFAULT_MODEL == "homebrewltd/ichigo-whisper:merge-medium-vi-2d-2560c-dim64.pth"


# -- load errors: one clear message, what was expected, how to fix ---------------------------


def expect_error(match: str, **options: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        load_tokenizer(LoadOptions(**options))


def test_missing_quantizer_file(tiny_model_files: ModelFiles, tmp_path: Path) -> None:
    expect_error(
        "no such file", model=str(tmp_path / "nope.pth"), whisper=str(tiny_model_files.whisper)
    )
    expect_error("is a directory", model=str(tmp_path), whisper=str(tiny_model_files.whisper))


def test_not_a_checkpoint(tiny_model_files: ModelFiles, tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    expect_error("not a PyTorch checkpoint", model=str(text), whisper=str(tiny_model_files.whisper))
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(3)}, other)
    expect_error("no 'state_dict'", model=str(other), whisper=str(tiny_model_files.whisper))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"model.fc.weight": torch.zeros(3, 3)}}, foreign)
    expect_error(
        "not an Ichigo quantizer", model=str(foreign), whisper=str(tiny_model_files.whisper)
    )


def test_wrong_shapes_are_reported(tiny_model_files: ModelFiles, tmp_path: Path) -> None:
    spec = torch.load(tiny_model_files.quantizer, weights_only=True)
    spec["state_dict"]["model.ln_post.weight"] = torch.ones(5)
    bad = tmp_path / "bad.pth"
    torch.save(spec, bad)
    expect_error("wrong shapes", model=str(bad), whisper=str(tiny_model_files.whisper))


def test_width_mismatch_between_quantizer_and_whisper(
    tiny_model_files: ModelFiles, merged_model_files: ModelFiles
) -> None:
    expect_error(
        "has width 384 but the quantizer .* expects 1024",
        model=str(merged_model_files.quantizer),
        whisper=str(tiny_model_files.whisper),
    )


def test_bad_whisper_refs(tiny_model_files: ModelFiles, tmp_path: Path) -> None:
    expect_error(
        "neither a file nor an openai-whisper model name",
        model=str(tiny_model_files.quantizer),
        whisper="huge-v9",
    )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\0" * 100)
    expect_error(
        "not an openai-whisper checkpoint", model=str(tiny_model_files.quantizer), whisper=str(junk)
    )


def test_unknown_width_needs_an_explicit_whisper(tmp_path: Path) -> None:
    path = write_random_checkpoint(tmp_path / "odd.pth", dims_for(640), seed=1)
    expect_error("pass --whisper", model=str(path))


def test_bad_reference_syntax_and_dtype_and_device(tiny_model_files: ModelFiles) -> None:
    expect_error("not a Hugging Face reference", model="no-such-thing.pth")
    expect_error("--dtype 'float8'", model=str(tiny_model_files.quantizer), dtype="float8")
    if not torch.cuda.is_available():
        expect_error("no CUDA GPU", model=str(tiny_model_files.quantizer), device="cuda")


def test_hub_download_failure_is_one_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A real hub call: offline mode makes huggingface_hub refuse at once, as no network would.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    expect_error(r"could not fetch merge-medium.*--model PATH", model=DEFAULT_MODEL)


def test_whisper_download_failure_is_one_clear_message(
    tiny_model_files: ModelFiles, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Point the cache at an empty folder: openai-whisper must download, and nothing is reachable.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    expect_error(
        "could not download Whisper 'tiny'", model=str(tiny_model_files.quantizer), whisper="tiny"
    )


def test_importing_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, ichigo_stream, ichigo_stream.audio, ichigo_stream.segmentation, "
        "ichigo_stream.tokens, ichigo_stream.constants; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
