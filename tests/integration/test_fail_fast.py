"""Fail before the slow part: serve binds its port and reads its TLS files before loading the
model; tokenize/transcribe with no readable input exit before loading one. And what a ready
server tells a person (the page's URL), transcribe's JSON lines."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from models import ModelFiles

from ichigo_stream.assets import sample_path
from ichigo_stream.server_process import ServerProcess

MISSING_MODEL = "/nonexistent/model.pth"  # loading it would fail with exit 2 and its name


def cli(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ichigo_stream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc, time.monotonic() - started


def test_serve_on_a_taken_port_fails_before_loading(tiny_model_files: ModelFiles) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, seconds = cli(
            "serve", "--port", str(port), "--auth-token", "",
            "--model", str(tiny_model_files.quantizer),
            "--whisper", str(tiny_model_files.whisper),
        )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"ichigo-stream: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    # Before the model: no "loading" log line (the log is configured after the bind), and
    # well under the seconds to minutes a real model takes.
    assert "loading" not in proc.stderr
    assert seconds < 15, seconds


def test_serve_with_a_missing_tls_file_fails_before_loading() -> None:
    proc, _ = cli(
        "serve", "--port", "0", "--auth-token", "", "--model", MISSING_MODEL,
        "--certfile", "/nonexistent/cert.pem", "--keyfile", "/nonexistent/key.pem",
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "ichigo-stream: error: --certfile /nonexistent/cert.pem: no such file"
    )


def test_no_readable_input_exits_before_loading(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.wav")
    for command in ("tokenize", "transcribe"):
        # The model does not exist: had it been loaded, that would be the error (status 2).
        proc, seconds = cli(command, "--model", MISSING_MODEL, missing, str(tmp_path))
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines == [
            f"ichigo-stream: error: cannot load audio '{missing}': no such file; expected an "
            "audio file (WAV, FLAC, OGG, MP3, or anything ffmpeg decodes)",
            f"ichigo-stream: error: cannot load audio '{tmp_path}': it is a directory; "
            "expected an audio file (WAV, FLAC, OGG, MP3, or anything ffmpeg decodes)",
        ], command
        assert MISSING_MODEL not in proc.stderr
        assert seconds < 15, seconds
    proc, _ = cli("tokenize", "--model", MISSING_MODEL, missing)
    assert json.loads(proc.stdout) == {"file": missing, "error": json.loads(proc.stdout)["error"]}
    # One readable input among them: the model is loaded (here: it fails to).
    proc, _ = cli("tokenize", "--model", MISSING_MODEL, missing, str(sample_path()))
    assert proc.returncode == 2 and MISSING_MODEL in proc.stderr


def test_transcribe_jsonl(tiny_model_files: ModelFiles, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.wav")
    proc, _ = cli(
        "transcribe", "--format", "jsonl", "--model", str(tiny_model_files.quantizer),
        "--whisper", str(tiny_model_files.whisper), str(sample_path()), missing,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    first, second = (json.loads(line) for line in proc.stdout.splitlines())
    assert first["file"] == str(sample_path()) and first["sample_rate"] == 16000
    assert first["model"]["name"] == tiny_model_files.quantizer.name
    assert len(first["segments"]) == 3
    for segment in first["segments"]:
        assert set(segment) == {"start", "end", "tokens", "text"}
        assert isinstance(segment["text"], str) and segment["tokens"]
        assert 0 <= segment["start"] < segment["end"]
    assert set(second) == {"file", "error"} and second["file"] == missing


def test_a_ready_server_prints_its_page_url(tiny_model_files: ModelFiles) -> None:
    args = ["--port", "0", "--auth-token", "", "--model", str(tiny_model_files.quantizer),
            "--whisper", str(tiny_model_files.whisper)]  # fmt: skip
    server = ServerProcess(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ready = server.start()
    try:
        deadline = time.monotonic() + 10
        while "in a browser" not in server.stderr_tail() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"ready: open {ready.page_url} in a browser; stream to {ready.url}" in (
            server.stderr_tail()
        )
        assert ready.page_url == f"http://127.0.0.1:{ready.port}/"
    finally:
        assert server.stop() == 0
