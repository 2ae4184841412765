"""The README's main job: `ichigo-stream demo` starts a real server and streams the sample."""

from __future__ import annotations

import re
import subprocess
import sys

from models import ModelFiles


def test_demo_streams_the_bundled_sample_through_a_real_server(
    tiny_model_files: ModelFiles, tmp_path
) -> None:
    log = tmp_path / "server.log"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ichigo_stream",
            "demo",
            "--model",
            str(tiny_model_files.quantizer),
            "--whisper",
            str(tiny_model_files.whisper),
            "--speed",
            "8",
            "--no-text",
            "--server-log",
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    lines = re.findall(r"^\[\s*([\d.]+) -\s*([\d.]+)\] #(\d+)\s+(\d+) tokens", proc.stdout, re.M)
    # The sample is three sentences with pauses: three segments, in order, each with tokens.
    assert [int(index) for _, _, index, _ in lines] == [0, 1, 2]
    assert all(int(n) > 0 for *_, n in lines)
    assert "<|sound_start|>" in proc.stdout  # each segment's LLM text follows it
    assert "done: 3 segment(s)" in proc.stdout
    assert '"event":"ready"' not in proc.stdout  # the server's ready line is not the demo's
    # The server's log went to its file, not between the demo's lines; the server it started
    # drained on SIGTERM and said so there.
    assert "draining" in log.read_text()
    assert "ichigo_stream.server INFO" not in proc.stderr
    assert str(log) in proc.stderr


def test_demo_reports_a_server_that_cannot_start(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ichigo_stream", "demo", "--model", str(tmp_path / "missing.pth")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr or "no such file" in proc.stderr
    assert "the server did not start" in proc.stderr
    assert "server| " in proc.stderr  # the tail of its log, marked as the server's
    assert "Traceback" not in proc.stderr
