"""Checkpoint formats, architecture inference, model info and clear load errors."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import subprocess
import sys
import types
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

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
from ichigo_stream.reference import reference_model
from ichigo_stream.safe_load import StandIn, load_checkpoint_file
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


def test_pickled_python_objects_load_as_inert_stand_ins(tmp_path: Path) -> None:
    """No full unpickle and so no warning: the object is rebuilt as a stand-in, never run."""
    path = write_random_checkpoint(tmp_path / "q.ckpt", dims_for(384), seed=1)
    spec = torch.load(path, weights_only=True)
    spec["hyper_parameters"] = {"config": Path("not/a/tensor")}  # a pickled Python object
    torch.save(spec, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_checkpoint(path).dims.width == 384
        loaded = load_checkpoint_file(path)
    config = loaded["hyper_parameters"]["config"]
    assert isinstance(config, StandIn) and not isinstance(config, Path)
    assert config.global_name == "pathlib.PosixPath" and config.args == ("not", "a", "tensor")


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
    # Offline mode: nothing tried on the network; the message names what is missing.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    expect_error(
        r"HF_HUB_OFFLINE is set.*merge-medium.*--model PATH/merge-medium", model=DEFAULT_MODEL
    )


def test_whisper_download_failure_is_one_clear_message(
    tiny_model_files: ModelFiles, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Point the cache at an empty folder: openai-whisper must download, and nothing is reachable.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    expect_error(
        r"unreachable.*Whisper tiny \(tiny.pt.*--whisper PATH/tiny.pt",
        model=str(tiny_model_files.quantizer),
        whisper="tiny",
    )


def test_importing_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, ichigo_stream, ichigo_stream.audio, ichigo_stream.segmentation, "
        "ichigo_stream.tokens, ichigo_stream.constants, ichigo_stream.geometry; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- loading never runs code from the file -------------------------------------------------


@contextlib.contextmanager
def throwaway_module(name: str, source: str) -> Iterator[types.ModuleType]:
    """A module (and its parent packages) that exists only inside the with block."""
    module = types.ModuleType(name)
    parts = name.split(".")
    added = [".".join(parts[: i + 1]) for i in range(len(parts)) if ".".join(parts[: i + 1])]
    added = [n for n in added if n not in sys.modules]
    for parent in added[:-1]:
        sys.modules[parent] = types.ModuleType(parent)
    sys.modules[name] = module
    exec(source, module.__dict__)
    try:
        yield module
    finally:
        for n in added:
            del sys.modules[n]


LIGHTNING_LIKE = """
import dataclasses

@dataclasses.dataclass
class TrainConfig:
    lr: float = 1e-3
    mask_embs: bool = True

class ModelCheckpoint:
    def __init__(self, monitor):
        self.monitor = monitor
"""


def test_objects_of_modules_that_do_not_exist_load_with_the_same_tokens(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """A Lightning file whose metadata names classes of a package this process lacks."""
    spec = torch.load(tiny_model_files.quantizer, weights_only=True)
    name = f"gone_pkg_{uuid.uuid4().hex[:8]}.pytorch.callbacks"
    with throwaway_module(name, LIGHTNING_LIKE) as module:
        for cls in (module.TrainConfig, module.ModelCheckpoint):
            cls.__module__ = name
        spec["hyper_parameters"] = {"config": module.TrainConfig(lr=2e-4)}
        spec["callbacks"] = {"ModelCheckpoint{'monitor': 'val'}": module.ModelCheckpoint("val")}
        spec["pytorch-lightning_version"] = "2.4.0"
        path = tmp_path / "with-objects.ckpt"
        torch.save(spec, path)
    assert name not in sys.modules
    with pytest.raises(pickle.UnpicklingError):  # torch's weights-only loader alone refuses it
        torch.load(path, weights_only=True)
    loaded = load_checkpoint_file(path)
    config = loaded["hyper_parameters"]["config"]
    assert config.global_name == f"{name}.TrainConfig"
    assert config.state == {"lr": 2e-4, "mask_embs": True}
    callback = loaded["callbacks"]["ModelCheckpoint{'monitor': 'val'}"]
    assert callback.global_name == f"{name}.ModelCheckpoint" and callback.state == {
        "monitor": "val"
    }
    clip = [torch.randn(3 * 16000) * 0.1]
    want = load_tokenizer(
        LoadOptions(model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper))
    )[0].quantize(clip)[0]
    got = load_tokenizer(LoadOptions(model=str(path), whisper=str(tiny_model_files.whisper)))[0]
    assert got.quantize(clip)[0].tolist() == want.tolist() and len(want) == 75


SIDE_EFFECT = """
def touch(path):
    open(path, "w").close()
"""


class Payload:
    """Pickles as a call of `func(*args)`: what a malicious checkpoint does."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.exec": Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": Payload(subprocess.call, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("suffix", [".pth", ".ckpt", ".model", ".pt"])
@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "subprocess.call"])
def test_malicious_quantizer_files_are_refused_and_never_run(
    tiny_model_files: ModelFiles, tmp_path: Path, suffix: str, kind: str
) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    spec = torch.load(tiny_model_files.quantizer, weights_only=True)
    # Hidden in an otherwise valid checkpoint, and as the whole file.
    spec["hyper_parameters"] = {"config": payloads(marker)[kind]}
    for i, content in enumerate((spec, payloads(marker)[kind])):
        path = tmp_path / f"evil{i}{suffix}"
        torch.save(content, path)
        with pytest.raises(ModelLoadError, match=r"refused: its pickle asks to call .*malicious"):
            load_tokenizer(LoadOptions(model=str(path), whisper=str(tiny_model_files.whisper)))
        assert not marker.exists()


def test_malicious_whisper_file_is_refused_and_never_run(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    spec = torch.load(tiny_model_files.whisper, weights_only=True)
    spec["extra"] = payloads(marker)["os.system"]
    evil = tmp_path / "whisper-evil.pt"
    torch.save(spec, evil)
    with pytest.raises(ModelLoadError, match=r"refused: its pickle asks to call posix\.system"):
        load_tokenizer(LoadOptions(model=str(tiny_model_files.quantizer), whisper=str(evil)))
    assert not marker.exists()
    # A Whisper file with metadata objects of a missing module still loads.
    with throwaway_module("gone_whisper_meta", LIGHTNING_LIKE) as module:
        module.TrainConfig.__module__ = "gone_whisper_meta"
        spec["extra"] = module.TrainConfig()
        meta = tmp_path / "whisper-meta.pt"
        torch.save(spec, meta)
    tokenizer, _ = load_tokenizer(
        LoadOptions(model=str(tiny_model_files.quantizer), whisper=str(meta))
    )
    assert len(tokenizer.quantize([torch.zeros(16000)])[0]) == 25


def test_named_callables_are_never_called_even_when_importable(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """Safety rests on stand-ins being inert, not on a list of bad names."""
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    name = f"sidefx_{uuid.uuid4().hex[:8]}"
    with throwaway_module(name, SIDE_EFFECT) as module:
        module.touch.__module__ = name
        spec = torch.load(tiny_model_files.quantizer, weights_only=True)
        spec["hyper_parameters"] = Payload(module.touch, str(marker))
        path = tmp_path / "calls-a-function.ckpt"
        torch.save(spec, path)
        loaded = load_checkpoint_file(path)  # the module is importable and still not run
        assert read_checkpoint(path).dims.width == 384
    assert not marker.exists()
    assert isinstance(loaded["hyper_parameters"], StandIn)
    assert loaded["hyper_parameters"].global_name == f"{name}.touch"
    assert loaded["hyper_parameters"].args == (str(marker),)


def test_objects_that_need_code_to_rebuild_are_refused(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """A dict subclass is filled by calling its __setitem__: the restricted loader refuses."""
    spec = torch.load(tiny_model_files.quantizer, weights_only=True)
    with throwaway_module("gone_dicts", "class AttributeDict(dict):\n    pass\n") as module:
        module.AttributeDict.__module__ = "gone_dicts"
        spec["hyper_parameters"] = module.AttributeDict(lr=1.0)
        path = tmp_path / "dict-subclass.ckpt"
        torch.save(spec, path)
    with pytest.raises(ModelLoadError, match=r"cannot be rebuilt without running code .*SETITEM"):
        read_checkpoint(path)


def test_a_file_saved_by_the_reference_loads_with_its_vqconfig(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """ichigo-asr's save_model pickles its VQConfig and class: tunables come from the VQConfig."""
    source = write_random_checkpoint(
        tmp_path / "ws.model", dims_for(384, 513), format="whisperspeech", seed=3
    )
    reference = reference_model(source, tiny_model_files.whisper)
    saved = tmp_path / "saved-by-ichigo-asr.model"
    reference.save_model(saved)
    names = torch.serialization.get_unsafe_globals_in_checkpoint(saved)  # read, not run
    assert "ichigo_asr.config.vq_config.VQConfig" in names
    assert "tunables" not in load_checkpoint_file(saved)
    checkpoint = read_checkpoint(saved)
    assert checkpoint.dims == read_checkpoint(source).dims
    options = LoadOptions(model=str(saved), whisper=str(tiny_model_files.whisper))
    clip = [torch.randn(2 * 16000) * 0.1]
    got = load_tokenizer(options)[0].quantize(clip)[0]
    with torch.no_grad():
        assert got.tolist() == reference.quantize(clip[0][None])[0].tolist()


def test_refused_whisperspeech_configs(tiny_model_files: ModelFiles, tmp_path: Path) -> None:
    dims = dims_for(384, 513)
    no_mask = write_random_checkpoint(
        tmp_path / "no-mask.model", dims, format="whisperspeech", omit=("mask_embs",)
    )
    with pytest.raises(ModelLoadError, match=r"tunables\['mask_embs'\] is false .*whole padded"):
        read_checkpoint(no_mask)
    deep = tmp_path / "deep.model"
    spec = torch.load(no_mask, weights_only=True)
    spec["tunables"]["mask_embs"] = True
    spec["config"]["q_depth"] = 12
    torch.save(spec, deep)
    with pytest.raises(ModelLoadError, match=r"config\['q_depth'\] = 12"):
        read_checkpoint(deep)


def test_whisper_with_other_audio_positions_is_refused(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    dims = replace(random_whisper_dims(384, n_layer=1), n_audio_ctx=1000)
    odd = write_random_whisper(tmp_path / "ctx1000.pt", dims)
    expect_error(
        "has 1000 audio positions.*need Whisper's 1500",
        model=str(tiny_model_files.quantizer),
        whisper=str(odd),
    )


def test_loading_reports_each_step_with_the_files_and_their_sizes(
    tiny_model_files: ModelFiles,
) -> None:
    files = tiny_model_files
    steps: list[str] = []
    options = LoadOptions(model=str(files.quantizer), whisper=str(files.whisper))
    load_tokenizer(options, text=True, progress=steps.append)
    assert [s.split()[0] for s in steps] == ["quantizer", "reading", "building", "building"]
    assert str(files.quantizer) in steps[0] and " MB)" in steps[0]
    assert str(files.whisper) in steps[1] and " MB)" in steps[1]
    assert "decoder" in steps[3]
    steps.clear()
    load_tokenizer(options, progress=steps.append)  # no decoder step without text
    assert len(steps) == 3
