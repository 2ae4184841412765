"""The live capture paths agree with the library's rules: the mic client and the page's
AudioWorklet (server/static/capture-worklet.js, run by node) turn the same float samples into
the same PCM16 bytes as ichigo_stream.audio.to_pcm16, and the mic resamples exactly as the
server's stream decoder does.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from es_modules import run_with_node
from system_tools import require_tool

from ichigo_stream.audio import PcmStreamDecoder, downmix, silence_non_finite, to_pcm16
from ichigo_stream.constants import SAMPLE_RATE
from ichigo_stream.errors import AudioError
from ichigo_stream_client.capture import MicCapture
from ichigo_stream_client.devices import InputDevice

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _edge_values() -> list[float]:
    """Values where a float -> PCM16 rule can go wrong: the ends, every kind of tie, the
    values beside a tie, beyond +-1 and beyond float32, tiny ones, -0 and the non-finite."""
    ties = [(k + 0.5) / 32768 for k in (*range(-8, 8), 32766, -32767, 32767, -32769)]
    beside = [float(np.nextafter(np.float32(t), np.float32(d))) for t in ties[:16] for d in (-1, 1)]
    return [
        *(0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 0.25, 1 / 32768, -1 / 32768),
        *ties,
        *beside,
        *(1.0000001, -1.0000001, 1.5, -2.0, 7.0, 3.4e38, -3.4e38, 1e39, 1e300, -1e300),
        *(1e-45, -1e-45, 1e-300, 5e-324, 0.1, -0.1, 1 / 3),  # float64 values, not float32
        *NON_FINITE.values(),
    ]


def _random_values() -> list[float]:
    rng = np.random.default_rng(0)
    as_float32 = rng.uniform(-1.2, 1.2, 4000).astype(np.float32).astype(float)
    return [*as_float32, *rng.uniform(-1.2, 1.2, 4000)]  # and float64 ones


def _json_number(x: float) -> float | str:
    return x if math.isfinite(x) else str(x).replace("inf", "Infinity").replace("nan", "NaN")


DRIVER = """
import { floatToPcm16 } from "./worklet.mjs";
import { readFileSync } from "node:fs";

const NON_FINITE = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };
const input = JSON.parse(readFileSync(0, "utf8"));
const results = input.values.map((v) => {
  try {
    return { ok: floatToPcm16(typeof v === "string" ? NON_FINITE[v] : v) };
  } catch (error) {
    return { error: error.name };
  }
});
// The converted samples as the bytes an Int16Array holds (what the worklet posts).
const pcm = Int16Array.from(results.filter((r) => "ok" in r).map((r) => r.ok));
process.stdout.write(JSON.stringify({ results, pcm: Buffer.from(pcm.buffer).toString("hex") }));
"""

# A stand-in for the AudioWorkletGlobalScope: enough to construct the capture processor, feed
# it render quanta and flush it, collecting what it posts to the page.
PROCESSOR_DRIVER = """
import { readFileSync } from "node:fs";

const posted = [];
let Processor;
globalThis.sampleRate = 16000;
globalThis.AudioWorkletProcessor = class {
  constructor() {
    this.port = { postMessage: (message) => posted.push(message), onmessage: null };
  }
};
globalThis.registerProcessor = (name, cls) => { Processor = cls; };
await import("./worklet.mjs");

const NON_FINITE = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };
const input = JSON.parse(readFileSync(0, "utf8"));
const channels = input.channels.map(
  (c) => Float32Array.from(c, (v) => (typeof v === "string" ? NON_FINITE[v] : v)));
const node = new Processor({ processorOptions: { targetRate: 16000, chunkMs: 40 } });
for (let at = 0; at < channels[0].length; at += 128) {
  node.process([channels.map((c) => c.subarray(at, at + 128))]);
}
node.port.onmessage({ data: { type: "flush" } });
const pcm = posted.filter((m) => m.type === "audio").map((m) => Buffer.from(m.pcm.buffer));
process.stdout.write(JSON.stringify({
  pcm: Buffer.concat(pcm).toString("hex"),
  last: posted[posted.length - 1].type,
}));
"""


@pytest.fixture(scope="module")
def node() -> str:
    return require_tool(
        "node", why="to test server/static/capture-worklet.js against the Python PCM16 rule"
    )


def run_node(node: str, tmp_path: Path, driver: str, data: dict[str, Any]) -> dict[str, Any]:
    return run_with_node(node, tmp_path, {"worklet.mjs": "capture-worklet.js"}, driver, data)


def _python_pcm16(value: float) -> int | None:
    """to_pcm16 of one value; None where it refuses it."""
    try:
        return int(to_pcm16(np.array([value], np.float64))[0])
    except AudioError:
        return None


@pytest.mark.parametrize("values", [_edge_values(), _random_values()], ids=["edges", "random"])
def test_worklet_converts_to_pcm16_exactly_as_python(
    node: str, tmp_path: Path, values: list[float]
) -> None:
    out = run_node(node, tmp_path, DRIVER, {"values": [_json_number(v) for v in values]})
    for value, got in zip(values, out["results"], strict=True):
        want = _python_pcm16(value)
        if want is None:  # both refuse what has no right value
            assert got == {"error": "RangeError"}, (value, got)
        else:
            assert got == {"ok": want}, (value, got, want)
    finite = np.array([v for v in values if math.isfinite(v)], np.float64)
    assert bytes.fromhex(out["pcm"]) == to_pcm16(finite).astype("<i2").tobytes()


def _source(channels: int) -> np.ndarray:
    """2 s of loud noise at 16 kHz with a NaN burst, infinities and clipping peaks in it."""
    rng = np.random.default_rng(channels)
    x = (0.6 * rng.standard_normal((2 * SAMPLE_RATE, channels))).astype(np.float32)
    x[5000:5300, 0] = np.nan  # a broken driver's burst, on one channel only
    x[9000, :] = np.inf
    x[9001, -1] = -np.inf
    x[12000:12010] = 1.0
    x[13000:13010] = -1.0
    return x


def _mic_capture(x: np.ndarray, rate: int, block: int) -> np.ndarray:
    """What MicCapture hands the client for these blocks from PortAudio (float32 frames)."""

    async def main() -> np.ndarray:
        loop = asyncio.get_running_loop()
        device = InputDevice(0, "test", x.shape[1], float(rate), "none", True)
        capture = MicCapture(None, device, loop, buffer_s=len(x) / rate + 1)  # type: ignore[arg-type]
        for at in range(0, len(x), block):
            capture._on_block(x[at : at + block].copy(), 0.0, False)
        await capture.finish()
        return np.concatenate([chunk async for chunk in capture.chunks()])

    return asyncio.run(main())


@pytest.mark.parametrize("channels", [1, 2])
def test_worklet_and_mic_send_the_same_pcm_at_16k(node: str, tmp_path: Path, channels: int) -> None:
    """At 16 kHz neither resamples: the page and the mic client send the same bytes for the
    same microphone samples, non-finite ones included (both hear them as silence)."""
    x = _source(channels)
    columns = [[_json_number(float(v)) for v in x[:, c]] for c in range(channels)]
    out = run_node(node, tmp_path, PROCESSOR_DRIVER, {"channels": columns})
    assert out["last"] == "flushed"
    worklet = np.frombuffer(bytes.fromhex(out["pcm"]), "<i2")
    mic = _mic_capture(x, SAMPLE_RATE, 320)
    np.testing.assert_array_equal(worklet, mic)
    assert len(mic) == len(x)
    assert not np.any(mic[5000:5300]) and not np.any(mic[9000:9002])  # heard as silence
    assert np.array_equal(mic, to_pcm16(silence_non_finite(downmix(x))))


@pytest.mark.parametrize(("rate", "channels", "block"), [(48000, 2, 960), (44100, 1, 441)])
def test_mic_resamples_exactly_as_the_servers_stream_decoder(
    rate: int, channels: int, block: int
) -> None:
    """The mic's capture path and the server's PcmStreamDecoder, fed the same float32 blocks,
    give the same 16 kHz samples: one resampler, one downmix, one PCM16 rule."""
    rng = np.random.default_rng(rate)
    x = (0.4 * rng.standard_normal((2 * rate, channels))).astype(np.float32)
    mic = _mic_capture(x, rate, block)
    decoder = PcmStreamDecoder(rate, "pcm_f32le", channels)
    parts = [
        decoder.decode(x[at : at + block].astype("<f4").tobytes()) for at in range(0, len(x), block)
    ]
    server = np.concatenate([*parts, decoder.finish()])
    np.testing.assert_array_equal(mic, to_pcm16(server))
    assert abs(len(mic) - 2 * SAMPLE_RATE) <= 1
