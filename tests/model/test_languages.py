"""The protocol's torch-free copy of Whisper's language codes is Whisper's own list."""

from __future__ import annotations

import whisper.tokenizer

from ichigo_stream.languages import LANGUAGE_CODES, WHISPER_LANGUAGES


def test_the_language_codes_are_whispers() -> None:
    assert tuple(whisper.tokenizer.LANGUAGES) == WHISPER_LANGUAGES
    assert set(whisper.tokenizer.LANGUAGES) == LANGUAGE_CODES
