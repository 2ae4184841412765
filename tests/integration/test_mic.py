"""`ichigo-stream mic` on a real PortAudio input device, against a real server.

No mocked sounddevice: each module run starts its own PulseAudio (own XDG_RUNTIME_DIR, so it
never meets another one) with a pipe source as the default source. A feeder thread writes
16 kHz s16le into that source's FIFO in real time, silence between utterances, so the path
is speech -> FIFO -> PulseAudio -> ALSA's pulse plugin -> PortAudio -> the mic client (at
the device's 44.1 kHz, resampled to 16 kHz) -> `ichigo-stream serve` (subprocess, tiny
random model) -> events back. Segment times are judged against the VAD run offline on the
same speech: sentence onsets, relative to the first, must survive the trip.

PulseAudio, its ALSA plugin and tmux are test tools (.ci/install installs them): a missing
one fails the tests in CI and skips them elsewhere (tests/system_tools.py). The pieces that
need no device (device choice, the capture bridge, the view) are tested in
unit/test_mic_parts.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from models import ModelFiles
from system_tools import missing, require_tools

from ichigo_stream.assets import sample_path
from ichigo_stream.audio import load_audio, to_pcm16
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.segmentation import segment_vad
from ichigo_stream.server_process import ServerProcess
from ichigo_stream_client.mic import (
    MicOptions,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = sample_path()
MIC = (sys.executable, "-m", "ichigo_stream", "mic")
INSTALL_HINT = (
    "the microphone tests need PulseAudio (pulseaudio, pulseaudio-utils), ALSA's pulse plugin "
    "(libasound2-plugins) and tmux: .ci/install installs them"
)
SEGMENT_ROW = re.compile(r"^\[\s*[\d.]+ -\s*[\d.]+\] #(\d+)\s+\d+ tokens")
ONSET_TOLERANCE_S = 0.1  # a VAD frame (30 ms) either way, plus PulseAudio's resampling

pytestmark = pytest.mark.timeout(120)


# -- helpers --------------------------------------------------------------------------------------


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until check() is truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The --save file so far; a line still being written is left for the next read."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            break
    return events


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICHIGO_")}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Speech:
    pcm: np.ndarray  # int16 at 16 kHz
    onsets: tuple[float, ...]  # offline VAD segment starts (s)
    ends: tuple[float, ...]


@pytest.fixture(scope="module")
def speech() -> Speech:
    audio = load_audio(SAMPLE)
    segments = segment_vad(audio)
    assert len(segments) == 3, segments  # the sample's three sentences
    pcm = to_pcm16(audio)
    return Speech(
        pcm,
        tuple(s.start / SAMPLE_RATE for s in segments),
        tuple(s.end / SAMPLE_RATE for s in segments),
    )


def check_onsets(segments: list[dict[str, Any]], speech: Speech) -> None:
    """Each segment starts where the offline VAD starts it, relative to the first."""
    got = [s["start"] - segments[0]["start"] for s in segments]
    want = [t - speech.onsets[0] for t in speech.onsets[: len(segments)]]
    assert np.allclose(got, want, atol=ONSET_TOLERANCE_S), (got, want)


# -- a real input device: PulseAudio with a pipe source ----------------------------------------


class Feeder(threading.Thread):
    """Writes the FIFO in real time: queued speech, else silence (a pipe source with no data
    stalls its readers rather than producing silence). Never bursts: a writer that fell
    behind (PulseAudio busy) starts a new schedule, as a microphone would."""

    BLOCK = SAMPLE_RATE // 50  # 20 ms

    def __init__(self, fifo: Path) -> None:
        super().__init__(name="pulse-feeder", daemon=True)
        self.fifo = fifo
        self._lock = threading.Lock()
        self._pending = np.zeros(0, np.int16)
        self._halt = threading.Event()
        self.paused = threading.Event()  # set: write nothing, as a stalled device delivers
        self.fed = 0  # samples written since the start, speech and silence
        self.error: BaseException | None = None

    def say(self, pcm: np.ndarray) -> float:
        """Queue speech; returns the feed position (s) where it starts."""
        with self._lock:
            start = self.fed + len(self._pending)
            self._pending = np.concatenate([self._pending, pcm])
        return start / SAMPLE_RATE

    def hush(self) -> None:
        with self._lock:
            self._pending = np.zeros(0, np.int16)

    @property
    def position(self) -> float:
        return self.fed / SAMPLE_RATE

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def run(self) -> None:
        try:
            # Opened here, not in __init__: with no reader yet, opening a FIFO for writing
            # blocks, and the test thread must never hang on it.
            with open(self.fifo, "wb", buffering=0) as fifo:
                started = time.monotonic()
                while not self._halt.is_set():
                    if self.paused.is_set():
                        time.sleep(self.BLOCK / SAMPLE_RATE)
                        continue
                    with self._lock:
                        block = self._pending[: self.BLOCK]
                        self._pending = self._pending[len(block) :]
                    if len(block) < self.BLOCK:
                        block = np.concatenate([block, np.zeros(self.BLOCK - len(block), np.int16)])
                    fifo.write(block.astype("<i2").tobytes())
                    self.fed += self.BLOCK
                    delay = started + self.fed / SAMPLE_RATE - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    elif delay < -0.5:  # behind, or back from a pause
                        started -= delay
        except BaseException as e:
            if not self._halt.is_set():  # a pipe broken by the teardown is no failure
                self.error = e


@dataclass
class Pulse:
    env: dict[str, str]  # for every process that should hear the pipe source
    feeder: Feeder


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pulse]:
    require_tools("pulseaudio", "pactl", "tmux", why="the microphone tests")
    root = tmp_path_factory.mktemp("pulse")
    run = root / "run"
    run.mkdir(mode=0o700)
    env = clean_env(XDG_RUNTIME_DIR=str(run), PULSE_SERVER=f"unix:{run}/pulse/native")
    log = (root / "pulseaudio.log").open("wb")
    daemon = subprocess.Popen(
        [
            "pulseaudio",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--system=false",
            "-n",  # no default.pa: only the modules below, nothing touching real hardware
            "--load=module-native-protocol-unix auth-anonymous=1",
            "--load=module-null-sink sink_name=dummy",
            "--log-target=stderr",
        ],
        env={**env, "HOME": str(root)},  # its own state and cookie, never the user's
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    feeder: Feeder | None = None
    try:

        def pactl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["pactl", *args], env=env, capture_output=True, text=True, timeout=10
            )

        def up() -> bool:
            assert daemon.poll() is None, (root / "pulseaudio.log").read_text()
            return pactl("info").returncode == 0

        wait_for(up, 20, "pulseaudio to start")
        fifo = run / "mic.fifo"  # module-pipe-source makes the FIFO (a mkfifo'd one fails)
        loaded = pactl(
            "load-module",
            "module-pipe-source",
            "source_name=speech",
            f"file={fifo}",
            "format=s16le",
            f"rate={SAMPLE_RATE}",
            "channels=1",
        )
        assert loaded.returncode == 0, loaded.stderr
        assert pactl("set-default-source", "speech").returncode == 0
        # The pipe source reads its FIFO only while something records from it: a loopback
        # into the null sink keeps it draining in real time, so the feeder's clock is the
        # microphone's, and no stale speech waits in the FIFO for the next test's client.
        looped = pactl("load-module", "module-loopback", "source=speech", "sink=dummy")
        assert looped.returncode == 0, looped.stderr
        listed = subprocess.run(
            [*MIC, "--list-devices"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        if not re.search(r"^\*?\s+\d+\s+pulse\s", listed.stdout, re.M):
            missing(f"PortAudio shows no 'pulse' device ({INSTALL_HINT}):\n{listed}")
        feeder = Feeder(fifo)
        feeder.start()
        yield Pulse(env, feeder)
    finally:
        try:
            if feeder is not None:
                feeder.stop()
        finally:
            # env reaches only ours; its own pid if -k does not end it.
            subprocess.run(["pulseaudio", "-k"], env=env, capture_output=True, timeout=10)
            try:
                daemon.wait(5)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
            log.close()
    assert feeder.error is None, f"feeder failed: {feeder.error!r}"


# -- a real server, on a fixed port so that it can be killed and started again ------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, files: ModelFiles, log: Path) -> None:
        self.files, self.log = files, log
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/v1/stream"
        self.server: ServerProcess | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return None if self.server is None else self.server.process

    def start(self) -> None:
        args = ["--port", str(self.port)]
        args += ["--model", str(self.files.quantizer), "--whisper", str(self.files.whisper)]
        with self.log.open("ab") as stderr:
            self.server = ServerProcess(args, env=clean_env(), stderr=stderr, start_timeout_s=120)
            ready = self.server.start()
        assert ready.url == self.url, ready

    def kill(self) -> None:
        if self.server is not None:
            self.server.stop(10, signal.SIGKILL)  # no drain, no close frames

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(30)  # SIGTERM, then SIGKILL after 30 s


@pytest.fixture(scope="module")
def server(
    tiny_model_files: ModelFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    server = Server(tiny_model_files, tmp_path_factory.mktemp("serve") / "serve.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- the mic client as a subprocess ---------------------------------------------------------------


class MicProcess:
    def __init__(self, pulse: Pulse, folder: Path, *args: str) -> None:
        self.out, self.err = folder / "mic.out", folder / "mic.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [*MIC, *args], stdout=out, stderr=err, env=pulse.env, cwd=ROOT
            )

    def output(self) -> str:
        return f"stdout:\n{self.out.read_text()}\nstderr:\n{self.err.read_text()}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the mic client did not exit within {timeout:g} s\n{self.output()}")

    def close(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()


@pytest.fixture
def mics(pulse: Pulse) -> Iterator[list[MicProcess]]:
    started: list[MicProcess] = []
    try:
        yield started
    finally:
        for mic in started:
            mic.close()
        pulse.feeder.paused.clear()
        pulse.feeder.hush()  # the next test starts from silence


def run_mic(pulse: Pulse, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MIC, *args], env=pulse.env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


# -- tests ----------------------------------------------------------------------------------------


def test_list_devices_shows_the_pulse_device(pulse: Pulse) -> None:
    result = run_mic(pulse, "--list-devices")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[0].startswith("input devices"), result.stdout
    assert any(re.search(r"^\*?\s+\d+\s+pulse\s+\d+ ch\s+\d+ Hz", r) for r in rows), (
        f"no 'pulse' input device ({INSTALL_HINT}):\n{result.stdout}"
    )


def test_unknown_device_is_one_clear_error_and_the_device_list(pulse: Pulse) -> None:
    result = run_mic(pulse, "ws://127.0.0.1:9/v1/stream", "--device", "no-such-device")
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert lines[0] == "ichigo-stream: error: input device 'no-such-device' not found", lines
    assert lines[1].startswith("input devices"), lines
    assert any(re.search(r"\d+\s+pulse\s", line) for line in lines[2:]), lines
    assert "Traceback" not in result.stderr


def test_segments_arrive_live_and_ctrl_c_flushes_the_last_one(
    pulse: Pulse, server: Server, speech: Speech, mics: list[MicProcess], tmp_path: Path
) -> None:
    saved = tmp_path / "events.jsonl"
    mic = MicProcess(pulse, tmp_path, server.url, "--device", "pulse", "--save", str(saved))
    mics.append(mic)
    wait_for(lambda: of_type(read_events(saved), "connected"), 30, "the mic client to connect")
    start = pulse.feeder.say(speech.pcm)

    def third_sentence_open() -> bool:
        assert mic.alive(), mic.output()
        events = read_events(saved)
        return any(e["segment"] == 2 for e in of_type(events, "speech_start"))

    wait_for(third_sentence_open, 40, "the third sentence's speech_start")
    events = read_events(saved)
    assert len(of_type(events, "segment")) == 2, events  # the first two, while running
    # Mid-sentence: the third lasts ~4.4 s; stop once 1 s of it has gone into the device (the
    # feeder's clock, not the test's: a slow machine sees the speech_start later, not the audio).
    wait_for(
        lambda: pulse.feeder.position >= start + speech.onsets[2] + 1.0, 30, "1 s of the third"
    )
    mic.process.send_signal(signal.SIGINT)
    assert mic.wait(30) == 0, mic.output()

    events = read_events(saved)
    segments = of_type(events, "segment")
    assert [s["segment"] for s in segments] == [0, 1, 2], mic.output()
    last = segments[-1]
    full = speech.ends[2] - speech.onsets[2]
    assert last["end"] - last["start"] < full - 1.0, (last, full)  # cut by the stop
    assert len(last["tokens"]) > 0
    done = events[-1]
    assert done["type"] == "done" and done["segments"] == 3, done
    assert [c["connection"] for c in of_type(events, "connected")] == [0], events  # no reconnect
    check_onsets(segments, speech)
    assert "stopping: waiting for the last segment" in mic.err.read_text()
    assert len(mic.out.read_text().splitlines()) == 3  # a plain line per segment (not a TTY)


def test_live_view_in_tmux_shows_segments_as_they_arrive(
    pulse: Pulse,
    server: Server,
    speech: Speech,
    tmp_path: Path,
    mics: list[MicProcess],
    keep_artifact: Callable[[Path], None],
) -> None:
    config = tmp_path / "tmux.conf"
    config.write_text("set -g remain-on-exit on\n")  # keep the last screen
    tmux = ("tmux", "-L", f"ichigo-mic-{os.getpid()}", "-f", str(config))  # a server of its own
    mic = shlex.join([*MIC, server.url, "--device", "pulse"])
    # The shell reports the status: tmux's #{pane_dead_status} stays empty on some systems.
    # (The shell gets the Ctrl-C too, and goes on because the client exits normally.)
    command = f"cd {shlex.quote(str(ROOT))} && {mic}; echo mic exited with status $?"
    exited = re.compile(r"^mic exited with status (\d+)$", re.M)
    screens: list[str] = []

    def screen() -> str:
        text = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "mic:0.0"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        screens.append(text)
        return text

    def rows_shown(text: str) -> list[int]:
        return [int(m.group(1)) for line in text.splitlines() if (m := SEGMENT_ROW.match(line))]

    new_session = ("new-session", "-d", "-x", "120", "-y", "30", "-s", "mic", command)
    env = {k: v for k, v in pulse.env.items() if k != "TMUX"}  # even when run inside tmux
    subprocess.run([*tmux, *new_session], env=env, check=True, timeout=10)
    try:
        wait_for(lambda: "connected" in screen(), 30, "the live view to connect")
        pulse.feeder.say(speech.pcm)
        wait_for(lambda: rows_shown(screen()) == [0], 30, "segment #0")
        first = screens[-1]
        assert not exited.search(first), first  # shown while it runs, not at the end
        rows = first.splitlines()
        assert any(r.startswith(("SPEECH", "silence")) and "level [" in r for r in rows), first
        assert any(r.startswith("connected  ws://") for r in rows), first
        wait_for(lambda: rows_shown(screen()) == [0, 1], 30, "segment #1")
        # Into the third sentence: the view shows the server's speech_start of segment #2.
        wait_for(lambda: "segment #2 since" in screen(), 30, "the third sentence's speech_start")
        subprocess.run([*tmux, "send-keys", "-t", "mic:0.0", "C-c"], check=True, timeout=10)
        status = wait_for(lambda: exited.search(screen()), 30, "the mic client to exit")
        final = screens[-1]
        assert status.group(1) == "0", final
        assert rows_shown(final) == [0, 1, 2], final
        assert "-- done: 3 segment(s)" in final, final
        # The status area is erased on exit: nothing of it is left behind.
        assert not any(
            r.startswith(("SPEECH", "silence", "STOPPING", "connected", "partial"))
            for r in final.splitlines()
        ), final
    finally:
        capture = tmp_path / "mic-tmux.txt"
        capture.write_text("\n=====\n".join(screens[-3:]))
        keep_artifact(capture)  # for humans, where $ICHIGO_TEST_ARTIFACTS names a folder
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)


def test_audio_captured_while_the_server_is_down_is_not_lost(
    pulse: Pulse, server: Server, speech: Speech, mics: list[MicProcess], tmp_path: Path
) -> None:
    saved = tmp_path / "events.jsonl"
    mic = MicProcess(pulse, tmp_path, server.url, "--device", "pulse", "--save", str(saved))
    mics.append(mic)
    wait_for(lambda: of_type(read_events(saved), "connected"), 30, "the mic client to connect")
    start = pulse.feeder.say(speech.pcm)
    wait_for(lambda: of_type(read_events(saved), "segment"), 30, "the first segment")
    server.kill()
    # The whole second sentence is spoken while there is no server.
    wait_for(
        lambda: pulse.feeder.position > start + speech.ends[1] + 0.3, 30, "the second sentence"
    )
    assert mic.alive(), mic.output()
    server.start()
    wait_for(
        lambda: pulse.feeder.position > start + len(speech.pcm) / SAMPLE_RATE + 1.0,
        30,
        "the speech to end",
    )
    wait_for(
        lambda: len(of_type(read_events(saved), "segment")) >= 2, 30, "segments after the restart"
    )
    mic.process.send_signal(signal.SIGINT)
    assert mic.wait(30) == 0, mic.output()

    events = read_events(saved)
    segments = of_type(events, "segment")
    assert [s["segment"] for s in segments] == [0, 1, 2], mic.output()
    check_onsets(segments, speech)  # nothing lost or repeated: the timeline holds
    connected = of_type(events, "connected")
    assert [c["connection"] for c in connected][:2] == [0, 1], events
    assert events[-1]["type"] == "done" and connected[-1]["connection"] >= 1, events[-1]
    assert of_type(events, "reconnecting"), events
    assert "reconnected: resuming at" in mic.err.read_text()


def test_stop_timeout_and_a_second_ctrl_c_never_wait_on_a_hung_server(
    pulse: Pulse, server: Server, mics: list[MicProcess], tmp_path: Path
) -> None:
    assert server.process is not None
    hung = tmp_path / "hung"
    hung.mkdir()
    saves = (hung / "events.jsonl", tmp_path / "events.jsonl")
    first = MicProcess(
        pulse,
        hung,
        server.url,
        "--device",
        "pulse",
        "--stop-timeout-s",
        "1",
        "--save",
        str(saves[0]),
    )
    twice = MicProcess(pulse, tmp_path, server.url, "--device", "pulse", "--save", str(saves[1]))
    mics += [first, twice]
    for saved in saves:
        wait_for(lambda f=saved: of_type(read_events(f), "connected"), 30, "the mic clients")
    server.process.send_signal(signal.SIGSTOP)  # no done will ever come, no close frame
    try:
        first.process.send_signal(signal.SIGINT)
        twice.process.send_signal(signal.SIGINT)
        time.sleep(0.5)  # the first Ctrl-C is being handled: the second one comes during the stop
        started = time.monotonic()
        twice.process.send_signal(signal.SIGINT)
        assert twice.wait(10) == 130, twice.output()
        # Well under the default 15 s stop timeout: it did not wait on the hung server. (About
        # 0.2 s here; generous because CI machines are often 5-7x slower.)
        assert time.monotonic() - started < MicOptions.stop_timeout_s / 2
        # 1 s of waiting, then at most a few seconds for the connection to give up closing.
        assert first.wait(15) == 1, first.output()
        assert "no final result within 1 s of stopping" in first.err.read_text()
    finally:
        server.process.send_signal(signal.SIGCONT)


def test_ctrl_c_when_the_device_delivers_nothing_still_finishes(
    pulse: Pulse, server: Server, speech: Speech, mics: list[MicProcess], tmp_path: Path
) -> None:
    """A stalled source (here: the FIFO runs dry) must not hold the stop: PortAudio's
    stop() on such an ALSA stream never returns; the client aborts it instead."""
    saved = tmp_path / "events.jsonl"
    mic = MicProcess(pulse, tmp_path, server.url, "--device", "pulse", "--save", str(saved))
    mics.append(mic)
    wait_for(lambda: of_type(read_events(saved), "connected"), 30, "the mic client to connect")
    pulse.feeder.say(speech.pcm[: round(speech.ends[0] * SAMPLE_RATE)])  # one sentence
    wait_for(lambda: of_type(read_events(saved), "segment"), 30, "the first segment")
    pulse.feeder.paused.set()
    time.sleep(1.0)  # not an event to wait for: PulseAudio's buffer running dry
    started = time.monotonic()
    mic.process.send_signal(signal.SIGINT)
    assert mic.wait(14) == 0, mic.output()
    # A stop that waited on the stalled device would never return; under the 15 s stop
    # timeout, it did not give up either. (About 0.5 s here; CI machines may be 5-7x slower.)
    assert time.monotonic() - started < MicOptions.stop_timeout_s - 1
    assert read_events(saved)[-1]["type"] == "done"
