"""ichigo_stream.pipeline with a stand-in tokenizer: ordering, batching, errors, threads, memory."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ichigo_stream import pipeline
from ichigo_stream.assets import sample_path
from ichigo_stream.audio import load_audio
from ichigo_stream.constants import SAMPLE_RATE, WINDOW_SAMPLES
from ichigo_stream.errors import SegmentationError
from ichigo_stream.geometry import TokenGeometry
from ichigo_stream.pipeline import FileResult, SegmentResult, tokenize_files
from ichigo_stream.segmentation import split

SAMPLE = sample_path()


class FakeTokenizer:
    """Tokens are a pure function of each clip's samples; records every call and its thread."""

    def __init__(self, text: bool = False) -> None:
        self.batches: list[int] = []
        self.threads: set[int] = set()
        self.has_text_model = text
        self.device = torch.device("cpu")
        self.geometry = TokenGeometry()

    def quantize(self, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self.batches.append(len(clips))
        self.threads.add(threading.get_ident())
        out = []
        step = self.geometry.samples_per_token
        for clip in clips:
            frames = clip[: self.geometry.n_tokens(len(clip)) * step].reshape(-1, step)
            out.append((frames.abs().sum(-1) * 1000).long() % 2561 + len(clip) % 7)
        return out

    def decode_text(self, tokens: Sequence[Sequence[int]], options: object) -> list[str]:
        self.threads.add(threading.get_ident())
        assert all(len(t) for t in tokens), "empty token lists are not sent to the decoder"
        return [f"{len(t)} tokens" for t in tokens]


def _wav(path: Path, seconds: float, seed: int) -> Path:
    noise = np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * SAMPLE_RATE))
    sf.write(path, noise.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Seven short noise files of different lengths (0.01 s to 65 s)."""
    root = tmp_path_factory.mktemp("pipeline")
    seconds = (1.0, 2.5, 0.01, 65.0, 3.3, 0.5, 31.0)
    return [_wav(root / f"f{i}.wav", s, seed=i) for i, s in enumerate(seconds)]


def _run(paths: Sequence[Path | str], tokenizer: FakeTokenizer, **kw: object) -> list[FileResult]:
    return list(tokenize_files(paths, tokenizer, mode=kw.pop("mode", "fixed"), **kw))  # type: ignore[arg-type]


def test_tokens_match_per_clip_quantize_in_input_order(files: list[Path]) -> None:
    fake = FakeTokenizer()
    results = _run(files, fake, batch_size=4)
    assert [r.file for r in results] == [str(p) for p in files]
    for path, result in zip(files, results, strict=True):
        audio = load_audio(path)
        assert result.error is None and result.n_samples == len(audio)
        expected = split(audio, "fixed")
        assert [(s.start, s.end) for s in result.segments] == [(s.start, s.end) for s in expected]
        for seg in result.segments:
            clip = torch.from_numpy(audio[seg.start : seg.end])
            assert seg.tokens == FakeTokenizer().quantize([clip])[0].tolist()
            assert seg.text is None


def test_batches_span_files_and_are_full(files: list[Path]) -> None:
    fake = FakeTokenizer()
    results = _run(files, fake, batch_size=4)
    n_segments = sum(len(r.segments) for r in results)
    assert n_segments == 1 + 1 + 1 + 3 + 1 + 1 + 2
    # Every batch but the last is full, so batches must hold segments of several files.
    assert fake.batches == [4, 4, 2]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_results_do_not_depend_on_batch_size(files: list[Path], batch_size: int) -> None:
    assert _run(files, FakeTokenizer(), batch_size=batch_size) == _run(
        files, FakeTokenizer(), batch_size=8
    )


def test_bad_files_do_not_stop_the_others(files: list[Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n")
    paths = [empty, files[0], tmp_path / "missing.wav", text, files[1]]
    results = _run(paths, FakeTokenizer(), batch_size=2)
    assert [r.file for r in results] == [str(p) for p in paths]
    assert [r.ok for r in results] == [False, True, False, False, True]
    for r in results:
        if not r.ok:
            assert r.segments == [] and r.n_samples == 0
            assert r.file in (r.error or "")
    assert "empty" in (results[0].error or "") and "no such file" in (results[2].error or "")


def test_segment_none_over_30s_is_a_file_error(files: list[Path]) -> None:
    results = _run([files[3], files[0]], FakeTokenizer(), mode="none")
    assert results[0].error is not None and "over one 30 s window" in results[0].error
    assert results[0].file in results[0].error
    assert results[1].ok and [(s.start, s.end) for s in results[1].segments] == [(0, SAMPLE_RATE)]


def test_fixed_windows_are_30s(files: list[Path]) -> None:
    [result] = _run([files[3]], FakeTokenizer())
    bounds = [(s.start, s.end) for s in result.segments]
    assert bounds == [
        (0, WINDOW_SAMPLES),
        (WINDOW_SAMPLES, 2 * WINDOW_SAMPLES),
        (960_000, 1_040_000),
    ]


def test_vad_mode_and_silent_file(tmp_path: Path) -> None:
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    fake = FakeTokenizer()
    speech, quiet = _run([SAMPLE, silent], fake, mode="vad")
    audio = load_audio(SAMPLE)
    assert [(s.start, s.end) for s in speech.segments] == [
        (s.start, s.end) for s in split(audio, "vad")
    ]
    assert speech.segments and quiet.ok and quiet.segments == [] and quiet.n_samples == SAMPLE_RATE


def test_model_runs_only_in_the_callers_thread(files: list[Path]) -> None:
    fake = FakeTokenizer(text=True)
    decode_threads: set[int] = set()
    real_load = pipeline.load_audio

    def spy(path: str) -> np.ndarray:
        decode_threads.add(threading.get_ident())
        return real_load(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "load_audio", spy)
        _run(files, fake, batch_size=2, text=True, workers=2)
    assert fake.threads == {threading.get_ident()}
    assert threading.get_ident() not in decode_threads


def test_prefetch_window_bounds_decoded_files(tmp_path: Path) -> None:
    paths = [_wav(tmp_path / f"s{i}.wav", 0.2, seed=i) for i in range(20)]
    loaded: list[str] = []
    real_load = pipeline.load_audio

    def counting(path: str) -> np.ndarray:
        loaded.append(path)
        return real_load(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "load_audio", counting)
        results = tokenize_files(paths, FakeTokenizer(), mode="fixed", batch_size=2, prefetch=3)
        first = next(results)
        # Submitted so far: the prefetch window refilled once per file taken into the batch.
        assert first.file == str(paths[0]) and len(loaded) <= 2 + 3
        results.close()  # stops early without waiting for the rest
    assert len(loaded) < len(paths)


def test_text_and_empty_segments(files: list[Path]) -> None:
    fake = FakeTokenizer(text=True)
    results = _run(files, fake, text=True, batch_size=3)
    tiny = results[2].segments  # 0.01 s: under one token
    assert tiny == [SegmentResult(0, 160, [], "")]
    texts = [s.text for r in results for s in r.segments if s.tokens]
    assert texts and all(
        t == f"{n} tokens"
        for t, n in zip(
            texts, [len(s.tokens) for r in results for s in r.segments if s.tokens], strict=True
        )
    )


def test_progress_and_keep_audio(files: list[Path]) -> None:
    calls: list[int] = []
    results = _run(files[:3], FakeTokenizer(), progress=calls.append, keep_audio=True)
    assert calls == [1, 1, 1]
    assert all(r.audio is not None and len(r.audio) == r.n_samples for r in results)
    assert all(r.audio is None for r in _run(files[:3], FakeTokenizer()))


def test_argument_errors_raise_at_the_call(files: list[Path]) -> None:
    fake = FakeTokenizer()
    with pytest.raises(SegmentationError):
        tokenize_files(files, fake, mode="words")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        tokenize_files(files, fake, batch_size=0)
    with pytest.raises(ValueError):
        tokenize_files(files, fake, prefetch=0)
    with pytest.raises(ValueError, match="text model"):
        tokenize_files(files, fake, text=True)  # type: ignore[arg-type]


def test_paths_are_read_lazily(files: list[Path]) -> None:
    """A generator of paths (e.g. a huge directory walk) is consumed only a window ahead."""
    taken: list[Path] = []

    def walk() -> Iterator[Path]:
        for path in files:
            taken.append(path)
            yield path

    results = tokenize_files(walk(), FakeTokenizer(), mode="fixed", batch_size=1, prefetch=2)
    assert next(results).file == str(files[0]) and len(taken) <= 4
    assert [r.file for r in results] == [str(p) for p in files[1:]]


def test_default_batch_size_follows_the_device(files: list[Path]) -> None:
    tokenizer = FakeTokenizer()
    list(tokenize_files(files, tokenizer))
    assert set(tokenizer.batches) == {1}  # CPU: one clip per encoder call
    assert pipeline.default_batch_size("cuda") == 32


def test_the_shared_model_steps() -> None:
    """clip_tokens and token_texts, what the offline pipeline and the server's worker both
    run: one encoder batch, one decoder batch, and no decoder call for a token-less clip."""
    fake = FakeTokenizer(text=True)
    rng = np.random.default_rng(3)
    clips = [rng.uniform(-1, 1, n).astype(np.float32) for n in (16_000, 100, 8_000)]
    token_lists = pipeline.clip_tokens(fake, clips)  # type: ignore[arg-type]
    assert fake.batches == [3] and [len(t) for t in token_lists] == [25, 0, 12]
    assert all(isinstance(t, list) and all(isinstance(x, int) for x in t) for t in token_lists)
    texts = pipeline.token_texts(fake, token_lists, object())  # type: ignore[arg-type]
    assert texts == ["25 tokens", "", "12 tokens"]
    fake.decode_text = None  # type: ignore[assignment,method-assign]  # must not be called
    assert pipeline.token_texts(fake, [[], []], object()) == ["", ""]  # type: ignore[arg-type]
