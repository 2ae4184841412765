"""The command line without the model side: --help of every command (help, defaults,
metavars, one name per meaning, VAD options), stream URLs, and the one-line messages of a
base install (no torch). Building the parser imports no torch.

(The offline commands themselves run in model/test_cli.py.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ichigo_stream.cli import build_parser
from ichigo_stream.cli_common import missing_extra_message
from ichigo_stream.client import ClientOptions
from ichigo_stream.client_session import ClientSession
from ichigo_stream.errors import IchigoStreamError
from ichigo_stream.messages import Capabilities, Start
from ichigo_stream.model_info import ModelInfo
from ichigo_stream.protocol import parse_start
from ichigo_stream.segmentation import VadOptions
from ichigo_stream.session import ServerSession
from ichigo_stream_client.common import check_stream_url

ROOT = Path(__file__).resolve().parents[2]
MODEL = ModelInfo(
    name="fake.pth", sha256="0" * 64, codebook_size=2561, mask_token=2048, token_rate=25,
    whisper="medium",
)  # fmt: skip


def run_cli(*args: str, module: str = "ichigo_stream") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICHIGO_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_help_is_light_and_documents_formats() -> None:
    code = "import sys, ichigo_stream.cli as c; c.build_parser(); print('torch' in sys.modules)"
    light = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert light.stdout.strip() == "False"
    top = run_cli("--help", module="ichigo_stream.cli")
    assert top.returncode == 0 and all(
        c in top.stdout for c in ("tokenize", "transcribe", "make-random-model")
    )
    sub = run_cli("tokenize", "--help")
    assert sub.returncode == 0 and "<|sound_start|>" in sub.stdout and "STEM-0.png" in sub.stdout


# -- every command's --help ------------------------------------------------------------------

COMMANDS = ("tokenize", "transcribe", "make-random-model", "serve", "send", "demo", "mic")
STREAMING = ("serve", "send", "mic")
VAD_OPTIONS = ("--vad-aggressiveness", "--min-silence-ms", "--tail-ms", "--preroll-ms",
               "--max-segment-s")  # fmt: skip
# The metavar style: an upper-case noun (N, MS, S, PATH, URL, REF, SECRET, ...) or {choices}.
METAVAR = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*|\{[a-z0-9,.-]+\}")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help line of one option as --help prints it (defaults expanded)."""
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def test_every_command_is_checked() -> None:
    assert set(subparsers()) >= set(COMMANDS)


def test_every_option_has_help_and_shows_its_default() -> None:
    problems = []
    for name, parser in subparsers().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = option_help(parser, action)
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not text.strip():
                problems.append(f"{where}: no help text")
            # A value-taking option says its default (or what leaving it out means);
            # flags (store_true) need none.
            elif action.option_strings and action.nargs != 0 and "default" not in text:
                problems.append(f"{where}: no default in {text!r}")
    assert not problems, "\n".join(problems)


def test_defaults_are_shown_in_the_printed_help() -> None:
    serve = run_cli("serve", "--help")
    assert serve.returncode == 0
    text = " ".join(serve.stdout.split())
    for shown in ("--max-sessions N open sessions at most", "(default: 256)",
                  "--max-message-kb KB", "(default: 1024)", "--idle-timeout-s S",
                  "--host HOST", "(default: 127.0.0.1)", "--min-silence-ms MS"):  # fmt: skip
        assert shown in text, shown


def test_one_metavar_style() -> None:
    problems = []
    for name, parser in subparsers().items():
        for action in parser._actions:
            if action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue
            metavar = action.metavar
            if metavar is None and action.choices is None:
                problems.append(f"{name} {action.option_strings or action.dest}: no metavar")
            elif metavar is not None and not METAVAR.fullmatch(str(metavar)):
                problems.append(f"{name} {action.option_strings or action.dest}: {metavar!r}")
    assert not problems, "\n".join(problems)


def test_one_name_one_meaning() -> None:
    """--device is the torch device wherever it is the first name; the mic's input device
    has its own first name (so ICHIGO_DEVICE never picks a microphone)."""
    for name, parser in subparsers().items():
        for action in parser._actions:
            if action.option_strings[:1] == ["--device"]:
                assert "torch device" in (action.help or ""), name
    mic = subparsers()["mic"]
    assert any(a.option_strings[:1] == ["--input-device"] for a in mic._actions)


def test_streaming_commands_take_the_vad_options_of_tokenize() -> None:
    for name in ("tokenize", "transcribe", *STREAMING):
        flags = {s for a in subparsers()[name]._actions for s in a.option_strings}
        assert set(VAD_OPTIONS) <= flags, name


VAD_ARGS = ["--vad-aggressiveness", "3", "--min-silence-ms", "300", "--tail-ms", "100",
            "--preroll-ms", "150", "--max-segment-s", "12.5"]  # fmt: skip
VAD_SET = VadOptions(aggressiveness=3, min_silence_ms=300, tail_ms=100, preroll_ms=150,
                     max_segment_s=12.5)  # fmt: skip


def test_send_and_mic_put_the_vad_options_into_the_start_message() -> None:
    from ichigo_stream_client.mic import mic_options
    from ichigo_stream_client.send import send_options

    args = build_parser().parse_args(["send", "a.wav", *VAD_ARGS])
    start = send_options(args).client_options().start
    assert start.vad == VAD_SET
    sent = Start(start).to_dict()["vad"]
    assert sent["min_silence_ms"] == 300 and sent["max_segment_s"] == 12.5
    args = build_parser().parse_args(["mic", *VAD_ARGS])
    assert mic_options(args).client_options().start.vad == VAD_SET
    # Unset, they are the library's defaults (what tokenize uses).
    args = build_parser().parse_args(["send", "a.wav"])
    assert send_options(args).client_options().start.vad == VadOptions()


def test_a_bad_vad_combination_is_one_line() -> None:
    proc = run_cli("send", "a.wav", "--min-silence-ms", "100", "--tail-ms", "200")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "VAD options" in proc.stderr


def test_serve_vad_options_are_the_defaults_of_sessions_that_send_none() -> None:
    from ichigo_stream_server.config import config_from_args

    config = config_from_args(build_parser().parse_args(["serve", "--auth-token", "", *VAD_ARGS]))
    assert config.vad == VAD_SET
    assert config_from_args(build_parser().parse_args(["serve", "--auth-token", ""])).vad == (
        VadOptions()
    )
    # No vad object: all the server's; a partial one: the fields it gives over the server's.
    assert parse_start({"type": "start"}, VAD_SET).vad == VAD_SET
    partial = parse_start({"type": "start", "vad": {"aggressiveness": 1}}, VAD_SET).vad
    assert partial == dataclasses.replace(VAD_SET, aggressiveness=1)
    assert parse_start({"type": "start"}).vad == VadOptions()  # no server defaults: built-in
    # And a session of a server with those defaults segments with them.
    capabilities = Capabilities()
    session = ServerSession("s", MODEL, capabilities, 0.0, vad_defaults=VAD_SET)
    session.receive(json.dumps({"type": "start"}), 0.0)
    assert session.options is not None and session.options.vad == VAD_SET


def test_transcribe_has_a_jsonl_format() -> None:
    args = build_parser().parse_args(["transcribe", "a.wav", "--format", "jsonl"])
    assert args.format == "jsonl"
    assert build_parser().parse_args(["transcribe", "a.wav"]).format == "text"
    sub = run_cli("transcribe", "--help")
    assert '"text"' in sub.stdout and "jsonl" in sub.stdout


# -- wrong stream URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "right"),
    [
        ("ws://127.0.0.1:8765", "ws://127.0.0.1:8765/v1/stream"),
        ("ws://127.0.0.1:8765/", "ws://127.0.0.1:8765/v1/stream"),
        ("http://127.0.0.1:8765/", "ws://127.0.0.1:8765/v1/stream"),
        ("https://example.org:443/v1/stream", "wss://example.org:443/v1/stream"),
        ("127.0.0.1:8765", "ws://127.0.0.1:8765/v1/stream"),
    ],
)
def test_a_wrong_url_is_refused_before_connecting_with_the_right_one(url: str, right: str) -> None:
    with pytest.raises(IchigoStreamError, match=re.escape(f"the stream is at {right}")):
        check_stream_url(url)


def test_a_good_url_passes() -> None:
    for url in ("ws://h:1/v1/stream", "wss://h/v1/stream?token=x", "ws://h:1/proxy/stream"):
        assert check_stream_url(url) == url


def test_a_wrong_url_on_the_command_line_is_one_line_at_once() -> None:
    proc = run_cli("send", "a.wav", "ws://127.0.0.1:9")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "ichigo-stream: error: ws://127.0.0.1:9: no path: the stream is at "
        "ws://127.0.0.1:9/v1/stream"
    )


@pytest.mark.parametrize("status", [200, 404])
def test_a_page_or_no_stream_at_the_path_names_the_right_url(status: int) -> None:
    options = ClientOptions(url="ws://127.0.0.1:8765/stream", reconnect=None)
    session = ClientSession(options, 0.0)
    session.connect(0.0)
    events = session.refused(status, f"HTTP {status}", 0.0)
    error = session.error
    assert error is not None, events
    assert f"HTTP {status}" in str(error)
    assert "the stream is at ws://127.0.0.1:8765/v1/stream" in str(error)


# -- only the base install (no torch, no whisper) ----------------------------------------------

# Runs the CLI as if torch and whisper were not installed: a meta-path finder ahead of the
# real ones answers every import of them with ModuleNotFoundError (what a base-only install,
# .ci's .venv-base, does), whatever this interpreter has.
WITHOUT_MODEL_EXTRA = """\
import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "whisper"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
from ichigo_stream.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "args",
    [
        ("tokenize", "a.wav"),
        ("transcribe", "a.wav"),
        ("serve", "--port", "0", "--auth-token", ""),
        ("demo",),
        ("make-random-model", "out.pth"),
    ],
)
def test_without_the_model_extra_one_line_names_it(args: tuple[str, ...], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICHIGO_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_MODEL_EXTRA, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ichigo-stream: error: ")
    assert "pip install 'ichigo-stream[model]'" in lines[0] and args[0] in lines[0]
    assert not list(tmp_path.iterdir())  # nothing was written


def test_a_missing_extra_met_while_running_is_one_line() -> None:
    error = ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    message = missing_extra_message(error, "tokenize")
    assert message is not None and "pip install 'ichigo-stream[plot]'" in message
    error = ModuleNotFoundError("No module named 'sounddevice'", name="sounddevice")
    assert "ichigo-stream[mic]" in (missing_extra_message(error, "mic") or "")
    # Any other module is a bug, not a missing extra: the traceback stays.
    assert missing_extra_message(ModuleNotFoundError("x", name="nosuch"), "serve") is None
