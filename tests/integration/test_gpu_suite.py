"""benchmarks/gpu_suite.sh end to end, in its CPU smoke mode: the plumbing CI can check.

The same script, the same three benchmarks and the same report as on a GPU, at tiny sizes
(a width-384 one-layer random model, 2 files, 2 clips, 2 streaming sessions of 8 s):
what only a GPU can check (CUDA graphs, float16 speed, 1000 sessions) is not claimed here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from system_tools import require_tool

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_cpu_smoke_prints_the_whole_table(tmp_path: Path) -> None:
    require_tool("espeak-ng", why="the suite speaks its sentences with it")
    out = tmp_path / "out"
    result = subprocess.run(
        [
            *("bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--cpu-smoke"),
            *("--python", sys.executable, "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=850,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    table = (out / "table.md").read_text()
    assert table == result.stdout
    assert table.startswith("GPU suite, device cpu, ")
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:3]): line
        for line in table.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    tokenize = [line for (bench, _), line in rows.items() if bench == "offline tokenize"]
    assert len(tokenize) == 1 and re.search(r"\*\*\d+\.\dx\*\*", tokenize[0])
    assert "--compile buckets" in tokenize[0]
    agreement = {
        conf.split(" (")[0]: line
        for (bench, conf), line in rows.items()
        if bench == "token agreement with float32"
    }
    # Padded bucket shapes change no token: float32 bucketed == float32 plain, exactly.
    assert "**100.00 %**" in agreement["float32 --compile buckets"]
    assert re.search(r"\*\*\d+\.\d\d %\*\*", agreement["bfloat16 --compile buckets"])
    streaming = {conf: line for (bench, conf), line in rows.items() if bench == "streaming"}
    assert set(streaming) == {"2 sessions, partials off", "2 sessions, partials on"}
    for line in streaming.values():
        assert re.search(r"endpoint->segment p50/p95/p99 \d+/\d+/\d+ ms", line), line
        assert "lost 0" in line and "errored 0" in line
        assert re.search(r"capacity est\. (n/a|\d+ windows/s) vs served \d+\.\d windows/s", line)
    stream = json.loads((out / "stream.json").read_text())
    assert all(r["segments_received"] > 0 for r in stream["runs"])
    precision = json.loads((out / "precision.json").read_text())
    assert precision["clips"] == 2 and precision["tokens"] > 0
