"""Server text never reaches a terminal as control codes: one rule (ichigo_stream.terminal's
printable), used by every printer of the command-line clients."""

from __future__ import annotations

import io
import json
import unicodedata

import pytest

from ichigo_stream.cli_common import error_line
from ichigo_stream.client import ErrorMessage, Segment, parse_server_message
from ichigo_stream.terminal import printable
from ichigo_stream_client import send
from ichigo_stream_client.mic import MicApp, MicOptions
from ichigo_stream_client.terminal_view import LiveView, PlainView

# An OSC that retitles the window (ended by BEL), a CSI that clears the screen, a CR that
# returns to the line's start, the 8-bit CSI and OSC, a bidirectional override and isolate,
# a line separator, DEL and a backspace.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\r"
MORE_HOSTILE = "a\x9b2Jb\x9d0;t\x9cc\u202eevil\u2066d\u2069e\u2028f\x7fg\x08h\ti\nj"


def _controls(text: str) -> list[str]:
    """Characters a terminal may act on: C0/C1 controls, format characters (bidi), separators."""
    return [
        c
        for c in text
        if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") and c not in "\u200c\u200d"
    ]


def _segment(text: str | None = HOSTILE, llm: str | None = None) -> Segment:
    # As the client gets it: parsed from the server's JSON, escapes and all.
    wire = {
        "type": "segment",
        "segment": 3,
        "start": 1.0,
        "end": 2.5,
        "tokens": [1, 2, 3],
        "text": text,
        "llm": llm,
        "endpoint_ms": 12.0,
    }
    message = parse_server_message(json.dumps(wire))
    assert isinstance(message, Segment) and message.text == text
    return message


def test_printable_replaces_every_control_and_keeps_the_text() -> None:
    assert printable(HOSTILE) == " ]0;pwned  [2J "
    cleaned = printable(MORE_HOSTILE)
    assert _controls(cleaned) == []
    assert cleaned.split() == ["a", "2Jb", "0;t", "c", "evil", "d", "e", "f", "g", "h", "i", "j"]
    for kept in ("Tiếng Việt", "日本語のテキスト", "naïve café", "می‌خواهم", "👩‍💻", "a b"):
        assert printable(kept) == kept  # letters, marks, CJK, joiners (ZWNJ, ZWJ), space


def test_send_segment_lines_carry_no_control_characters() -> None:
    line = send.segment_line(_segment(HOSTILE, llm="<|sound_start|>\x1b[31m<|sound_end|>"))
    first, llm = line.split("\n")  # the LLM rendering is send's own second line
    assert first.startswith("[   1.000 -    2.500] #3") and "]0;pwned" in first
    assert _controls(first) == [] and _controls(llm) == []
    assert llm.strip() == "<|sound_start|> [31m<|sound_end|>"


def test_send_notes_carry_no_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    send.note(f"server error internal (segment 3): {HOSTILE}{MORE_HOSTILE}")
    err = capsys.readouterr().err
    assert err.endswith("\n") and _controls(err[:-1]) == []


def test_error_line_carries_no_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    # The CLI's one error line, e.g. a RemoteError quoting the server's message.
    error_line(f"the server refused: {HOSTILE}{MORE_HOSTILE}")
    err = capsys.readouterr().err
    assert err.endswith("\n") and _controls(err[:-1]) == []
    assert "pwned" in err


class _NoCapture:
    def captured_at(self, seconds: float) -> float | None:
        return None


def test_mic_views_carry_no_control_characters_from_the_server() -> None:
    out, err = io.StringIO(), io.StringIO()
    app = MicApp(MicOptions(), PlainView(out, err))
    app._on_event(_segment(HOSTILE, llm=MORE_HOSTILE), _NoCapture())  # type: ignore[arg-type]
    app._on_event(ErrorMessage("internal", HOSTILE + MORE_HOSTILE, 4), _NoCapture())  # type: ignore[arg-type]
    lines = out.getvalue().splitlines() + err.getvalue().splitlines()
    assert len(lines) == 3 and "pwned" in lines[0] and "pwned" in lines[2]
    assert all(_controls(line) == [] for line in lines), lines

    # The live view writes its own cursor moves; none of the server's sequences gets through.
    screen = io.StringIO()
    live = MicApp(MicOptions(), LiveView(screen, color=False))
    live._on_event(_segment(HOSTILE), _NoCapture())  # type: ignore[arg-type]
    live._on_event(ErrorMessage("internal", HOSTILE, None), _NoCapture())  # type: ignore[arg-type]
    live.view.close()
    written = screen.getvalue()
    assert written.count("pwned") == 2
    for sequence in ("\x1b]", "\x07", "\x1b[2J"):
        assert sequence not in written
