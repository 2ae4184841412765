"""benchmarks/bench_text.py's smoke run: both sides decode the same requests, equal text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from models import ModelFiles

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_bench_text_reports_the_ratio(tiny_model_files: ModelFiles, tmp_path: Path) -> None:
    out = tmp_path / "text.json"
    result = subprocess.run(
        [
            *(sys.executable, str(ROOT / "benchmarks" / "bench_text.py")),
            *("--model", str(tiny_model_files.quantizer)),
            *("--whisper", str(tiny_model_files.whisper)),
            *("--batch", "1", "3", "--sample-len", "4", "--repeats", "1", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batched items/s" in result.stdout
    report = json.loads(out.read_text())
    assert [row["batch"] for row in report["rows"]] == [1, 3]
    for row in report["rows"]:
        assert row["equal"] is True
        assert row["ratio"] == pytest.approx(row["alone_s"] / row["batched_s"], rel=1e-2)
