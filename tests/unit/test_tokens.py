"""ichigo_stream.tokens: exact Ichigo strings, run splitting, round trips, strict parsing."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ichigo_stream.errors import TokenFormatError
from ichigo_stream.tokens import (
    TOKEN_FORMATS,
    format_tokens,
    parse_ichigo,
    to_ichigo,
    to_ichigo_rle,
    validate_tokens,
)

START, END = "<|sound_start|>", "<|sound_end|>"


# --- exact strings, written by hand ---------------------------------------------------------


def test_to_ichigo_exact() -> None:
    assert to_ichigo([]) == "<|sound_start|><|sound_end|>"
    assert to_ichigo([0]) == "<|sound_start|><|sound_0000|><|sound_end|>"
    assert to_ichigo([7, 42, 42, 2560, 9999]) == (
        "<|sound_start|><|sound_0007|><|sound_0042|><|sound_0042|><|sound_2560|>"
        "<|sound_9999|><|sound_end|>"
    )


def test_to_ichigo_rle_exact() -> None:
    assert to_ichigo_rle([]) == "<|sound_start|><|sound_end|>"
    assert to_ichigo_rle([5]) == "<|sound_start|><|sound_0005|><|sound_end|>"
    assert to_ichigo_rle([5, 5]) == "<|sound_start|><|duration_02|><|sound_0005|><|sound_end|>"
    assert to_ichigo_rle([1, 2, 2, 2, 3, 1, 1]) == (
        "<|sound_start|><|sound_0001|><|duration_03|><|sound_0002|><|sound_0003|>"
        "<|duration_02|><|sound_0001|><|sound_end|>"
    )


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (99, ["<|duration_99|><|sound_0012|>"]),
        (100, ["<|duration_99|><|sound_0012|>", "<|sound_0012|>"]),
        (101, ["<|duration_99|><|sound_0012|>", "<|duration_02|><|sound_0012|>"]),
        (198, ["<|duration_99|><|sound_0012|>"] * 2),
        (199, ["<|duration_99|><|sound_0012|>"] * 2 + ["<|sound_0012|>"]),
        (250, ["<|duration_99|><|sound_0012|>"] * 2 + ["<|duration_52|><|sound_0012|>"]),
    ],
)
def test_rle_splits_long_runs(length: int, expected: list[str]) -> None:
    text = to_ichigo_rle([12] * length)
    assert text == START + "".join(expected) + END
    assert parse_ichigo(text) == [12] * length


# --- round trips ----------------------------------------------------------------------------


def _random_runs(rng: random.Random) -> list[int]:
    tokens: list[int] = []
    for _ in range(rng.randint(0, 12)):
        run = rng.choice([1, 1, 2, 3, 98, 99, 100, 101, 199, 250, rng.randint(1, 300)])
        tokens += [rng.randint(0, 2560)] * run
    return tokens


@pytest.mark.parametrize("seed", range(50))
def test_round_trips(seed: int) -> None:
    tokens = _random_runs(random.Random(seed))
    assert parse_ichigo(to_ichigo(tokens)) == tokens
    assert parse_ichigo(to_ichigo_rle(tokens)) == tokens
    assert to_ichigo_rle(tokens).count("<|") <= to_ichigo(tokens).count("<|")  # never more tags


def test_round_trip_empty_and_extremes() -> None:
    for tokens in ([], [0], [9999], [0, 9999, 0], list(range(300))):
        assert parse_ichigo(to_ichigo(tokens)) == tokens
        assert parse_ichigo(to_ichigo_rle(tokens)) == tokens


def test_parse_tolerates_surrounding_whitespace_only() -> None:
    assert parse_ichigo("  \n<|sound_start|><|sound_0003|><|sound_end|>\t\n") == [3]
    with pytest.raises(TokenFormatError):
        parse_ichigo("<|sound_start|> <|sound_0003|><|sound_end|>")


def test_parse_accepts_plain_repeats_and_split_runs() -> None:
    text = START + "<|duration_99|><|sound_0004|><|sound_0004|><|sound_0004|>" + END
    assert parse_ichigo(text) == [4] * 101


# --- malformed text -------------------------------------------------------------------------

S3 = "<|sound_0003|>"


@pytest.mark.parametrize(
    ("text", "position"),
    [
        (S3 + END, 0),  # no start
        ("", 0),  # nothing at all
        ("  " + S3 + END, 2),  # no start, position counts the leading whitespace
        (START + S3, 29),  # no end
        (START, 15),  # start alone
        (END, 0),  # end alone
        (START + S3 + END + S3, 42),  # text after the end
        (START + "<|sound_003|>" + END, 15),  # 3 digits
        (START + "<|sound_00003|>" + END, 15),  # 5 digits
        (START + "<|sound_abcd|>" + END, 15),  # not digits
        (START + "<|text_0003|>" + END, 15),  # unknown tag
        (START + START + S3 + END, 15),  # nested start
        (START + S3 + END + END, 29),  # end twice
        (START + "<|duration_01|>" + S3 + END, 15),  # duration < 2
        (START + "<|duration_00|>" + S3 + END, 15),
        (START + "<|duration_100|>" + S3 + END, 15),  # 3-digit duration
        (START + "<|duration_5|>" + S3 + END, 15),  # 1-digit duration
        (START + S3 + "<|duration_05|>" + END, 44),  # duration then the end
        (START + "<|duration_05|><|duration_05|>" + S3 + END, 30),  # duration, duration
        (START + "<|duration_05|><|sound_start|>" + S3 + END, 30),
        (START + S3 + "x" + S3 + END, 29),  # garbage between tags
        (START + S3 + " " + S3 + END, 29),  # even a space
        (START + S3 + "<|sound_0003" + END, 29),  # unclosed tag
        (START + "sound_0003" + END, 15),
    ],
)
def test_parse_rejects_malformed(text: str, position: int) -> None:
    with pytest.raises(TokenFormatError, match=rf"^position {position}\b"):
        parse_ichigo(text)


# --- validation and format_tokens -----------------------------------------------------------


def test_validate_tokens() -> None:
    assert validate_tokens([]) == []
    assert validate_tokens([0, 5, 9999]) == [0, 5, 9999]
    ids = validate_tokens(np.array([1, 2, 2560], dtype=np.int64), codebook_size=2561)
    assert ids == [1, 2, 2560] and all(type(t) is int for t in ids)
    assert validate_tokens([511], codebook_size=513) == [511]


@pytest.mark.parametrize(
    ("tokens", "codebook_size", "message"),
    [
        ([1, -1], None, "token 1 is -1"),
        ([10000], None, "token 0 is 10000"),
        ([10000], 20000, "0..9999"),  # the text format caps ids whatever the codebook
        ([2561], 2561, "0..2560"),
        ([0, 1.0], None, "token 1 is 1.0"),
        ([True], None, "not an int"),
        (["7"], None, "not an int"),
        ([None], None, "not an int"),
        (np.array([0.5]), None, "not an int"),
    ],
)
def test_validate_tokens_rejects(tokens: list[object], codebook_size: int | None, message: str):
    with pytest.raises(TokenFormatError, match=message):
        validate_tokens(tokens, codebook_size)  # type: ignore[arg-type]


def test_writers_validate() -> None:
    for write in (to_ichigo, to_ichigo_rle):
        with pytest.raises(TokenFormatError):
            write([1, 10000])
        with pytest.raises(TokenFormatError):
            write([-3])


def test_format_tokens() -> None:
    tokens = [3, 3, 4]
    assert TOKEN_FORMATS == ("ids", "ichigo", "ichigo-rle")
    assert format_tokens(tokens, "ids") == [3, 3, 4]
    assert format_tokens(tokens, "ichigo") == START + "<|sound_0003|>" * 2 + "<|sound_0004|>" + END
    assert format_tokens(tokens, "ichigo-rle") == (
        START + "<|duration_02|><|sound_0003|><|sound_0004|>" + END
    )
    with pytest.raises(TokenFormatError, match="unknown token format"):
        format_tokens(tokens, "json")  # type: ignore[arg-type]
