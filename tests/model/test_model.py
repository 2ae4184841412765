"""Parity with the reference (ichigo-asr 0.1.1): same checkpoint, same audio, same tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import whisper
from models import ModelFiles

from ichigo_stream.assets import sample_path
from ichigo_stream.checkpoint import dims_for, write_random_checkpoint
from ichigo_stream.constants import SAMPLE_RATE, WINDOW_SAMPLES
from ichigo_stream.errors import ModelLoadError
from ichigo_stream.geometry import supported_downsamples
from ichigo_stream.loading import LoadOptions, load_tokenizer
from ichigo_stream.model import IchigoTokenizer, TextOptions
from ichigo_stream.reference import reference_model

SAMPLE = sample_path()
# Clip lengths in seconds, from a tenth of a second to a full window.
LENGTHS = (0.1, 0.5, 1.0, 2.5, 7.3, 13.37, 29.99, 30.0)


@pytest.fixture(scope="module")
def speech_30s() -> np.ndarray:
    """30 s of real speech: the bundled espeak-ng sample, repeated."""
    audio, rate = sf.read(SAMPLE, dtype="float32")
    assert rate == SAMPLE_RATE
    return np.tile(audio, WINDOW_SAMPLES // len(audio) + 1)[:WINDOW_SAMPLES]


def clips_of(audio: np.ndarray, lengths: tuple[float, ...], offset: int = 0) -> list[torch.Tensor]:
    # Start each clip somewhere else so the clips differ beyond their length.
    return [
        torch.from_numpy(np.roll(audio, -(offset + 7919 * i))[: round(s * SAMPLE_RATE)].copy())
        for i, s in enumerate(lengths)
    ]


def load(files: ModelFiles, **kw: str) -> IchigoTokenizer:
    tokenizer, _ = load_tokenizer(
        LoadOptions(model=str(files.quantizer), whisper=str(files.whisper), **kw)
    )
    return tokenizer


def assert_parity(files: ModelFiles, clips: list[torch.Tensor], min_distinct: int = 10) -> None:
    ours = load(files)
    reference = reference_model(files.quantizer, files.whisper)
    expected = [reference.quantize(clip[None])[0] for clip in clips]
    one_at_a_time = [ours.quantize([clip])[0] for clip in clips]
    batched = ours.quantize(clips)
    for clip, want, single, batch in zip(clips, expected, one_at_a_time, batched, strict=True):
        assert len(want) == ours.geometry.n_tokens(len(clip))
        assert single.tolist() == want.tolist()
        assert batch.tolist() == want.tolist()
    # Random weights still give varied tokens: a constant output would make parity vacuous.
    assert len(set(torch.cat(batched).tolist())) > min_distinct


def test_merged_checkpoint_matches_reference(
    merged_model_files: ModelFiles, speech_30s: np.ndarray
) -> None:
    assert_parity(merged_model_files, clips_of(speech_30s, LENGTHS))


def test_whisperspeech_checkpoint_matches_reference(
    whisperspeech_model_files: ModelFiles, speech_30s: np.ndarray
) -> None:
    assert_parity(
        whisperspeech_model_files, clips_of(speech_30s, (0.1, 3.0, 11.0, 30.0), offset=1234)
    )


def test_tiny_checkpoint_matches_reference(
    tiny_model_files: ModelFiles, speech_30s: np.ndarray
) -> None:
    assert_parity(tiny_model_files, clips_of(speech_30s, LENGTHS, offset=555))


# -- other downsample values: the reference's token counts and tokens, or a clear refusal -------


def tiny_whisperspeech(
    tiny_model_files: ModelFiles, root: Path, downsample: int, mean: bool = True, **kw: Any
) -> ModelFiles:
    """A width-384 513-code quantizer with this downsample, in the WhisperSpeech format."""
    dims = dims_for(384, 513, downsample=downsample, downsample_mean=mean)
    name = f"ds{downsample}-{'mean' if mean else 'stride'}.model"
    path = write_random_checkpoint(root / name, dims, format="whisperspeech", seed=11, **kw)
    return ModelFiles(path, tiny_model_files.whisper)


@pytest.mark.parametrize(
    ("downsample", "mean"), [(1, True), (1, False), (2, False), (5, True), (50, True)]
)
def test_other_downsamples_match_reference(
    tiny_model_files: ModelFiles,
    speech_30s: np.ndarray,
    tmp_path: Path,
    downsample: int,
    mean: bool,
) -> None:
    assert downsample in supported_downsamples()
    files = tiny_whisperspeech(tiny_model_files, tmp_path, downsample, mean)
    tokenizer, info = load_tokenizer(
        LoadOptions(model=str(files.quantizer), whisper=str(files.whisper))
    )
    assert tokenizer.geometry.tokens_per_window == 1500 // downsample
    assert info.token_rate == 50 // downsample
    full = tokenizer.quantize([torch.from_numpy(speech_30s)])[0]
    assert len(full) == 1500 // downsample
    # Few tokens per clip at large downsample: ask for fewer distinct ids there.
    distinct = 10 if downsample < 50 else 5
    assert_parity(files, clips_of(speech_30s, LENGTHS, offset=99 * downsample), distinct)


def test_whisperspeech_file_without_downsample_gets_the_references_default_1(
    tiny_model_files: ModelFiles, speech_30s: np.ndarray, tmp_path: Path
) -> None:
    """RQBottleneckTransformer(downsample=1) is what the reference builds for such a file."""
    files = tiny_whisperspeech(tiny_model_files, tmp_path, 1, omit=("downsample",))
    spec = torch.load(files.quantizer, weights_only=True)
    assert "downsample" not in spec["config"]
    tokenizer, info = load_tokenizer(
        LoadOptions(model=str(files.quantizer), whisper=str(files.whisper))
    )
    assert tokenizer.dims.downsample == 1 and info.token_rate == 50
    # 50 tokens per second, not the 25 that slicing for downsample 2 used to give.
    assert [len(t) for t in tokenizer.quantize(clips_of(speech_30s, (1.0, 30.0)))] == [50, 1500]
    assert_parity(files, clips_of(speech_30s, LENGTHS, offset=4321))


@pytest.mark.parametrize("downsample", [3, 4, 7, 0])
def test_unsupported_downsample_is_refused_at_load(
    tiny_model_files: ModelFiles, tmp_path: Path, downsample: int
) -> None:
    files = tiny_whisperspeech(tiny_model_files, tmp_path, downsample)
    with pytest.raises(ModelLoadError, match=rf"config\['downsample'\] = {downsample}: "):
        load_tokenizer(LoadOptions(model=str(files.quantizer), whisper=str(files.whisper)))


def test_ichigo_format_cannot_record_another_downsample(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not record downsample"):
        write_random_checkpoint(tmp_path / "q.pth", dims_for(384, downsample=1))


def test_token_counts_at_the_edges(tiny_model_files: ModelFiles, speech_30s: np.ndarray) -> None:
    tokenizer = load(tiny_model_files)
    sizes = [0, 1, 639, 640, 641, 1599, 1600, WINDOW_SAMPLES - 1, WINDOW_SAMPLES]
    clips = [torch.from_numpy(speech_30s[:n].copy()) for n in sizes]
    out = tokenizer.quantize(clips)
    assert [len(t) for t in out] == [0, 0, 0, 1, 1, 2, 2, 749, 750]
    assert all(t.dtype == torch.long for t in out)
    with pytest.raises(ValueError, match="at most 480000 samples"):
        tokenizer.quantize([torch.zeros(WINDOW_SAMPLES + 1)])


def test_dequantize_matches_reference(
    merged_model_files: ModelFiles, speech_30s: np.ndarray
) -> None:
    ours = load(merged_model_files)
    reference = reference_model(merged_model_files.quantizer, merged_model_files.whisper)
    token_lists = [ours.quantize([clip])[0] for clip in clips_of(speech_30s, (0.5, 9.0, 30.0))]
    batched = ours.dequantize(token_lists)
    assert batched.shape == (3, 1500, 1024)
    for row, tokens in enumerate(token_lists):
        with torch.no_grad():
            want = reference.dequantize(tokens)[0]
        torch.testing.assert_close(batched[row], want, rtol=1e-4, atol=1e-4)


def test_dequantize_rejects_bad_tokens(tiny_model_files: ModelFiles) -> None:
    tokenizer = load(tiny_model_files)
    with pytest.raises(ValueError, match="token ids"):
        tokenizer.dequantize([[0, 2561]])
    with pytest.raises(ValueError, match="at most 750"):
        tokenizer.dequantize([[1] * 751])


def test_decode_text_runs_whispers_decoder_on_dequantized_tokens(
    tiny_model_files: ModelFiles, speech_30s: np.ndarray
) -> None:
    tokenizer, _ = load_tokenizer(
        LoadOptions(model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper)),
        text=True,
    )
    token_lists = [t.tolist() for t in tokenizer.quantize(clips_of(speech_30s, (2.0, 5.0)))]
    texts = tokenizer.decode_text(token_lists, TextOptions(language="en"))
    # The same text openai-whisper's own decode gives on the reference's dequantized embeddings.
    reference = reference_model(tiny_model_files.quantizer, tiny_model_files.whisper)
    options = whisper.DecodingOptions(language="en", fp16=False)
    for tokens, text in zip(token_lists, texts, strict=True):
        with torch.no_grad():
            embeddings = reference.dequantize(torch.tensor(tokens))
        assert text == reference.whmodel[0].decode(embeddings, options)[0].text.strip()
    assert tokenizer.decode_text([]) == []


def test_text_needs_the_text_model(tiny_model_files: ModelFiles) -> None:
    with pytest.raises(RuntimeError, match="text=True"):
        load(tiny_model_files).decode_text([[1, 2, 3]])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_mostly_agrees(
    merged_model_files: ModelFiles, speech_30s: np.ndarray, dtype: str
) -> None:
    clips = clips_of(speech_30s, (4.0, 12.0))
    full = load(merged_model_files).quantize(clips)
    reduced = load(merged_model_files, dtype=dtype)
    assert reduced.encoder.conv1.weight.dtype == getattr(torch, dtype)
    assert reduced.head.codebook.dtype == torch.float32
    for a, b in zip(full, reduced.quantize(clips), strict=True):
        assert len(a) == len(b)
        assert (a == b).float().mean().item() > 0.9
