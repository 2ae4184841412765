"""Named audio and window constants of the Whisper / Ichigo pipeline, with their derivation.

Only what holds for every checkpoint lives here. How many tokens a window or a clip gets
depends on the quantizer's `downsample` and so comes from the checkpoint: see
ichigo_stream.geometry.TokenGeometry.
"""

from __future__ import annotations

SAMPLE_RATE = 16_000  # Hz: Whisper's (and so the tokenizer's) only input rate
HOP_LENGTH = 160  # samples between STFT frames: 10 ms at 16 kHz
N_FFT = 400  # STFT window: 25 ms at 16 kHz
WINDOW_SECONDS = 30  # one Whisper encoder window
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE  # 480_000 samples
N_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window
ENCODER_POSITIONS = N_FRAMES // 2  # 1500: Whisper's conv stem has stride 2
MEL_PAD_VALUE = -1.5  # the reference pads the log-mel (not the audio) with this constant
