"""The mic client's pieces without a device or a server: device choice, the capture bridge
driven from a thread the way PortAudio drives it, and the view fed by the client's typed
connection events. (The real device and server: integration/test_mic.py.)
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from ichigo_stream.client import Connected, Connecting, Done, GaveUp, Ready, Reconnecting
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.messages import Capabilities
from ichigo_stream.model_info import ModelInfo
from ichigo_stream_client.capture import MicCapture
from ichigo_stream_client.devices import DeviceError, InputDevice, describe_devices, find_device
from ichigo_stream_client.mic import MicApp, MicOptions
from ichigo_stream_client.terminal_view import MicStatus

# -- the pieces, without a device ----------------------------------------------------------------


def test_device_choice_by_index_exact_name_or_unique_part() -> None:
    devices = [
        InputDevice(0, "HDA Intel PCH: ALC3246 Analog (hw:0,0)", 2, 44100.0, "ALSA", False),
        InputDevice(4, "USB Audio: Mic (hw:1,0)", 1, 48000.0, "ALSA", False),
        InputDevice(7, "pulse", 32, 44100.0, "ALSA", False),
        InputDevice(8, "default", 32, 44100.0, "ALSA", True),
    ]
    assert find_device(devices, None).index == 8
    assert find_device(devices, "4").index == 4
    assert find_device(devices, "PULSE").index == 7
    assert find_device(devices, "usb").index == 4
    with pytest.raises(DeviceError, match=r"'hw' is ambiguous: 0 .*, 4 "):
        find_device(devices, "hw")
    with pytest.raises(DeviceError, match=r"input device 5 not found"):
        find_device(devices, "5")
    with pytest.raises(DeviceError, match=r"input device 'nope' not found"):
        find_device(devices, "nope")
    with pytest.raises(DeviceError, match=r"no default input device"):
        find_device(devices[:3], None)
    listing = describe_devices(devices).splitlines()
    assert listing[0].startswith("input devices") and len(listing) == 5
    assert listing[4].startswith("*") and "default" in listing[4]


def test_capture_bridge_bounds_an_outage_and_keeps_the_timeline() -> None:
    """The PortAudio callback's hand-off, driven from a thread as PortAudio would: 48 kHz
    stereo in, 16 kHz mono int16 out; with nobody reading, the oldest audio beyond the
    bound is dropped and counted; times map back to when the audio arrived."""
    rate, block = 48_000, 960  # 20 ms blocks
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate * 3) / rate)).astype(np.float32)
    stereo = np.stack([tone, tone], axis=1)
    flags = type("Flags", (), {"input_overflow": False})()

    async def main() -> tuple[MicCapture, list[np.ndarray], float]:
        loop = asyncio.get_running_loop()
        device = InputDevice(0, "test", 2, float(rate), "none", True)
        capture = MicCapture(None, device, loop, buffer_s=1.0)  # type: ignore[arg-type]

        def portaudio() -> None:
            for at in range(0, len(stereo), block):
                capture._callback(stereo[at : at + block], block, None, flags)

        before = time.monotonic()
        await asyncio.to_thread(portaudio)  # 3 s of audio while nothing reads: an outage
        await asyncio.sleep(0.05)  # let the loop run the queued hand-offs
        assert capture.heard_s == pytest.approx(3.0)
        assert capture.dropped / SAMPLE_RATE == pytest.approx(
            2.0, abs=0.05
        )  # less the filter delay
        await capture.finish()
        chunks = [chunk async for chunk in capture.chunks()]
        return capture, chunks, before

    capture, chunks, before = asyncio.run(main())
    audio = np.concatenate(chunks)
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert len(audio) / SAMPLE_RATE == pytest.approx(1.0, abs=0.02)  # the newest second
    assert np.abs(audio[1000:-1000]).max() == pytest.approx(0.5 * 32768, rel=0.02)
    # The fake PortAudio delivered 3 s in a burst; the mapping assumes real time within a
    # chunk, so a time up to a chunk (1 s here) before the burst is right.
    at = capture.captured_at(0.5)
    assert at is not None and before - 1.0 <= at <= time.monotonic()


class RecordingView:
    """A View that keeps what it was asked to show."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.shown: list[str] = []  # the status's connection at each refresh

    def line(self, text: str) -> None:
        pass

    def note(self, text: str) -> None:
        self.notes.append(text)

    def refresh(self, status: MicStatus) -> None:
        self.shown.append(status.connection)

    def close(self) -> None:
        pass


def test_the_view_shows_the_connection_from_the_clients_typed_events() -> None:
    """No log line is read: the status and the notes come from the connection events."""
    url = "ws://127.0.0.1:9/v1/stream"
    view = RecordingView()
    app = MicApp(MicOptions(url=url), view)
    model = ModelInfo("q.pth", "0" * 64, 2561, 2048, 25, "medium")
    ready = Ready(1, "session", model, SAMPLE_RATE, Capabilities())
    script = [
        (Connecting(url, 1), "connecting"),
        (Connected(ready, 0, 0.0), "connected"),
        (Reconnecting(1, 0.0, "connection lost"), "reconnecting"),
        (Connecting(url, 1), "reconnecting"),
        (Reconnecting(2, 0.3, "cannot connect (\x1b[2Jrefused)"), "reconnecting"),
        (Connecting(url, 2), "reconnecting (attempt 2)"),
        (Connected(ready, 1, 3.39), "connected"),
        (Done(2, 5.0), "connected"),
    ]
    for event, shown in script:
        app._on_event(event, None)  # type: ignore[arg-type]  # no capture: no segment here
        assert view.shown[-1] == shown, (event, view.shown)
    # One note per outage (the retry's is left to the status line), and where it resumed.
    assert view.notes == ["connection lost; reconnecting", "reconnected: resuming at 3.39 s"]
    assert app._summary() == "done: 2 segment(s), 5.00 s of audio, 1 reconnect(s)"
    app._on_event(Reconnecting(1, 0.0, "the server finished early (draining)"), None)  # type: ignore[arg-type]
    app._on_event(GaveUp("gave up reconnecting"), None)  # type: ignore[arg-type]
    assert view.shown[-1] == "disconnected"
    assert view.notes[-1] == "the server finished early (draining); reconnecting"
    # Server text in a reason reaches the terminal only as printable characters.
    app._on_event(Connected(ready, 2, 4.0), None)  # type: ignore[arg-type]
    app._on_event(Reconnecting(2, 0.5, "cannot connect (\x1b[2Jx)"), None)  # type: ignore[arg-type]
    assert "\x1b" not in view.notes[-1] and "retrying in 0.50 s (attempt 2)" in view.notes[-1]
