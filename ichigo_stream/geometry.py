"""Token geometry: how many tokens a window and a clip get, derived from the quantizer's downsample.

The quantizer turns Whisper's 1500 encoder positions per 30 s window into one token per
`downsample` positions (the released checkpoints: 2, so 750 tokens, 25 per second, 40 ms
each). The reference (ichigo-asr 0.1.1, `RQBottleneckTransformer.quantize`) keeps the first
`n // 2 // downsample` tokens of a clip whose log-mel has n frames (n = samples // 160, at
most 3000); the rest belong to the padding. Everything here is derived from that rule, so a
checkpoint's token count, token rate and token duration have this one source.

Torch-free: sessions, clients and plots use it without the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import ENCODER_POSITIONS, HOP_LENGTH, N_FRAMES, SAMPLE_RATE, WINDOW_SECONDS

# Every released checkpoint means adjacent encoder frames pairwise; Ichigo-format files
# (.pth/.ckpt) do not record it, so it is their downsample.
RELEASED_DOWNSAMPLE = 2


@dataclass(frozen=True)
class TokenGeometry:
    """Tokens per window, token rate and token duration of a quantizer with this downsample."""

    downsample: int = RELEASED_DOWNSAMPLE  # encoder positions per token
    encoder_positions: int = ENCODER_POSITIONS  # per 30 s window (Whisper's n_audio_ctx)

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(problem)

    def _problem(self) -> str | None:
        d, positions = self.downsample, self.encoder_positions
        if type(d) is not int or d < 1:
            return f"downsample must be a positive integer, got {d!r}"
        if positions < 1 or N_FRAMES % positions:
            return f"{positions} encoder positions do not divide the {N_FRAMES} mel frames"
        if positions % d:
            # The reference means (or strides over) groups of `downsample` positions and
            # repeats each token `downsample` times to rebuild the 1500: a remainder breaks both.
            return (
                f"downsample {d} does not divide the {positions} encoder positions of a "
                f"window (supported: {_listed(positions)})"
            )
        if (positions // d) % WINDOW_SECONDS:
            # ModelInfo.token_rate (and protocol v1's ready message) is a whole number.
            rate = positions / d / WINDOW_SECONDS
            return (
                f"downsample {d} gives {rate:g} tokens per second, not a whole number "
                f"(supported: {_listed(positions)})"
            )
        return None

    @property
    def tokens_per_window(self) -> int:
        """Tokens of a full 30 s window (750 for downsample 2)."""
        return self.encoder_positions // self.downsample

    @property
    def token_rate(self) -> int:
        """Tokens per second of audio (25 for downsample 2)."""
        return self.tokens_per_window // WINDOW_SECONDS

    @property
    def frames_per_token(self) -> int:
        """Mel frames per token: the conv stem's stride (2) times downsample (4 for 2)."""
        return N_FRAMES // self.encoder_positions * self.downsample

    @property
    def samples_per_token(self) -> int:
        """16 kHz samples per token (640 = 40 ms for downsample 2)."""
        return self.frames_per_token * HOP_LENGTH

    @property
    def seconds_per_token(self) -> float:
        return self.samples_per_token / SAMPLE_RATE

    def n_tokens(self, n_samples: int) -> int:
        """Tokens the reference keeps for a clip of n_samples (at most tokens_per_window).

        (n_samples // 160) // frames_per_token, which equals the reference's
        n // 2 // downsample because floor divisions compose.
        """
        return min(n_samples // HOP_LENGTH, N_FRAMES) // self.frames_per_token


def supported_downsamples(encoder_positions: int = ENCODER_POSITIONS) -> tuple[int, ...]:
    """Downsample values that give whole tokens per window and per second (1, 2, 5, 10, 25, 50)."""
    return tuple(
        d
        for d in range(1, encoder_positions + 1)
        if encoder_positions % d == 0 and (encoder_positions // d) % WINDOW_SECONDS == 0
    )


def _listed(encoder_positions: int) -> str:
    return ", ".join(map(str, supported_downsamples(encoder_positions)))
