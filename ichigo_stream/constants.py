"""Named audio and token-rate constants of the Whisper / Ichigo pipeline, with their derivation."""

from __future__ import annotations

SAMPLE_RATE = 16_000  # Hz: Whisper's (and so the tokenizer's) only input rate
HOP_LENGTH = 160  # samples between STFT frames: 10 ms at 16 kHz
N_FFT = 400  # STFT window: 25 ms at 16 kHz
WINDOW_SECONDS = 30  # one Whisper encoder window
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE  # 480_000 samples
N_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window
ENCODER_POSITIONS = N_FRAMES // 2  # 1500: Whisper's conv stem has stride 2
MEL_PAD_VALUE = -1.5  # the reference pads the log-mel (not the audio) with this constant
DOWNSAMPLE = 2  # the quantizer means adjacent encoder frames pairwise
TOKENS_PER_WINDOW = ENCODER_POSITIONS // DOWNSAMPLE  # 750
TOKEN_RATE = TOKENS_PER_WINDOW // WINDOW_SECONDS  # 25 tokens per second
SAMPLES_PER_TOKEN = SAMPLE_RATE // TOKEN_RATE  # 640 samples = 40 ms
FRAMES_PER_TOKEN = SAMPLES_PER_TOKEN // HOP_LENGTH  # 4 mel frames per token


def n_tokens(n_samples: int) -> int:
    """Tokens the reference keeps for a clip of n_samples: (n_samples // 160) // 4, at most 750."""
    return min(n_samples // HOP_LENGTH, N_FRAMES) // FRAMES_PER_TOKEN
