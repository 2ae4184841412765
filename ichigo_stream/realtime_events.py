"""OpenAI Realtime transcription events: the session configuration, read and echoed, and
the server events, built. No state, no sockets: realtime.py is the session that uses them.

Both shapes of the session update are read: GA's `session.update` with `session.type:
"transcription"` and `session.audio.input.{format, transcription, turn_detection,
noise_reduction}`, and the beta `transcription_session.update` (`input_audio_format`,
`input_audio_transcription`, `turn_detection`) that older LiveKit and Pipecat versions send.
A field left out keeps its current value, as OpenAI's partial updates do. docs/protocol.md
("OpenAI Realtime") maps every field onto what the server does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import SegmentationError
from .protocol import LLM_FORMATS, MAX_SAMPLE_RATE, MAX_VAD_MS, MIN_SAMPLE_RATE
from .segmentation import VadOptions

REALTIME_PATH = "/v1/realtime"
# The subprotocol OpenAI's browser clients offer (with the key as another one): answered.
REALTIME_SUBPROTOCOL = "realtime"
OPENAI_SAMPLE_RATE = 24_000  # audio/pcm's rate, and the only one OpenAI itself accepts
BETA_FORMATS = {"pcm16": OPENAI_SAMPLE_RATE}  # the beta's input_audio_format values we read
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less: input_audio_buffer_commit_empty
# webrtcvad's 4 aggressiveness modes stand for quarters of OpenAI's threshold (0..1): the
# default 0.5 is mode 2, ours; threshold = mode / 4 when echoed.
VAD_MODES = 4
ICHIGO_EVENT_PREFIX = "ichigo."  # extension events: a strict client ignores this namespace


class RealtimeError(Exception):
    """A client event the session refuses: an `error` event (OpenAI's shape), the session
    goes on (OpenAI's errors are recoverable unless the connection closes)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class IchigoOptions:
    """`session.ichigo`: the extension events a client opts into."""

    tokens: bool = False  # ichigo.tokens.completed for every item
    partials: bool = False  # ichigo.tokens.partial while an item is open
    llm_format: str | None = None  # "ichigo" | "ichigo-rle": the LLM text in completed


@dataclass(frozen=True)
class RealtimeConfig:
    """A transcription session's configuration; the default is OpenAI's (24 kHz PCM16,
    server VAD) with the server's own VAD settings."""

    sample_rate: int = OPENAI_SAMPLE_RATE
    manual: bool = False  # turn_detection null: the client commits each item
    vad: VadOptions = field(default_factory=VadOptions)
    turn_detection_type: str = "server_vad"  # echoed; semantic_vad runs the same VAD
    language: str | None = None
    model: str | None = None  # the transcription model the client named: echoed, not used
    prompt: str | None = None  # echoed, not used (Ichigo's decoder takes no prompt)
    ichigo: IchigoOptions = field(default_factory=IchigoOptions)


# -- reading a session update ---------------------------------------------------------------


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """obj[key] of the given JSON kind (None if absent or null)."""
    value = obj.get(key)
    if value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = {str: "a string", int: "an integer", float: "a number", dict: "an object"}
        names[bool] = "a boolean"
        expected = " or ".join(names.get(k, k.__name__) for k in kinds)
        raise RealtimeError("invalid_type", f"{where}.{key} must be {expected}", f"{where}.{key}")
    return value


def _rate(rate: Any, param: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise RealtimeError("invalid_type", f"{param} must be an integer", param)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise RealtimeError(
            "invalid_value",
            f"sample rate {rate} unsupported: expected {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}",
            param,
        )
    return rate


def _format(raw: Any, where: str) -> int:
    """GA audio.input.format -> sample rate."""
    if not isinstance(raw, dict):
        raise RealtimeError("invalid_type", f"{where} must be an object", where)
    kind = raw.get("type", "audio/pcm")
    if kind != "audio/pcm":
        raise RealtimeError(
            "invalid_value", f"format {kind!r} unsupported: only audio/pcm", f"{where}.type"
        )
    if raw.get("rate") is None:
        return OPENAI_SAMPLE_RATE
    return _rate(raw["rate"], f"{where}.rate")


def _turn_detection(raw: Any, config: RealtimeConfig, where: str) -> RealtimeConfig:
    """turn_detection -> the VAD (its fields over the current ones), or manual commits."""
    if raw is None:
        return replace(config, manual=True)
    if not isinstance(raw, dict):
        raise RealtimeError("invalid_type", f"{where} must be an object or null", where)
    kind = raw.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise RealtimeError(
            "invalid_value", f"turn_detection type {kind!r} unsupported", f"{where}.type"
        )
    vad = config.vad
    values: dict[str, Any] = {}
    threshold = _get(raw, "threshold", (int, float), where)
    if threshold is not None:
        if not 0 <= threshold <= 1:
            raise RealtimeError("invalid_value", "threshold must be in 0..1", f"{where}.threshold")
        values["aggressiveness"] = min(VAD_MODES - 1, int(threshold * VAD_MODES))
    padding = _get(raw, "prefix_padding_ms", int, where)
    if padding is not None:
        if not 0 <= padding <= MAX_VAD_MS:
            raise RealtimeError(
                "invalid_value",
                f"prefix_padding_ms must be in 0..{MAX_VAD_MS}",
                f"{where}.prefix_padding_ms",
            )
        values["preroll_ms"] = padding
    silence = _get(raw, "silence_duration_ms", int, where)
    if silence is not None:
        if not 2 * vad.frame_ms <= silence <= MAX_VAD_MS:
            raise RealtimeError(
                "invalid_value",
                f"silence_duration_ms must be in {2 * vad.frame_ms}..{MAX_VAD_MS}",
                f"{where}.silence_duration_ms",
            )
        # The tail (audio kept after the last voiced frame) must stay shorter than the
        # silence that ends a segment: halve it when the silence asked for is short.
        values["min_silence_ms"] = silence
        values["tail_ms"] = min(vad.tail_ms, silence // 2)
    try:
        vad = replace(vad, **values)
    except SegmentationError as e:  # e.g. a padding the segment cap cannot hold
        raise RealtimeError("invalid_value", str(e), where) from None
    return replace(config, manual=False, vad=vad, turn_detection_type=kind)


def _transcription(raw: Any, config: RealtimeConfig, where: str) -> RealtimeConfig:
    if raw is None:
        return config  # null turns OpenAI's transcription off: ours is what the session is
    if not isinstance(raw, dict):
        raise RealtimeError("invalid_type", f"{where} must be an object or null", where)
    language = _get(raw, "language", str, where)
    model = _get(raw, "model", str, where)
    prompt = _get(raw, "prompt", str, where)
    return replace(
        config,
        language=language if "language" in raw else config.language,
        model=model if "model" in raw else config.model,
        prompt=prompt if "prompt" in raw else config.prompt,
    )


def _ichigo(raw: Any, config: RealtimeConfig) -> RealtimeConfig:
    where = "session.ichigo"
    if not isinstance(raw, dict):
        raise RealtimeError("invalid_type", f"{where} must be an object", where)
    current = config.ichigo
    tokens = _get(raw, "tokens", bool, where)
    partials = _get(raw, "partials", bool, where)
    llm_format = _get(raw, "llm_format", str, where)
    if llm_format is not None and llm_format not in LLM_FORMATS:
        raise RealtimeError(
            "invalid_value",
            f"llm_format {llm_format!r} unsupported: expected null or {list(LLM_FORMATS)}",
            f"{where}.llm_format",
        )
    ichigo = IchigoOptions(
        tokens=current.tokens if tokens is None else tokens,
        partials=current.partials if partials is None else partials,
        llm_format=llm_format if "llm_format" in raw else current.llm_format,
    )
    return replace(config, ichigo=ichigo)


def apply_session_update(config: RealtimeConfig, session: Any) -> RealtimeConfig:
    """GA `session.update`'s session object over the current configuration."""
    if not isinstance(session, dict):
        raise RealtimeError("invalid_type", "session must be an object", "session")
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise RealtimeError(
            "invalid_value",
            f"session type {kind!r} unsupported: this server transcribes (type transcription)",
            "session.type",
        )
    audio = _get(session, "audio", dict, "session") or {}
    audio_input = _get(audio, "input", dict, "session.audio") or {}
    where = "session.audio.input"
    if audio_input.get("format") is not None:
        config = replace(config, sample_rate=_format(audio_input["format"], f"{where}.format"))
    if "transcription" in audio_input:
        config = _transcription(audio_input["transcription"], config, f"{where}.transcription")
    if "turn_detection" in audio_input:
        config = _turn_detection(audio_input["turn_detection"], config, f"{where}.turn_detection")
    if session.get("ichigo") is not None:
        config = _ichigo(session["ichigo"], config)
    return config


def apply_beta_update(config: RealtimeConfig, session: Any) -> RealtimeConfig:
    """The beta `transcription_session.update`'s session object over the configuration."""
    if not isinstance(session, dict):
        raise RealtimeError("invalid_type", "session must be an object", "session")
    audio_format = _get(session, "input_audio_format", str, "session")
    if audio_format is not None:
        if audio_format not in BETA_FORMATS:
            raise RealtimeError(
                "invalid_value",
                f"input_audio_format {audio_format!r} unsupported: only pcm16",
                "session.input_audio_format",
            )
        config = replace(config, sample_rate=BETA_FORMATS[audio_format])
    if "input_audio_transcription" in session:
        raw = session["input_audio_transcription"]
        config = _transcription(raw, config, "session.input_audio_transcription")
    if "turn_detection" in session:
        config = _turn_detection(session["turn_detection"], config, "session.turn_detection")
    if session.get("ichigo") is not None:
        config = _ichigo(session["ichigo"], config)
    return config


# -- echoing the configuration ----------------------------------------------------------------


def _turn_detection_echo(config: RealtimeConfig) -> dict[str, Any] | None:
    if config.manual:
        return None
    return {
        "type": config.turn_detection_type,
        "threshold": config.vad.aggressiveness / VAD_MODES,
        "prefix_padding_ms": config.vad.preroll_ms,
        "silence_duration_ms": config.vad.min_silence_ms,
    }


def _transcription_echo(config: RealtimeConfig) -> dict[str, Any]:
    return {"model": config.model, "language": config.language, "prompt": config.prompt}


def _ichigo_echo(config: RealtimeConfig) -> dict[str, Any]:
    ichigo = config.ichigo
    return {"tokens": ichigo.tokens, "partials": ichigo.partials, "llm_format": ichigo.llm_format}


def session_object(session_id: str, config: RealtimeConfig) -> dict[str, Any]:
    """The GA session object of session.created / session.updated: the effective values."""
    return {
        "type": "transcription",
        "object": "realtime.transcription_session",
        "id": session_id,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": config.sample_rate},
                "transcription": _transcription_echo(config),
                "turn_detection": _turn_detection_echo(config),
                "noise_reduction": None,
            }
        },
        "include": None,
        "ichigo": _ichigo_echo(config),
    }


def beta_session_object(session_id: str, config: RealtimeConfig) -> dict[str, Any]:
    """The beta shape, for transcription_session.updated."""
    return {
        "object": "realtime.transcription_session",
        "id": session_id,
        "input_audio_format": "pcm16",
        "input_audio_transcription": _transcription_echo(config),
        "turn_detection": _turn_detection_echo(config),
        "input_audio_noise_reduction": None,
        "include": None,
        "ichigo": _ichigo_echo(config),
    }


# -- server events --------------------------------------------------------------------------


@dataclass(frozen=True)
class RealtimeEvent:
    """One server event: what actions.Send carries (to_json), `type` first on the wire."""

    type: str
    fields: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.fields}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


def error_fields(
    code: str,
    message: str,
    param: str | None = None,
    client_event_id: str | None = None,
    kind: str = "invalid_request_error",
) -> dict[str, Any]:
    """The `error` object of an error event, in OpenAI's shape."""
    return {
        "error": {
            "type": kind,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        }
    }
