"""The launcher (ichigo_stream.server_process) and the `serve` lifecycle it relies on.

Real `ichigo-stream serve` processes with the tiny random model: readiness announced in the
ready file and on stdout, failures reported with the exit status, the file removed on exit,
and a second SIGTERM during a drain forcing the exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from models import ModelFiles
from streaming import WireClient

from ichigo_stream.assets import sample_path
from ichigo_stream.errors import IchigoStreamError
from ichigo_stream.server_process import ServerProcess, ServerReady

READY_FIELDS = {"url", "host", "port", "pid", "page_url", "healthz_url", "metrics_url", "protocol"}


def clean_env() -> dict[str, str]:
    """The test's environment without ICHIGO_* settings that would change the server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ICHIGO_")}


def model_args(files: ModelFiles) -> list[str]:
    return ["--model", str(files.quantizer), "--whisper", str(files.whisper)]


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


# -- ServerProcess against a real server -----------------------------------------------------------


@pytest.mark.timeout(180)
def test_start_on_port_0_announces_the_real_port_and_stop_is_idempotent(
    tiny_model_files: ModelFiles,
) -> None:
    server = ServerProcess(
        ["--port", "0", *model_args(tiny_model_files)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with server:
        ready = server.ready
        assert ready.port != 0 and ready.pid == server.process.pid and ready.protocol == 1
        assert ready.url == f"ws://127.0.0.1:{ready.port}/v1/stream"
        # The ready file holds exactly the announced object (and nothing else).
        assert server.ready_file is not None
        on_disk = json.loads(server.ready_file.read_text())
        assert set(on_disk) == READY_FIELDS and ServerReady.from_json(json.dumps(on_disk)) == ready
        # Every announced URL answers.
        assert get(ready.healthz_url)[:2] == (200, "text/plain; charset=utf-8")
        status, _, metrics = get(ready.metrics_url)
        assert status == 200 and "ichigo_batch_size_count" in metrics
        status, kind, _ = get(ready.page_url)
        assert status == 200 and kind.startswith("text/html")

        async def handshake() -> str:
            client = await WireClient.connect(ready.port)
            message = await client.start()
            await client.close()
            return message["type"]

        assert asyncio.run(handshake()) == "ready"
        ready_file = server.ready_file
    assert server.process.returncode == 0, server.stderr_tail()
    assert not ready_file.exists() and not ready_file.parent.exists()
    assert server.stop() == 0  # again: no signal to a process that is gone, same status
    # stdout carries only the machine-readable event line; the human log is on stderr.
    assert server.process.stdout is not None
    [line] = server.process.stdout.read().decode().splitlines()
    assert json.loads(line) == {"event": "ready", **ready.to_dict()}
    assert f"serving {ready.url}" in server.stderr_tail()


@pytest.mark.timeout(180)
def test_the_server_writes_its_ready_file_once_serving_and_removes_it_on_exit(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """The serve command itself, without the launcher: what any other launcher sees."""
    ready_file = tmp_path / "announce" / "ready.json"
    ready_file.parent.mkdir()
    command = [sys.executable, "-m", "ichigo_stream", "serve", "--port", "0"]
    command += [*model_args(tiny_model_files), "--ready-file", str(ready_file)]
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=clean_env())
    try:
        deadline = time.monotonic() + 120
        while not ready_file.exists():
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "no ready file within 120 s"
            time.sleep(0.02)
        ready = ServerReady.from_json(ready_file.read_text())
        assert ready.pid == process.pid
        # The file appears only once the server answers: healthy at once, no retry needed.
        assert get(ready.healthz_url)[0] == 200
        assert process.stdout is not None
        assert json.loads(process.stdout.readline()) == {"event": "ready", **ready.to_dict()}
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert list(ready_file.parent.iterdir()) == []  # removed; no temporary file left either


@pytest.mark.timeout(180)
def test_a_taken_port_is_reported_with_the_exit_status_at_once(
    tiny_model_files: ModelFiles,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ServerProcess(
            ["--port", str(port), *model_args(tiny_model_files)],
            env=clean_env(),
            stderr=subprocess.PIPE,
        )
        began = time.monotonic()
        with pytest.raises(IchigoStreamError) as failed:
            server.start()
        took = time.monotonic() - began
    message = str(failed.value)
    assert "exited with status 2 before it was ready" in message, message
    assert f"cannot listen on 127.0.0.1:{port}" in message, message  # its stderr's tail
    assert "Traceback" not in message, message
    # Reported when the process exits (loading the tiny model takes seconds), not after the
    # 600 s start timeout; 90 s leaves room for a loaded 2-core machine.
    assert took < 90, took
    assert server.process.returncode == 2


def test_a_server_not_ready_in_time_is_killed(tiny_model_files: ModelFiles) -> None:
    # 0.2 s: importing torch alone takes longer, so the server cannot be ready in time.
    server = ServerProcess(
        ["--port", "0", *model_args(tiny_model_files)], env=clean_env(), start_timeout_s=0.2
    )
    with pytest.raises(IchigoStreamError, match=r"not ready within 0\.2 s \(killed\)"):
        server.start()
    assert server.process.returncode == -signal.SIGKILL
    assert server.stop() == -signal.SIGKILL  # idempotent on a killed server too
    assert server.ready_file is None  # its folder is gone


# -- a second signal during the drain forces the exit ----------------------------------------------


@pytest.mark.timeout(300)
def test_a_second_sigterm_during_the_drain_exits_at_once(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """A drain with minutes of model work left, cut short by a second SIGTERM.

    Four sessions send the speech sample eight times over, unpaced: 24 segments each, about
    100 clips for a model that takes about 0.25 s a clip here (longer on a loaded machine),
    so the drain has tens of seconds of work left when the signals come.
    """
    pcm, _ = sf.read(sample_path(), dtype="int16")
    speech = np.tile(pcm, 8).tobytes()
    log_path = tmp_path / "serve.log"
    args = ["--port", "0", *model_args(tiny_model_files), "--max-batch", "1"]
    # Unpaced senders: lift the rate limit; a long drain timeout so that only the signal ends it.
    args += ["--max-realtime", "1e6", "--realtime-burst-s", "1e6", "--drain-timeout-s", "600"]

    async def main(server: ServerProcess) -> tuple[float, int, list]:
        clients = [await WireClient.connect(server.ready.port) for _ in range(4)]
        for client in clients:
            await client.start()
        await asyncio.gather(*(c.send_audio(speech, (32_000,)) for c in clients))
        # Every session's audio has been read: its last segment has begun.
        for client in clients:
            await client.wait_for(
                lambda m: m["type"] == "speech_start" and m["segment"] == 23, timeout=120
            )
        server.process.send_signal(signal.SIGTERM)
        while "draining" not in log_path.read_text():  # the drain has begun
            await asyncio.sleep(0.02)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(server.process.wait, 60)
        took = time.monotonic() - signalled
        outcomes = [await c.finish(30) for c in clients]
        return took, status, outcomes

    with log_path.open("wb") as log, ServerProcess(args, env=clean_env(), stderr=log) as server:
        took, status, outcomes = asyncio.run(main(server))
    text = log_path.read_text()
    assert status == 128 + signal.SIGTERM, text  # 143: the forced exit, not a drain's 0
    # Bound: the forced exit waits at most a second for the clients' close frames and not at
    # all for the model; 15 s is for a loaded 2-core machine. The drain it cut short still
    # had the clips checked below to run, at about 0.25 s each.
    assert took < 15, text
    assert "second SIGTERM" in text, text
    undelivered = 0
    for outcome in outcomes:
        assert outcome.close_code == 1001, outcome.summary()
        assert outcome.done is None, outcome.summary()  # the drain did not finish it
        undelivered += 24 - len(outcome.segments)
    assert undelivered >= 40, f"only {undelivered} segments were left: no long drain to cut"
    assert server.ready_file is None  # the launcher's folder is gone
