"""Batched text decoding with a language and a forced prefix per item, against Whisper's own
decode (random weights: the text is gibberish, but Whisper's and ours must be the same)."""

from __future__ import annotations

import pytest
import torch
import whisper
from models import ModelFiles

from ichigo_stream.captions import caption_text
from ichigo_stream.loading import LoadOptions, load_tokenizer
from ichigo_stream.model import IchigoTokenizer, TextOptions
from ichigo_stream.text_decoding import TextRequest, decode_texts

SHORT = 12  # a sample length that keeps a decoding cheap (random weights never say EOT)


def text_tokenizer(files: ModelFiles) -> IchigoTokenizer:
    options = LoadOptions(model=str(files.quantizer), whisper=str(files.whisper))
    return load_tokenizer(options, text=True)[0]


@pytest.fixture(scope="module")
def tiny(tiny_model_files: ModelFiles) -> IchigoTokenizer:
    return text_tokenizer(tiny_model_files)


def token_lists(seed: int, lengths: tuple[int, ...]) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 2561, (n,), generator=g).tolist() for n in lengths]


def whisper_decode(tokenizer: IchigoTokenizer, tokens: list[list[int]], **options: object):
    """openai-whisper's own decode of the dequantized tokens, as decode_text runs it."""
    embeddings = tokenizer.dequantize(tokens)
    return tokenizer.text_model.decode(embeddings, whisper.DecodingOptions(fp16=False, **options))


def test_without_a_prefix_it_is_decode_text(tiny: IchigoTokenizer) -> None:
    # The full default sample length, language detected per item: exactly decode_text's text.
    lists = token_lists(0, (3, 300))
    want = tiny.decode_text(lists, TextOptions(language=None))
    got = decode_texts(tiny, [TextRequest(tokens) for tokens in lists])
    assert [d.text for d in got] == want
    assert all(len(d.text_tokens) == 224 for d in got)  # Whisper's sample length: no EOT


@pytest.mark.parametrize("language", ["en", "ja"])
def test_without_a_prefix_the_tokens_are_whispers(tiny: IchigoTokenizer, language: str) -> None:
    lists = token_lists(1, (7, 120))
    want = whisper_decode(tiny, lists, language=language, sample_len=SHORT)
    got = decode_texts(tiny, [TextRequest(t, language) for t in lists], sample_len=SHORT)
    assert [d.text_tokens for d in got] == [tuple(r.tokens) for r in want]
    assert [d.text for d in got] == [r.text.strip() for r in want]
    assert [caption_text(d.pieces) for d in got] == [d.text for d in got]


def test_a_prefix_is_continued(tiny: IchigoTokenizer) -> None:
    lists = token_lists(2, (40, 90))
    free = decode_texts(tiny, [TextRequest(t, "en") for t in lists], sample_len=SHORT)
    other = decode_texts(tiny, [TextRequest(lists[1], "fr")], sample_len=SHORT)[0]
    # Forced: the first item its own first tokens, the second another decoding's tokens.
    prefixes = (free[0].text_tokens[:5], other.text_tokens[:7])
    got = decode_texts(
        tiny,
        [TextRequest(t, "en", p) for t, p in zip(lists, prefixes, strict=True)],
        sample_len=SHORT,
    )
    for decoded, prefix in zip(got, prefixes, strict=True):
        assert decoded.text_tokens[: len(prefix)] == prefix
        assert decoded.text.startswith(caption_text(decoded.pieces[: len(prefix)]))
        assert len(decoded.text_tokens) <= SHORT
    # Forcing what greedy decoding chooses anyway changes nothing.
    assert got[0].text_tokens == free[0].text_tokens
    assert got[1].text_tokens != free[1].text_tokens
    # A prefix as long as the sample length leaves nothing to add; none is too long.
    full = decode_texts(tiny, [TextRequest(lists[0], "en", free[0].text_tokens)], sample_len=SHORT)
    assert full[0].text_tokens == free[0].text_tokens
    with pytest.raises(ValueError, match="sample length"):
        decode_texts(tiny, [TextRequest(lists[0], "en", (1,) * (SHORT + 1))], sample_len=SHORT)


def test_mixed_languages_and_prefixes_in_one_batch_equal_each_alone(
    tiny: IchigoTokenizer,
) -> None:
    lists = token_lists(3, (25, 80, 10, 200, 0))
    seed = decode_texts(tiny, [TextRequest(lists[1], "de")], sample_len=SHORT)[0]
    requests = [
        TextRequest(lists[0], "en"),
        TextRequest(lists[1], "de", seed.text_tokens[:4]),
        TextRequest(lists[2], None),
        TextRequest(lists[3], "vi", seed.text_tokens[:2]),
        TextRequest(lists[4], "en", seed.text_tokens[:3]),  # no sound tokens: the prefix
    ]
    batched = decode_texts(tiny, requests, sample_len=SHORT)
    alone = [decode_texts(tiny, [r], sample_len=SHORT)[0] for r in requests]
    assert batched == alone
    assert batched[4].text_tokens == seed.text_tokens[:3]
    assert decode_texts(tiny, []) == []


def test_unknown_language_is_a_value_error(tiny: IchigoTokenizer) -> None:
    with pytest.raises(ValueError):
        decode_texts(tiny, [TextRequest([1, 2], "klingon")], sample_len=SHORT)


def test_medium_width_whisper(merged_model_files: ModelFiles) -> None:
    # Another shape: a 1024-wide, 2-layer Whisper with medium's real context sizes.
    tokenizer = text_tokenizer(merged_model_files)
    lists = token_lists(4, (33, 150))
    want = whisper_decode(tokenizer, lists, language="en", sample_len=SHORT)
    got = decode_texts(tokenizer, [TextRequest(t, "en") for t in lists], sample_len=SHORT)
    assert [d.text_tokens for d in got] == [tuple(r.tokens) for r in want]
