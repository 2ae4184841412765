"""Draw one file's tokenization: waveform with its segments shaded, and token ids over time.

matplotlib is optional (the ``plot`` extra): only this module imports it, and only the CLI's
--plot imports this module. It uses the object-oriented API on an Agg canvas: no pyplot, so
no global backend state and no display needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .constants import SAMPLE_RATE
from .errors import IchigoStreamError
from .pipeline import SegmentResult

# Above this many samples the waveform is drawn as a min/max envelope per bin: the picture is
# the same at this resolution and hour-long files stay fast to draw.
ENVELOPE_BINS = 4000
SEGMENT_COLORS = ("tab:orange", "tab:green")


def _envelope(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times in s, low, high) of the waveform, binned when long."""
    n = len(audio)
    if n <= 2 * ENVELOPE_BINS:
        t = np.arange(n) / SAMPLE_RATE
        return t, audio, audio
    per_bin = n // ENVELOPE_BINS
    used = audio[: per_bin * ENVELOPE_BINS].reshape(ENVELOPE_BINS, per_bin)
    t = (np.arange(ENVELOPE_BINS) * per_bin + per_bin / 2) / SAMPLE_RATE
    return t, used.min(axis=1), used.max(axis=1)


def plot_tokens(
    out: str | os.PathLike[str],
    audio: np.ndarray,
    segments: Sequence[SegmentResult],
    *,
    title: str = "",
    codebook_size: int | None = None,
    token_rate: int = 25,
) -> Path:
    """Write a PNG: waveform (segments shaded) above token id vs time (token_rate per second,
    ModelInfo.token_rate: 25 for the released checkpoints)."""
    duration = max(len(audio), 1) / SAMPLE_RATE
    fig = Figure(figsize=(12, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    wave_ax, token_ax = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.4))

    t, low, high = _envelope(np.asarray(audio, dtype=np.float32))
    wave_ax.fill_between(t, low, high, color="tab:blue", linewidth=0.5)
    wave_ax.plot(t, high, color="tab:blue", linewidth=0.3)
    wave_ax.set_ylabel("amplitude")
    wave_ax.set_xlim(0, duration)
    n_tokens = 0
    for k, seg in enumerate(segments):
        color = SEGMENT_COLORS[k % len(SEGMENT_COLORS)]
        start, end = seg.start / SAMPLE_RATE, seg.end / SAMPLE_RATE
        for ax in (wave_ax, token_ax):
            ax.axvspan(start, end, color=color, alpha=0.15, linewidth=0)
        # Token j of a segment covers [start + j / rate, start + (j + 1) / rate).
        times = seg.start / SAMPLE_RATE + (np.arange(len(seg.tokens)) + 0.5) / token_rate
        token_ax.scatter(times, seg.tokens, s=6, color=color, marker="o", linewidths=0)
        n_tokens += len(seg.tokens)
    token_ax.set_ylabel("token id")
    token_ax.set_xlabel("time (s)")
    if codebook_size:
        token_ax.set_ylim(-0.02 * codebook_size, 1.02 * codebook_size)
    plural = "" if len(segments) == 1 else "s"
    summary = f"{duration:.2f} s, {len(segments)} segment{plural}, {n_tokens} tokens"
    wave_ax.set_title(f"{title}  ({summary})" if title else summary)
    out = Path(out)
    try:
        fig.savefig(out, format="png")
    except OSError as e:
        raise IchigoStreamError(f"cannot write plot {out}: {e.strerror or e}") from None
    return out
