"""benchmarks/gpu_suite_report.py: the GPU suite's table from its JSON files (torch-free)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPORT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite_report.py"


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_suite_report", REPORT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(capacity: float | None, gpu: bool) -> dict:
    metrics = {"model_jobs": 300}
    if capacity is not None:
        metrics["capacity"] = capacity
    return {
        "sessions_n": 100,
        "partials": False,
        "wall_s": 30.0,
        "segments_lost": 0,
        "segments_unexpected": 0,
        "sessions_lagging": [3, 7],
        "sessions_with_errors": [],
        "endpoint_ms": {"p50": 12.0, "p95": 40.4, "p99": 81.0},
        "server": {"metrics": metrics, "gpu": {"util_pct": {"p50": 55.0}} if gpu else None},
    }


def test_capacity_and_gpu_when_present_na_when_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "stream.json").write_text(
        json.dumps({"runs": [_run(410.0, True), _run(None, False)]})
    )
    status = _report().main([str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 1  # tokenize.json and precision.json are missing
    assert "| tokenize | n/a | n/a (tokenize.json not written) |" in out
    lines = [line for line in out.splitlines() if line.startswith("| streaming")]
    assert "endpoint->segment p50/p95/p99 12/40/81 ms, lagging 2" in lines[0]
    assert "GPU util p50 55 %" in lines[0]
    assert "capacity est. 410 windows/s vs served 10.0 windows/s" in lines[0]
    assert "GPU util n/a" in lines[1] and "capacity est. n/a vs served 10.0" in lines[1]


def test_a_lost_segment_fails_the_suite(tmp_path: Path) -> None:
    run = _run(None, False) | {"segments_lost": 1}
    (tmp_path / "stream.json").write_text(json.dumps({"runs": [run]}))
    for name, data in (
        (
            "tokenize.json",
            {
                "device": "X",
                "ours": {"speed": 4.0},
                "reference": {"speed": 1.0},
                "ratio": 4.0,
                "args": {"dtype": "float16", "batch_size": "32"},
            },
        ),
        ("precision.json", {"rows": [], "model": "m", "clips": 1, "tokens": 1}),
    ):
        (tmp_path / name).write_text(json.dumps(data))
    assert _report().main([str(tmp_path)]) == 1
    run["segments_lost"] = 0
    (tmp_path / "stream.json").write_text(json.dumps({"runs": [run]}))
    assert _report().main([str(tmp_path)]) == 0
