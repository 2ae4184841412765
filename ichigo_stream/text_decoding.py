"""Batched greedy text decoding with a language and a forced text prefix per item.

Whisper's own `model.decode` takes one language and one prefix for the whole batch; live
captions need both per item (sessions of many languages share a batch, and each segment's
decoding continues its own agreed caption). This decoder runs the same greedy loop as
`whisper.decoding.DecodingTask` (the same kv-cache inference, the same logit filters:
suppress-blank, suppress-tokens and the timestamp rules of Whisper's default mode, which
`IchigoTokenizer.decode_text` uses), with two changes:

- item i starts with its own SOT sequence (its language token, or the detected one);
- its forced prefix tokens follow, fed one step at a time in lockstep with the other items:
  at a position still inside an item's prefix, the prefix token replaces the greedy choice.
  The prefix counts as text the model produced (the timestamp rules see it, and it counts
  toward the sample length), since it is what an earlier decoding of the same segment
  produced; suppress-blank acts only at the first text position, so after a prefix the
  decoding may end at once.

With no prefix the tokens (and so the text) are exactly `model.decode`'s (tested). Model
code: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import whisper
from whisper.decoding import DecodingOptions, DecodingTask, PyTorchInference
from whisper.tokenizer import Tokenizer, get_tokenizer

from .model import IchigoTokenizer


@dataclass(frozen=True)
class TextRequest:
    """One item of a batch: sound tokens, the language (None: detect), the forced prefix."""

    tokens: Sequence[int]
    language: str | None = None
    prefix: tuple[int, ...] = ()  # Whisper text tokens (as DecodedText.text_tokens gives)


@dataclass(frozen=True)
class DecodedText:
    """An item's decoding: its text, and its text tokens (prefix + continuation, no EOT)
    with the UTF-8 bytes of each (b"" for a timestamp), so that a caller without Whisper's
    tokenizer can render any prefix of them (captions.caption_text)."""

    text: str
    text_tokens: tuple[int, ...]
    pieces: tuple[bytes, ...]


def decoding_task(model: whisper.model.Whisper, sample_len: int | None = None) -> DecodingTask:
    """Whisper's greedy task with decode_text's options: its filters, lengths and tokenizer.

    The language is a placeholder: each item's own goes into its SOT sequence. The dtype
    rule is decode_text's: fp16 where the decoder's weights are, else float32 features.
    """
    fp16 = model.decoder.token_embedding.weight.dtype == torch.float16
    options = DecodingOptions(task="transcribe", language="en", fp16=fp16, sample_len=sample_len)
    return DecodingTask(model, options)


def sot_sequence(task: DecodingTask, language: str | None) -> list[int] | None:
    """The item's initial tokens; None where the language is to be detected.

    ValueError for a language Whisper does not know (as `model.decode` raises).
    """
    initial = list(task.initial_tokens)
    if not task.model.is_multilingual:
        return initial  # English-only: no language token to set
    if language is None:
        return None
    model = task.model
    own = get_tokenizer(
        True, num_languages=model.num_languages, language=language, task="transcribe"
    )
    initial[task.sot_index + 1] = own.sot_sequence[1]
    return initial


def token_pieces(tokenizer: Tokenizer, text_tokens: Sequence[int]) -> tuple[bytes, ...]:
    """The bytes each token adds to Tokenizer.decode (which drops timestamps)."""
    encoding = tokenizer.encoding
    return tuple(
        encoding.decode_single_token_bytes(t) if t < tokenizer.timestamp_begin else b""
        for t in text_tokens
    )


def _result(tokenizer: Tokenizer, text_tokens: Sequence[int]) -> DecodedText:
    tokens = tuple(int(t) for t in text_tokens)
    return DecodedText(
        tokenizer.decode(list(tokens)).strip(), tokens, token_pieces(tokenizer, tokens)
    )


@torch.inference_mode()
def decode_texts(
    tokenizer: IchigoTokenizer, requests: Sequence[TextRequest], *, sample_len: int | None = None
) -> list[DecodedText]:
    """Decode every request in one decoder batch (the text model must be attached).

    `sample_len` caps the text tokens of an item (prefix included); None is Whisper's
    default, half the text context (224).

    An item with no sound tokens has nothing to decode: its result is its prefix. ValueError
    for an unknown language or a prefix longer than the sample length (checked before any
    model work, so the caller can retry the others).
    """
    model = tokenizer.text_model
    task = decoding_task(model, sample_len)
    prompts: list[list[int] | None] = []
    for request in requests:
        if len(request.prefix) > task.sample_len:
            raise ValueError(
                f"a prefix of {len(request.prefix)} tokens exceeds the sample length "
                f"{task.sample_len}"
            )
        prompts.append(sot_sequence(task, request.language))
    results: list[DecodedText | None] = [None] * len(requests)
    todo = [i for i, request in enumerate(requests) if len(request.tokens)]
    for i, request in enumerate(requests):
        if i not in todo:
            results[i] = _result(task.tokenizer, request.prefix)
    if todo:
        dtype = torch.float16 if task.options.fp16 else torch.float32
        features = tokenizer.dequantize([requests[i].tokens for i in todo]).to(dtype)
        detect = [row for row, i in enumerate(todo) if prompts[i] is None]
        if detect:
            # As DecodingTask._detect_language: one decoder step on the SOT token.
            lang_tokens, _ = model.detect_language(features[detect], task.tokenizer)
            for row, lang in zip(detect, lang_tokens.tolist(), strict=True):
                prompt = list(task.initial_tokens)
                prompt[task.sot_index + 1] = lang
                prompts[todo[row]] = prompt
        full = [prompts[i] + list(requests[i].prefix) for i in todo]
        for i, text_tokens in zip(todo, _greedy(task, features, full), strict=True):
            results[i] = _result(task.tokenizer, text_tokens)
    return results  # type: ignore[return-value]  # every slot is filled above


def _greedy(
    task: DecodingTask, features: torch.Tensor, prompts: list[list[int]]
) -> list[list[int]]:
    """DecodingTask._main_loop with per-item forced prompts; returns each item's tokens
    after the SOT sequence, up to its first EOT."""
    eot = task.tokenizer.eot
    # Every SOT sequence has the same length, so Whisper's filters (which take one
    # sample_begin for the batch) apply unchanged.
    begin = task.sample_begin
    start = min(len(prompt) for prompt in prompts)
    tokens = torch.tensor([prompt[:start] for prompt in prompts], device=features.device)
    forced = [(row, prompt) for row, prompt in enumerate(prompts) if len(prompt) > start]
    inference = PyTorchInference(task.model, start)
    try:
        while tokens.shape[-1] < begin + task.sample_len:
            logits = inference.logits(tokens, features)[:, -1]
            for logit_filter in task.logit_filters:
                logit_filter.apply(logits, tokens)
            next_tokens = logits.argmax(dim=-1)
            next_tokens[tokens[:, -1] == eot] = eot
            position = tokens.shape[-1]
            for row, prompt in forced:
                if position < len(prompt):
                    next_tokens[row] = prompt[position]
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
            if (tokens[:, -1] == eot).all() or tokens.shape[-1] > task.n_ctx:
                break
    finally:
        inference.cleanup_caching()
    out = []
    for row in tokens.tolist():
        text = row[begin:]
        out.append(text[: text.index(eot)] if eot in text else text)
    return out
