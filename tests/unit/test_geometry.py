"""Token geometry from the quantizer's downsample: counts, rates, refusals (torch-free)."""

from __future__ import annotations

import pytest

from ichigo_stream.constants import HOP_LENGTH, N_FRAMES, WINDOW_SAMPLES
from ichigo_stream.geometry import RELEASED_DOWNSAMPLE, TokenGeometry, supported_downsamples


def test_released_geometry() -> None:
    g = TokenGeometry()
    assert g.downsample == RELEASED_DOWNSAMPLE == 2
    assert (g.tokens_per_window, g.token_rate, g.samples_per_token) == (750, 25, 640)
    assert (g.frames_per_token, g.seconds_per_token) == (4, 0.04)
    sizes = [0, 1, 639, 640, 641, 1599, 1600, WINDOW_SAMPLES - 1, WINDOW_SAMPLES, 10**7]
    assert [g.n_tokens(n) for n in sizes] == [0, 0, 0, 1, 1, 2, 2, 749, 750, 750]


@pytest.mark.parametrize("downsample", supported_downsamples())
def test_counts_follow_the_reference_rule(downsample: int) -> None:
    """The reference keeps n // 2 // downsample tokens of n = min(samples // 160, 3000) frames."""
    g = TokenGeometry(downsample)
    assert g.tokens_per_window == 1500 // downsample
    assert g.token_rate * 30 == g.tokens_per_window
    assert g.samples_per_token * g.token_rate == 16_000
    for n in range(0, WINDOW_SAMPLES + 5000, 97):
        frames = min(n // HOP_LENGTH, N_FRAMES)
        assert g.n_tokens(n) == frames // 2 // downsample
    assert g.n_tokens(WINDOW_SAMPLES) == g.tokens_per_window


def test_supported_downsamples_are_exactly_the_whole_ones() -> None:
    assert supported_downsamples() == (1, 2, 5, 10, 25, 50)


@pytest.mark.parametrize(
    ("downsample", "message"),
    [
        (4, "downsample 4 gives 12.5 tokens per second, not a whole number"),
        (3, "downsample 3 gives 16.6667 tokens per second"),
        (7, "downsample 7 does not divide the 1500 encoder positions"),
        (0, "positive integer, got 0"),
        (-2, "positive integer, got -2"),
        (2.0, "positive integer, got 2.0"),
        (True, "positive integer, got True"),
    ],
)
def test_unsupported_downsample_is_refused(downsample: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        TokenGeometry(downsample)  # type: ignore[arg-type]
    assert "supported: 1, 2, 5, 10, 25, 50" in str(info.value) or "positive" in message
