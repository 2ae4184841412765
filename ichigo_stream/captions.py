"""Live captions: the text two consecutive partial decodings of a segment agree on.

LocalAgreement-2, as whisper_streaming does it: a segment is decoded again as its audio
grows, and only the longest common prefix of the last two decodings is shown, so a caption
never retracts. Sans-I/O and torch-free: it works on Whisper text token ids and their
UTF-8 bytes (text_decoding.DecodedText), which the worker sends with each result.

Why token ids and not words (whisper_streaming agrees on words with timestamps): the agreed
tokens are then forced, exactly as produced, as the prefix of the segment's next decodings
(text_decoding), so the final text provably starts with the last caption. Words would have
to be re-tokenized, and a re-tokenized prefix is not what the model produced. A caption may
therefore end inside a word ("hel", then "hello"); it is still only ever extended.
"""

from __future__ import annotations

from collections.abc import Sequence

# What errors="replace" puts for an incomplete UTF-8 sequence at the end of the bytes:
# a token can end inside a character, and the next token completes it.
REPLACEMENT_CHARACTER = "\ufffd"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """The longest common prefix of two sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return tuple(a[:n])


def caption_text(pieces: Sequence[bytes]) -> str:
    """The text of a prefix of a decoding, as Whisper's decode(...).strip() renders it,
    without a trailing incomplete character: so the caption of a prefix is always a prefix
    of the text of any longer decoding (UTF-8 is self-synchronizing; strip() only removes
    whitespace at the ends)."""
    text = b"".join(pieces).decode("utf-8", errors="replace")
    return text.rstrip(REPLACEMENT_CHARACTER).strip()


class LocalAgreement:
    """One segment's agreed text tokens, from its successive decodings.

    The agreed tokens only grow: a new agreement that does not extend them (the model
    changed its mind about text already shown) leaves them as they are.
    """

    def __init__(self) -> None:
        self.agreed: tuple[int, ...] = ()
        self.pieces: tuple[bytes, ...] = ()  # the bytes of each agreed token
        self._previous: tuple[int, ...] | None = None

    def update(self, tokens: Sequence[int], pieces: Sequence[bytes]) -> tuple[int, ...]:
        """A new decoding (its text tokens and their bytes); returns the agreed tokens."""
        if len(tokens) != len(pieces):
            raise ValueError(f"{len(tokens)} tokens but {len(pieces)} pieces")
        current = tuple(tokens)
        if self._previous is not None:
            agreement = common_prefix(self._previous, current)
            n = len(self.agreed)
            if len(agreement) > n and agreement[:n] == self.agreed:
                self.agreed = agreement
                self.pieces = tuple(pieces[: len(agreement)])
        self._previous = current
        return self.agreed

    @property
    def text(self) -> str:
        """The caption: the text of the agreed tokens."""
        return caption_text(self.pieces)
