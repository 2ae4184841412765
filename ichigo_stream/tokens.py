"""The token text formats the Ichigo LLMs read, and strict parsing of them back to ids.

- "ids": the plain list of ints.
- "ichigo" (Ichigo-llama3.1 v0.3/v0.4): <|sound_start|> <|sound_NNNN|>... <|sound_end|>.
- "ichigo-rle" (v0.5): as "ichigo", but a run of k > 1 equal ids is <|duration_KK|><|sound_NNNN|>.
  Readers take exactly two digits of KK, so runs longer than 99 are split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .errors import TokenFormatError

TokenFormat = Literal["ids", "ichigo", "ichigo-rle"]
TOKEN_FORMATS: tuple[TokenFormat, ...] = ("ids", "ichigo", "ichigo-rle")

SOUND_START = "<|sound_start|>"
SOUND_END = "<|sound_end|>"
MAX_TOKEN_ID = 9999  # <|sound_NNNN|> has exactly four digits
MIN_RUN = 2  # a run of one is written without a duration token
MAX_RUN = 99  # <|duration_KK|> has exactly two digits

_TAG = re.compile(r"<\|[^<>|]*\|>")
_SOUND = re.compile(r"<\|sound_(\d{4})\|>")
_DURATION = re.compile(r"<\|duration_(\d{2})\|>")


def _sound(token: int) -> str:
    return f"<|sound_{token:04d}|>"


def validate_tokens(tokens: Sequence[int], codebook_size: int | None = None) -> list[int]:
    """Check every id is an int with 0 <= id <= 9999 (and < codebook_size); return plain ints."""
    limit = MAX_TOKEN_ID + 1 if codebook_size is None else min(codebook_size, MAX_TOKEN_ID + 1)
    out = []
    for i, token in enumerate(tokens):
        # bool is an int subclass, but True as a token id is always a bug upstream
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)):
            raise TokenFormatError(f"token {i} is {token!r} ({type(token).__name__}), not an int")
        if not 0 <= token < limit:
            raise TokenFormatError(f"token {i} is {token}, outside the valid range 0..{limit - 1}")
        out.append(int(token))
    return out


def to_ichigo(tokens: Sequence[int]) -> str:
    """<|sound_start|> then <|sound_NNNN|> per token then <|sound_end|>."""
    body = "".join(_sound(t) for t in validate_tokens(tokens))
    return f"{SOUND_START}{body}{SOUND_END}"


def _runs(tokens: list[int]) -> list[tuple[int, int]]:
    """(id, length) of each run of equal consecutive ids, no run longer than MAX_RUN."""
    runs: list[tuple[int, int]] = []
    for token in tokens:
        if runs and runs[-1][0] == token and runs[-1][1] < MAX_RUN:
            runs[-1] = (token, runs[-1][1] + 1)
        else:
            runs.append((token, 1))
    return runs


def to_ichigo_rle(tokens: Sequence[int]) -> str:
    """Like to_ichigo, but runs of k > 1 equal ids become <|duration_KK|><|sound_NNNN|>."""
    parts = [
        _sound(t) if k == 1 else f"<|duration_{k:02d}|>{_sound(t)}"
        for t, k in _runs(validate_tokens(tokens))
    ]
    return f"{SOUND_START}{''.join(parts)}{SOUND_END}"


def parse_ichigo(text: str) -> list[int]:
    """Parse either text format back to ids; anything but the two formats -> TokenFormatError.

    Only whitespace around the whole text is tolerated; errors name the character position in
    the text as given.
    """
    offset = len(text) - len(text.lstrip())
    body = text.strip()
    if not body.startswith(SOUND_START):
        raise TokenFormatError(f"position {offset}: expected {SOUND_START}, got {body[:20]!r}")
    if not body.endswith(SOUND_END) or len(body) < len(SOUND_START) + len(SOUND_END):
        if (first_end := body.find(SOUND_END)) >= 0:
            where = offset + first_end + len(SOUND_END)
            raise TokenFormatError(f"position {where}: text after {SOUND_END}")
        raise TokenFormatError(f"position {offset + len(body)}: missing {SOUND_END}")
    pos, end = len(SOUND_START), len(body) - len(SOUND_END)
    tokens: list[int] = []
    pending_run = 0  # the length announced by a duration token, waiting for its sound token
    while pos < end:
        tag = _TAG.match(body, pos, end)
        where = f"position {offset + pos}"
        if tag is None:
            raise TokenFormatError(f"{where}: expected a <|...|> tag, got {body[pos:end][:20]!r}")
        if sound := _SOUND.fullmatch(tag.group()):
            tokens.extend([int(sound.group(1))] * (pending_run or 1))
            pending_run = 0
        elif pending_run:
            raise TokenFormatError(f"{where}: a duration token must be followed by a sound token")
        elif duration := _DURATION.fullmatch(tag.group()):
            pending_run = int(duration.group(1))
            if not MIN_RUN <= pending_run <= MAX_RUN:
                raise TokenFormatError(
                    f"{where}: duration {pending_run} outside {MIN_RUN}..{MAX_RUN}"
                )
        else:
            raise TokenFormatError(f"{where}: unexpected tag {tag.group()!r}")
        pos = tag.end()
    if pending_run:
        raise TokenFormatError(
            f"position {offset + end}: a duration token must be followed by a sound token"
        )
    return tokens


def format_tokens(tokens: Sequence[int], fmt: TokenFormat = "ids") -> list[int] | str:
    """Tokens in one of TOKEN_FORMATS: a list of ints for "ids", else the Ichigo text."""
    if fmt == "ids":
        return validate_tokens(tokens)
    if fmt == "ichigo":
        return to_ichigo(tokens)
    if fmt == "ichigo-rle":
        return to_ichigo_rle(tokens)
    raise TokenFormatError(f"unknown token format {fmt!r}; expected one of {TOKEN_FORMATS}")
