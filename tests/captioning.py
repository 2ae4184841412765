"""A fake worker's text results with the captions interface, for torch-free session tests.

The real worker (text_decoding.decode_texts) answers a text job with the decoding's text
tokens, which begin with the job's forced prefix (text_prefix), and the UTF-8 bytes of each.
Here each word is one text token: a stable id per word, its piece " word".
"""

from __future__ import annotations

from ichigo_stream.actions import Job, JobResult

_ids: dict[str, int] = {}
_pieces: dict[int, bytes] = {}


def word_token(word: str) -> int:
    if word not in _ids:
        _ids[word] = len(_ids)
        _pieces[_ids[word]] = f" {word}".encode()
    return _ids[word]


def text_result(job: Job, tokens: list[int], text: str) -> JobResult:
    """As the worker answers a text job whose free decoding would say `text`: the job's
    prefix, then the words of `text` past it (so the prefix is always kept)."""
    words = text.split()
    prefix = list(job.text_prefix)
    all_tokens = tuple(prefix + [word_token(w) for w in words[len(prefix) :]])
    pieces = tuple(_pieces[t] for t in all_tokens)
    full = b"".join(pieces).decode("utf-8").strip()
    return JobResult(tokens=tokens, text=full, text_tokens=all_tokens, text_pieces=pieces)
