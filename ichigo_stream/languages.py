"""The language codes Whisper knows: what `start.language` may be (torch-free).

A copy of the keys of whisper.tokenizer.LANGUAGES, in its order, so that the protocol layer can
refuse an unknown language at parse time without importing Whisper (and torch), and so that no
client-chosen string of any length reaches the model, the log or an error message.
tests/model/test_languages.py checks that the copy equals Whisper's.
"""

from __future__ import annotations

# fmt: off
WHISPER_LANGUAGES: tuple[str, ...] = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it",
    "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur",
    "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn",
    "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si",
    "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo",
    "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su", "yue",
)
# fmt: on
LANGUAGE_CODES: frozenset[str] = frozenset(WHISPER_LANGUAGES)
