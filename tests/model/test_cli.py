"""The ichigo-stream command, run as a subprocess on real files made here (espeak-ng, sox, ffmpeg).

Model runs are the expensive part (about 0.5 s per segment with the tiny model on 2 cores), so
each tokenize run is a module-scoped fixture that several tests read.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from models import ModelFiles
from system_tools import require_tools

from ichigo_stream import cli, cli_offline
from ichigo_stream.audio import load_audio
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.errors import AudioError
from ichigo_stream.loading import DTYPES, load_tokenizer
from ichigo_stream.model import IchigoTokenizer
from ichigo_stream.options import LoadOptions
from ichigo_stream.segmentation import split
from ichigo_stream.tokens import parse_ichigo

TOOLS = ("espeak-ng", "sox", "ffmpeg", "ffprobe")
ROOT = Path(__file__).resolve().parents[2]
TEXT = "The quick brown fox jumps over the lazy dog"
GOOD = ("speech16.wav", "stereo44.wav", "speech8k.flac", "speech48.ogg", "speech.mp3")
BAD = ("empty.wav", "notes.wav", "truncated.wav", "missing.wav")
# Good and bad files interleaved, so batches and errors mix in one run.
ORDER = (GOOD[0], BAD[0], GOOD[1], BAD[1], GOOD[2], BAD[2], GOOD[3], BAD[3], GOOD[4])
MODEL_KEYS = {"name", "sha256", "codebook_size", "mask_token", "token_rate", "whisper"}
ERROR_PREFIX = "ichigo-stream: error: "
TIMED = re.compile(r"^\[(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d)\.(\d{3})\] ")


def run_cli(
    *args: object, env: dict[str, str] | None = None, module: str = "ichigo_stream"
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ICHIGO_")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=300,
        check=False,
    )


def _sh(*cmd: object) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def _lines(text: str) -> list[str]:
    return text.splitlines()


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools(*TOOLS, why="to make the test audio")
    d = tmp_path_factory.mktemp("cli-audio")
    raw = d / "espeak.wav"  # 22.05 kHz mono
    _sh("espeak-ng", "-w", raw, TEXT)
    # speech, 1 s silence, speech, 1 s silence: two VAD segments
    _sh(
        "sox",
        raw,
        "-r",
        "16000",
        "-b",
        "16",
        "-c",
        "1",
        d / GOOD[0],
        "pad",
        "0",
        "1",
        "repeat",
        "1",
    )
    _sh("sox", raw, "-r", "44100", "-c", "2", d / GOOD[1])
    _sh("sox", raw, "-r", "8000", d / GOOD[2])
    _sh("sox", raw, "-r", "48000", d / GOOD[3])
    _sh("ffmpeg", "-nostdin", "-v", "error", "-i", raw, "-ar", "44100", d / GOOD[4])
    _sh(
        "sox",
        "-n",
        "-r",
        "16000",
        "-b",
        "16",
        "-c",
        "1",
        d / "long.wav",
        "synth",
        "70",
        "pinknoise",
        "vol",
        "0.1",
    )
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.wav").write_text("this is not audio\n")
    (d / "truncated.wav").write_bytes((d / GOOD[0]).read_bytes()[:30])  # cut inside the header
    return d


@pytest.fixture(scope="module")
def model_args(tiny_model_files: ModelFiles) -> list[str]:
    return ["--model", str(tiny_model_files.quantizer), "--whisper", str(tiny_model_files.whisper)]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_files: ModelFiles) -> IchigoTokenizer:
    options = LoadOptions(
        model=str(tiny_model_files.quantizer), whisper=str(tiny_model_files.whisper)
    )
    return load_tokenizer(options)[0]


@pytest.fixture(scope="module")
def paths(audio_dir: Path) -> list[str]:
    return [str(audio_dir / name) for name in ORDER]


@pytest.fixture(scope="module")
def run_batch8(
    audio_dir: Path, paths: list[str], model_args: list[str]
) -> tuple[subprocess.CompletedProcess[str], str]:
    """All files, batch size 8, to a file with -o: (process, what it wrote)."""
    out = audio_dir / "batch8.jsonl"
    proc = run_cli("tokenize", *paths, *model_args, "--batch-size", "8", "-o", out)
    return proc, out.read_text()


@pytest.fixture(scope="module")
def records(run_batch8: tuple[subprocess.CompletedProcess[str], str]) -> dict[str, dict]:
    return {Path(r["file"]).name: r for r in map(json.loads, _lines(run_batch8[1]))}


@pytest.fixture(scope="module")
def run_batch1(
    audio_dir: Path, paths: list[str], model_args: list[str]
) -> subprocess.CompletedProcess[str]:
    """All files, batch size 1, to stdout, with --plot."""
    return run_cli(
        "tokenize", *paths, *model_args, "--batch-size", "1", "--plot", audio_dir / "plot.png"
    )


def _samples(seconds: float) -> int:
    samples = round(seconds * SAMPLE_RATE)
    assert samples / SAMPLE_RATE == seconds, f"{seconds} s is not a whole number of samples"
    return samples


# -- tokenize -------------------------------------------------------------------------------------


def test_jsonl_schema_with_per_file_errors(run_batch8: tuple, paths: list[str]) -> None:
    proc, written = run_batch8
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""  # -o took the output
    records = [json.loads(line) for line in _lines(written)]
    assert [r["file"] for r in records] == paths
    for name, record in zip(ORDER, records, strict=True):
        if name in BAD:
            assert set(record) == {"file", "error"} and record["file"] in record["error"]
            continue
        assert set(record) == {"file", "sample_rate", "segments", "model"}, record.get("error")
        assert record["sample_rate"] == SAMPLE_RATE
        assert set(record["model"]) == MODEL_KEYS and record["model"]["codebook_size"] == 2561
        assert record["model"]["token_rate"] == 25 and record["model"]["mask_token"] == 2048
        assert record["segments"], name
        for seg in record["segments"]:
            assert set(seg) == {"start", "end", "tokens"}
            assert 0 <= _samples(seg["start"]) < _samples(seg["end"])
            assert all(isinstance(t, int) and 0 <= t < 2561 for t in seg["tokens"])
    assert len(records[0]["segments"]) == 2  # speech, 1 s silence, speech
    stderr = _lines(proc.stderr)
    assert len(stderr) == len(BAD) and "Traceback" not in proc.stderr
    for name, line in zip(BAD, stderr, strict=True):
        assert line.startswith(ERROR_PREFIX) and name in line
    assert "no such file" in stderr[3] and "empty" in stderr[0]


def test_tokens_equal_in_process_quantize(
    records: dict[str, dict], audio_dir: Path, tokenizer: IchigoTokenizer
) -> None:
    """The CLI adds no drift: same segments as split(), same tokens as quantize() per segment."""
    for name in GOOD:
        audio = load_audio(audio_dir / name)
        segments = records[name]["segments"]
        bounds = [(_samples(s["start"]), _samples(s["end"])) for s in segments]
        assert bounds == [(s.start, s.end) for s in split(audio, "vad")]
        for (start, end), seg in zip(bounds, segments, strict=True):
            [tokens] = tokenizer.quantize([torch.from_numpy(audio[start:end])])
            assert seg["tokens"] == tokens.tolist(), name


def test_batch_size_does_not_change_output(
    run_batch8: tuple, run_batch1: subprocess.CompletedProcess[str]
) -> None:
    assert run_batch1.returncode == 1
    assert run_batch1.stdout == run_batch8[1]
    assert run_batch1.stderr == run_batch8[0].stderr


def test_plot_per_file(run_batch1: subprocess.CompletedProcess[str], audio_dir: Path) -> None:
    for index, name in enumerate(ORDER):
        png = audio_dir / f"plot-{index}.png"
        if name in BAD:
            assert not png.exists()
            continue
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (1200, 500) and len(data) > 20_000
    assert not (audio_dir / "plot.png").exists()


@pytest.mark.parametrize("fmt", ["ichigo", "ichigo-rle"])
def test_llm_text_formats_parse_back(
    fmt: str, audio_dir: Path, records: dict[str, dict], tiny_model_files: ModelFiles
) -> None:
    names = (GOOD[0], "empty.wav", GOOD[4])
    env = {
        "ICHIGO_MODEL": str(tiny_model_files.quantizer),
        "ICHIGO_WHISPER": str(tiny_model_files.whisper),
    }
    proc = run_cli("tokenize", *(audio_dir / n for n in names), "--format", fmt, env=env)
    assert proc.returncode == 1 and _lines(proc.stderr)[0].startswith(ERROR_PREFIX)
    lines = proc.stdout.split("\n")
    assert len(lines) == len(names) + 1 and lines[-1] == "" and lines[1] == ""
    for name, line in zip(names, lines, strict=False):
        if name in BAD:
            continue
        blocks = line.split(" ")
        assert [parse_ichigo(b) for b in blocks] == [s["tokens"] for s in records[name]["segments"]]
        assert ("<|duration_" in line) == (fmt == "ichigo-rle")


def test_segment_fixed_gives_30s_windows(audio_dir: Path, model_args: list[str]) -> None:
    proc = run_cli("tokenize", audio_dir / "long.wav", *model_args, "--segment", "fixed")
    assert proc.returncode == 0, proc.stderr
    [record] = map(json.loads, _lines(proc.stdout))
    assert [(s["start"], s["end"]) for s in record["segments"]] == [(0, 30), (30, 60), (60, 70)]
    assert [len(s["tokens"]) for s in record["segments"]] == [750, 750, 250]


def test_segment_none_over_30s_is_a_file_error(audio_dir: Path, model_args: list[str]) -> None:
    proc = run_cli(
        "tokenize", audio_dir / "long.wav", audio_dir / GOOD[2], *model_args, "--segment", "none"
    )
    assert proc.returncode == 1
    long, flac = map(json.loads, _lines(proc.stdout))
    assert "30 s" in long["error"] and "long.wav" in long["error"]
    assert "segments" not in long
    n = len(load_audio(audio_dir / GOOD[2]))
    assert [(_samples(s["start"]), _samples(s["end"])) for s in flac["segments"]] == [(0, n)]
    [line] = _lines(proc.stderr)
    assert line.startswith(ERROR_PREFIX) and "long.wav" in line


# -- transcribe ---------------------------------------------------------------------------------


def test_transcribe_one_text_per_segment(
    audio_dir: Path, model_args: list[str], records: dict[str, dict]
) -> None:
    path = audio_dir / GOOD[1]
    proc = run_cli("transcribe", path, *model_args, "--language", "en")
    assert proc.returncode == 0, proc.stderr
    header, *lines = _lines(proc.stdout)
    assert header == f"# {path}"
    segments = records[GOOD[1]]["segments"]
    assert len(lines) == len(segments)
    for line, seg in zip(lines, segments, strict=True):
        m = TIMED.match(line)
        assert m, line
        start_ms = (int(m[1]) * 60 + int(m[2])) * 1000 + int(m[3])
        end_ms = (int(m[4]) * 60 + int(m[5])) * 1000 + int(m[6])
        # Whole milliseconds, rounded down; the text itself is gibberish with random weights.
        assert start_ms == _samples(seg["start"]) * 1000 // SAMPLE_RATE
        assert end_ms == _samples(seg["end"]) * 1000 // SAMPLE_RATE


# -- errors ---------------------------------------------------------------------------------------


def test_missing_model_is_one_clear_line(audio_dir: Path, tiny_model_files: ModelFiles) -> None:
    missing = audio_dir / "no-such-model.pth"
    # ICHIGO_MODEL names a good model: the flag must win over it.
    env = {"ICHIGO_MODEL": str(tiny_model_files.quantizer)}
    proc = run_cli(
        "tokenize",
        audio_dir / GOOD[0],
        "--model",
        missing,
        "--whisper",
        tiny_model_files.whisper,
        env=env,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = _lines(proc.stderr)
    assert line.startswith(ERROR_PREFIX) and str(missing) in line and "Traceback" not in line


def test_bad_environment_and_flags(audio_dir: Path, model_args: list[str]) -> None:
    # A bad variable is a usage error of the command, naming the variable (nothing loads).
    proc = run_cli("tokenize", audio_dir / GOOD[0], *model_args, env={"ICHIGO_DEVICE": "gpu"})
    problem = "ichigo-stream tokenize: error: argument --device: expected cpu, cuda or cuda:N"
    from_env = f"{problem}, got 'gpu' (from the environment variable ICHIGO_DEVICE)"
    assert proc.returncode == 2 and proc.stdout == "" and _lines(proc.stderr)[-1] == from_env
    proc = run_cli("tokenize", audio_dir / GOOD[0], *model_args, "--device", "gpu")
    assert proc.returncode == 2 and _lines(proc.stderr)[-1] == f"{problem}, got 'gpu'"
    proc = run_cli("tokenize", audio_dir / GOOD[0], *model_args, "--batch-size", "0")
    assert proc.returncode == 2 and "--batch-size" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(
        "tokenize", audio_dir / GOOD[0], *model_args, "-o", audio_dir / "nodir" / "x.jsonl"
    )
    assert proc.returncode == 2 and _lines(proc.stderr)[0].startswith(ERROR_PREFIX)


def test_interrupt_and_library_errors_in_process(
    monkeypatch: pytest.MonkeyPatch, audio_dir: Path
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_offline, "load_model", interrupted)
    assert cli.main(["tokenize", str(audio_dir / GOOD[0]), "--model", "x.pth"]) == 130

    def failing(*args: object, **kwargs: object) -> None:
        raise AudioError("bad\nthing")

    monkeypatch.setattr(cli_offline, "load_model", failing)
    assert cli.main(["tokenize", str(audio_dir / GOOD[0]), "--model", "x.pth"]) == 2


def test_the_cli_offers_the_loaders_dtypes() -> None:
    # The rest of the help test is torch-free: unit/test_cli_help.py.
    assert tuple(DTYPES) == cli.DTYPE_NAMES


# -- make-random-model --------------------------------------------------------------------------


def test_make_random_model_loads_and_tokenizes(tmp_path: Path, audio_dir: Path) -> None:
    quantizer, whisper = tmp_path / "vq.model", tmp_path / "w.pt"
    proc = run_cli(
        "make-random-model", quantizer, "--whisper-out", whisper, "--width", "384", "--layers", "1",
        "--codes", "513", "--format", "whisperspeech", "--seed", "7",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"--model {quantizer} --whisper {whisper}" in proc.stdout
    # A WhisperSpeech file names its Whisper, so --whisper is not needed.
    tok, info = load_tokenizer(LoadOptions(model=str(quantizer)))
    assert (info.codebook_size, info.mask_token) == (513, 512)
    [tokens] = tok.quantize([torch.from_numpy(load_audio(audio_dir / GOOD[1]))])
    assert len(tokens) > 25 and int(tokens.max()) < 513

    proc = run_cli(
        "make-random-model", quantizer, "--whisper-out", whisper, "--full", "tiny", "--width", "512"
    )
    assert proc.returncode == 2 and "--full tiny" in proc.stderr
    proc = run_cli(
        "make-random-model",
        tmp_path / "full.pth",
        "--whisper-out",
        tmp_path / "tiny.pt",
        "--full",
        "tiny",
    )
    assert proc.returncode == 0, proc.stderr
    dims = torch.load(tmp_path / "tiny.pt", weights_only=True)["dims"]
    assert (dims["n_audio_state"], dims["n_audio_layer"], dims["n_text_layer"]) == (384, 4, 4)
    assert load_tokenizer(
        LoadOptions(model=str(tmp_path / "full.pth"), whisper=str(tmp_path / "tiny.pt"))
    )
