"""The benchmark scripts: their inputs are the measured ones, and each runs end to end.

The scripts run as the docs quote them (`python benchmarks/X.py ...`, as subprocesses) on a
tiny random model for a few seconds; these tests check what the reports contain, not timings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from system_tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
# sha256 of each benchmark's sentences joined by "\n", computed from the two lists the scripts
# carried when the figures in docs/benchmarks.md were measured (bench_tokenize.py's 8
# sentences, bench_stream.py's 9). A change here changes those figures' inputs.
MEASURED_SHA256 = {
    "tokenize": "a3ba3301d085b699d21b4617b1a4647b4651be94b35b039a7de80c60d5946bd9",
    "stream": "dc04596ab3456a69a64d1a3895cc612a75727f7f89a9130a17926aa62382ae4b",
}


def _speech_module() -> ModuleType:
    # By file: benchmarks/ is a folder of scripts, not a package, and is not put on sys.path.
    spec = importlib.util.spec_from_file_location("bench_speech", BENCHMARKS / "speech.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(script: str, *args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random model as the docs make one: `ichigo-stream make-random-model`."""
    folder = tmp_path_factory.mktemp("bench-model")
    quantizer, whisper = folder / "q.pth", folder / "w.pt"
    subprocess.run(
        [
            *(sys.executable, "-m", "ichigo_stream", "make-random-model", quantizer),
            *("--whisper-out", whisper, "--width", "384", "--layers", "1"),
        ],
        check=True,
        capture_output=True,
    )
    return quantizer, whisper


@pytest.fixture
def espeak() -> None:
    require_tool("espeak-ng", why="the benchmarks speak their sentences with it")


# (Not named `benchmark`: pytest-benchmark, when installed, owns that fixture name.)
@pytest.mark.parametrize("which", sorted(MEASURED_SHA256))
def test_each_benchmark_speaks_the_sentences_it_was_measured_with(which: str) -> None:
    speech = _speech_module()
    texts = speech.texts(which)
    assert hashlib.sha256("\n".join(texts).encode()).hexdigest() == MEASURED_SHA256[which]
    assert speech.input_sha256(which) == MEASURED_SHA256[which]
    assert speech.VOICE == "en-us"  # the voice they were measured with, at espeak's default rate


def test_the_two_lists_share_their_common_sentences() -> None:
    speech = _speech_module()
    tokenize, stream = speech.texts("tokenize"), speech.texts("stream")
    assert tokenize[: len(speech.SENTENCES)] == stream[: len(speech.SENTENCES)] == speech.SENTENCES
    assert stream[len(speech.SENTENCES) :] == speech.SHORT_UTTERANCES


@pytest.mark.usefixtures("espeak")
def test_sentences_are_spoken_in_order_and_cached(tmp_path: Path) -> None:
    speech = _speech_module()
    files = speech.spoken("stream", tmp_path)
    assert len(files) == len(speech.texts("stream"))
    assert len(set(files)) == len(files)
    # "Yes." is the shortest utterance: its recording must be the smallest file.
    sizes = [f.stat().st_size for f in files]
    assert sizes.index(min(sizes)) == speech.texts("stream").index("Yes.")
    stamps = [f.stat().st_mtime_ns for f in files]
    assert speech.spoken("stream", tmp_path) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps  # not synthesized again


@pytest.mark.parametrize(
    ("script", "options"),
    [
        ("bench_tokenize.py", ["--random", "--files", "--repeats", "--segment", "--json"]),
        (
            "bench_stream.py",
            ["--url", "--sessions", "--sweep", "--procs", "--p95-bar-ms", "--protocol", "--text"],
        ),
    ],
)
def test_help(script: str, options: list[str]) -> None:
    result = _bench(script, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout


@pytest.mark.usefixtures("espeak")
@pytest.mark.timeout(300)
def test_bench_tokenize_reports_both_sides(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    quantizer, whisper = tiny_model
    out = tmp_path / "tokenize.json"
    result = _bench(
        "bench_tokenize.py",
        *("--model", quantizer, "--whisper", whisper, "--files", "2", "--repeats", "1"),
        *("--cache", tmp_path / "cache", "--json", out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reference loop (float32, batch 1)" in result.stdout
    assert "ichigo_stream (float32, batch 1)" in result.stdout
    assert "ratio ichigo_stream / reference: " in result.stdout
    assert "tokens identical to the reference: yes (segment none)" in result.stdout
    report = json.loads(out.read_text())
    assert report["files"] == 2
    assert report["audio_seconds"] > 6.0  # two files of 3-28 s
    for side in ("reference", "ours"):
        assert report[side]["speed"] > 0 and report[side]["wall"] > 0
    assert report["ratio"] == pytest.approx(report["ours"]["speed"] / report["reference"]["speed"])
    assert report["identical"] is True
    assert report["speech_sha256"] == MEASURED_SHA256["tokenize"]


@pytest.mark.usefixtures("espeak")
@pytest.mark.timeout(300)
def test_bench_stream_delivers_every_expected_segment(tmp_path: Path) -> None:
    # --random tiny: the script writes its own model with make-random-model into --cache.
    # --procs 2: each session in its own client process (the spawn path, one session each).
    out = tmp_path / "stream.json"
    result = _bench(
        "bench_stream.py",
        *("--random", "tiny", "--cache", tmp_path / "cache", "--sessions", "2", "--procs", "2"),
        *("--duration", "10", "--stagger", "0.5", "--p95-bar-ms", "100000", "--json", out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "== 2 sessions, partials off, 10 s of audio each" in result.stdout
    assert "bar endpoint->segment p95 < 100000 ms" in result.stdout
    assert "| sessions | partials | segments got/expected |" in result.stdout
    report = json.loads(out.read_text())
    setup, (run,) = report["setup"], report["runs"]
    assert setup["speech_sha256"] == MEASURED_SHA256["stream"]
    assert setup["url"].startswith("ws://127.0.0.1:") and setup["url"].endswith("/v1/stream")
    assert "serve" in setup["server_command"]
    assert run["sessions_n"] == 2 and run["partials"] is False
    assert run["segments_expected"] > 0
    assert run["segments_received"] == run["segments_expected"]
    assert run["segments_lost"] == run["segments_unexpected"] == 0
    assert run["sessions_with_errors"] == []
    assert run["client"]["procs"] == 2
    for key in ("endpoint_ms", "eos_ms", "decision_ms", "timeline_lag_ms", "done_ms"):
        assert set(run[key]) >= {"p50", "p95", "p99", "max", "n"}, key
    other = run["endpoint_ms_other"]["n"] if run["endpoint_ms_other"] else 0
    assert run["endpoint_ms"]["n"] + other == run["segments_received"]
    metrics = run["server"]["metrics"]
    assert metrics["segments"] == run["segments_received"]
    assert metrics["batches"] > 0 and metrics["model_jobs"] >= metrics["segments"]
    assert run["server"]["cpu"]["server_pct"] > 0  # sampled from the server's pid
    sessions = run["per_session"]
    assert [s["index"] for s in sessions] == [0, 1]
    for s in sessions:
        assert s["segments_received"] == s["segments_expected"] == len(s["segments"])
        assert s["errors"] == [] and s["close_code"] == 1000
        assert all(seg["reason"] is not None for seg in s["segments"])


@pytest.mark.usefixtures("espeak")
@pytest.mark.timeout(300)
def test_bench_stream_runs_the_same_load_on_v1_realtime(tmp_path: Path) -> None:
    out = tmp_path / "realtime.json"
    result = _bench(
        "bench_stream.py",
        *("--random", "tiny", "--cache", tmp_path / "cache", "--sessions", "1"),
        *("--duration", "8", "--stagger", "0", "--protocol", "realtime", "--json", out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "== 1 sessions on /v1/realtime, partials off, 8 s of audio each" in result.stdout
    assert "speech_stopped -> completed" in result.stdout
    (run,) = json.loads(out.read_text())["runs"]
    assert run["protocol"] == "realtime" and run["text"] is False
    # Checked against the offline VAD exactly as /v1/stream's segments are.
    assert run["segments_expected"] > 0
    assert run["segments_received"] == run["segments_expected"]
    assert run["segments_lost"] == run["segments_unexpected"] == 0
    assert run["sessions_with_errors"] == []
    assert run["completed_after_stop_ms"]["n"] == run["segments_received"]
    assert run["first_delta_ms"] is None  # no text asked for: no deltas
    (session,) = run["per_session"]
    assert session["close_code"] == 1000


def test_bench_stream_exits_2_when_the_server_cannot_start(tmp_path: Path) -> None:
    result = _bench(
        "bench_stream.py",
        *("--model", tmp_path / "missing.pth", "--whisper", tmp_path / "missing.pt"),
        *("--sessions", "1", "--cache", tmp_path / "cache"),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "bench_stream: setup failed:" in result.stderr
    assert "missing.pth" in result.stderr  # the server's own error, from its log
