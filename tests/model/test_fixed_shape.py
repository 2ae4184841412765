"""Fixed-shape encoder batches (--compile): padding to buckets never changes a token.

CUDA graphs need a GPU, and torch.compile (inductor) takes ~45 s to compile even the tiny
model on a 2-core CPU: benchmarks/gpu_suite.sh checks both (tokens equal to the plain path's).
Here the bucketed path runs eager on CPU at every batch size.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from models import ModelFiles

from ichigo_stream.assets import sample_path
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.errors import ModelLoadError
from ichigo_stream.fixed_shape import bucket_for, split_rows
from ichigo_stream.loading import LoadOptions, load_tokenizer
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.text_decoding import TextRequest, decode_texts

BUCKETS = (1, 2, 4, 8)  # the real ones stop at 32; 8 keeps the test fast with the same logic


@pytest.fixture(scope="module")
def tokenizer(tiny_model_files: ModelFiles) -> IchigoTokenizer:
    options = LoadOptions(
        model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper)
    )
    return load_tokenizer(options, text=True)[0]


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    """Ten different clips of real speech, 0.3 to 12 s long."""
    audio, rate = sf.read(sample_path(), dtype="float32")
    assert rate == SAMPLE_RATE
    audio = np.tile(audio, 6)
    lengths = np.linspace(0.3, 12.0, 10)
    return [
        torch.from_numpy(np.roll(audio, -7919 * i)[: round(s * SAMPLE_RATE)].copy())
        for i, s in enumerate(lengths)
    ]


def test_bucket_arithmetic() -> None:
    assert [bucket_for(n, BUCKETS) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError):
        bucket_for(9, BUCKETS)
    with pytest.raises(ValueError):
        bucket_for(0, BUCKETS)
    assert split_rows(19, 8) == [range(0, 8), range(8, 16), range(16, 19)]
    assert split_rows(8, 8) == [range(0, 8)]


def test_bucketed_tokens_equal_plain_at_every_batch_size(
    tokenizer: IchigoTokenizer, clips: list[torch.Tensor]
) -> None:
    # Each clip alone, plain path: what every batch must reproduce.
    tokenizer.fixed_shapes = None
    alone = [tokenizer.quantize([clip])[0].tolist() for clip in clips]
    assert len({tuple(t) for t in alone}) == len(clips)  # the clips' tokens really differ
    try:
        tokenizer.use_fixed_shapes("buckets", BUCKETS, warm_up=False)
        runner = tokenizer.fixed_shapes
        assert runner is not None
        # 1..10 clips: every bucket, partial buckets (pad rows), and 9-10 (split 8 + rest).
        for n in range(1, len(clips) + 1):
            got = [t.tolist() for t in tokenizer.quantize(clips[:n])]
            assert got == alone[:n], f"batch of {n}"
        assert runner.shapes_run == set(BUCKETS)  # the model only ever saw bucket shapes
    finally:
        tokenizer.fixed_shapes = None


def test_pad_rows_do_not_leak(tokenizer: IchigoTokenizer, clips: list[torch.Tensor]) -> None:
    """A pad row is a zero window: its tokens are dropped, never returned as a clip's."""
    tokenizer.use_fixed_shapes("buckets", BUCKETS, warm_up=False)
    try:
        out = tokenizer.quantize(clips[:3])  # padded to 4
        assert len(out) == 3
        assert [len(t) for t in out] == [tokenizer.geometry.n_tokens(len(c)) for c in clips[:3]]
    finally:
        tokenizer.fixed_shapes = None


def test_text_decoding_unaffected(tokenizer: IchigoTokenizer, clips: list[torch.Tensor]) -> None:
    """Text decoding reads tokens, not the encoder: same text with fixed shapes on."""

    def texts(tokens: list[list[int]]) -> list[str]:
        # 8 text tokens: the random decoder's text means nothing, its equality does.
        requests = [TextRequest(t, "en") for t in tokens]
        return [d.text for d in decode_texts(tokenizer, requests, sample_len=8)]

    tokens = [t.tolist() for t in tokenizer.quantize(clips[:3])]
    plain = texts(tokens)
    tokenizer.use_fixed_shapes("buckets", BUCKETS, warm_up=False)
    try:
        again = [t.tolist() for t in tokenizer.quantize(clips[:3])]
        assert again == tokens
        assert texts(again) == plain
    finally:
        tokenizer.fixed_shapes = None


def test_load_option_warms_every_bucket(tiny_model_files: ModelFiles) -> None:
    options = LoadOptions(
        model=str(tiny_model_files.quantizer),
        whisper=str(tiny_model_files.whisper),
        compile="buckets",
    )
    tokenizer, _ = load_tokenizer(options)
    assert tokenizer.fixed_shapes is not None
    assert tokenizer.fixed_shapes.shapes_run == {1, 2, 4, 8, 16, 32}  # all run at load


def test_graphs_need_cuda(tiny_model_files: ModelFiles) -> None:
    with pytest.raises(ModelLoadError, match="--compile 'graphs'"):
        LoadOptions(model=str(tiny_model_files.quantizer), compile="graphs", device="cpu")
    with pytest.raises(ModelLoadError, match="--compile 'fast'"):
        LoadOptions(model=str(tiny_model_files.quantizer), compile="fast")
