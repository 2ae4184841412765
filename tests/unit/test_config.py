"""The command line's one configuration rule, in process and torch-free.

Every option --some-option of every subcommand may come from ICHIGO_SOME_OPTION; the command
line wins; a bad value is a usage error naming the variable; --help never shows the
environment. The tests walk every subcommand's parser, so an option added later is covered
without touching this file.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Iterator
from dataclasses import FrozenInstanceError

import pytest

from ichigo_stream import cli, cli_common
from ichigo_stream.config import environment_name, flag_value
from ichigo_stream.errors import IchigoStreamError, ModelLoadError
from ichigo_stream.options import DEFAULT_MODEL, LoadOptions
from ichigo_stream_client.common import speed_arg
from ichigo_stream_client.demo import DemoOptions, _serve_args, demo_options
from ichigo_stream_client.send import SendOptions, send_options
from ichigo_stream_server.config import config_from_args

COMMANDS = ("tokenize", "transcribe", "make-random-model", "models", "serve", "send", "demo", "mic")
# Tried in order for a value the command line accepts (and that differs from the default).
GOOD_VALUES = ("7", "8", "2.5", "cuda", "cuda:1", "float16", "bfloat16", "ws://a.test/", "other")
BAD_VALUE = "maybe"  # no number, device, dtype, choice or flag word


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ICHIGO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "100")  # help text wraps the same in every run


@functools.cache
def parser() -> argparse.ArgumentParser:
    """One parser for the whole module: parsing leaves it as it was (and building is slow)."""
    return cli.build_parser()


def subparsers() -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser()._actions if a.dest == "command"]
    return dict(action.choices)


def options_of(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.Action, str]]:
    for action in parser._actions:
        name = environment_name(action)
        if name is not None:
            yield action, name


def required_argv(parser: argparse.ArgumentParser, leaving_out: argparse.Action) -> list[str]:
    """The least each command needs to parse: its required positionals and options."""
    argv = []
    for action in parser._actions:
        if action is leaving_out:
            continue
        if not action.option_strings and action.nargs not in ("?", "*"):
            argv.append("positional")
        elif action.option_strings and action.required:
            argv += [action.option_strings[0], "required"]
    return argv


def parse(command: str, *argv: str) -> argparse.Namespace:
    return parser().parse_args([command, *argv])


def usage_error(capsys: pytest.CaptureFixture[str], command: str, *argv: str) -> str:
    """The error line of a command line that must be refused with exit status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        parse(command, *argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


def accepted(command: str, action: argparse.Action) -> list[tuple[str, object]]:
    """Value strings the option's own flag accepts, with what each parses to (distinct)."""
    parser = subparsers()[command]
    base = required_argv(parser, action)
    candidates = action.choices if action.choices is not None else GOOD_VALUES
    found: list[tuple[str, object]] = []
    for text in map(str, candidates):
        try:
            value = getattr(parse(command, *base, action.option_strings[-1], text), action.dest)
        except SystemExit:
            continue
        if all(value != seen for _, seen in found):
            found.append((text, value))
    return found


def accepted_value(command: str, action: argparse.Action) -> tuple[str, object]:
    """A value string the option's flag accepts that parses to something else than the default."""
    for text, value in accepted(command, action):
        if value != action.default:
            return text, value
    raise AssertionError(f"{command} {action.option_strings}: add a value it takes to GOOD_VALUES")


def test_every_command_is_covered() -> None:
    assert set(subparsers()) == set(COMMANDS)
    for command, parser in subparsers().items():
        assert list(options_of(parser)), command


def test_every_option_reads_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for command, parser in subparsers().items():
        for action, name in options_of(parser):
            longest = next(s for s in action.option_strings if s.startswith("--"))
            assert name == "ICHIGO_" + longest[2:].upper().replace("-", "_")
            base = required_argv(parser, action)
            if action.nargs == 0:
                given = getattr(parse(command, *base, action.option_strings[0]), action.dest)
                for word, expected in (("1", given), ("On", given), ("no", action.default)):
                    monkeypatch.setenv(name, word)
                    assert getattr(parse(command, *base), action.dest) == expected, (command, name)
            elif action.nargs in (None, "?"):
                text, value = accepted_value(command, action)
                monkeypatch.setenv(name, text)
                assert getattr(parse(command, *base), action.dest) == value, (command, name)
            else:  # several values: whitespace-separated in the variable
                texts = [text for text, _ in accepted(command, action)][:2]
                flag = action.option_strings[0]
                given = getattr(parse(command, *base, flag, *texts), action.dest)
                monkeypatch.setenv(name, "  ".join(texts))
                assert len(given) == 2 and getattr(parse(command, *base), action.dest) == given
            monkeypatch.delenv(name)


def test_the_command_line_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    for command, parser in subparsers().items():
        for action, name in options_of(parser):
            base = required_argv(parser, action)
            flag = action.option_strings[0]
            if action.nargs == 0:  # a flag given beats a variable saying "not given"
                monkeypatch.setenv(name, "false")
                given = getattr(parse(command, *base, flag), action.dest)
                assert given != action.default, (command, name)
            else:
                from_env = accepted_value(command, action)
                [(text, value), *_] = [a for a in accepted(command, action) if a != from_env]
                monkeypatch.setenv(name, from_env[0])
                assert getattr(parse(command, *base, flag, text), action.dest) == value, name
            monkeypatch.delenv(name)


def test_a_bad_variable_is_a_usage_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checked = 0
    for command, parser in subparsers().items():
        for action, name in options_of(parser):
            if action.nargs != 0 and action.type is None and action.choices is None:
                continue  # any string is a value (a path, a name, a token)
            base = required_argv(parser, action)
            monkeypatch.setenv(name, BAD_VALUE)
            line = usage_error(capsys, command, *base)
            monkeypatch.delenv(name)
            assert name in line and f"{command}: error: argument --" in line, line
            if action.nargs != 0:  # the flag's own message, as the command line gives it
                from_flag = usage_error(capsys, command, *base, action.option_strings[0], BAD_VALUE)
                assert from_flag.split(": error: ")[1] in line, (line, from_flag)
            checked += 1
    assert checked > 30


def test_empty_variables_are_unset_and_positionals_never_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ICHIGO_PORT", "")
    monkeypatch.setenv("ICHIGO_TEXT", " ")
    assert (parse("serve").port, parse("serve").text) == (8765, False)
    for variable in ("ICHIGO_FILE", "ICHIGO_FILES", "ICHIGO_OUT", "ICHIGO_URL_ARGUMENT"):
        monkeypatch.setenv(variable, "from-environment")
    assert "the following arguments are required: FILE" in usage_error(capsys, "send")
    assert "required: OUT" in usage_error(capsys, "make-random-model", "--whisper-out", "w")
    assert parse("demo").file == DemoOptions().file
    assert parse("mic").url_argument is None


def test_a_required_option_may_come_from_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No command has a required option any more (make-random-model's --whisper-out has a
    # default): the rule is checked on a command of its own, built as build_parser builds.
    def command(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("out")
        sub.add_argument("--whisper-out", required=True)

    made = cli.build_parser([cli_common.Command("make", "help", command, lambda _: 0)])

    def refused() -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            made.parse_args(["make", "q.pth"])
        assert exit_.value.code == 2
        return capsys.readouterr().err.splitlines()[-1]

    assert "--whisper-out" in refused()
    monkeypatch.setenv("ICHIGO_WHISPER_OUT", "w.pt")
    assert made.parse_args(["make", "q.pth"]).whisper_out == "w.pt"
    monkeypatch.delenv("ICHIGO_WHISPER_OUT")
    assert "--whisper-out" in refused()
    monkeypatch.setenv("ICHIGO_WHISPER_OUT", "w.pt")
    assert parse("make-random-model", "q.pth").whisper_out == "w.pt"


def test_help_never_shows_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def helps() -> dict[str, str]:
        texts = {}
        for command in ("", *COMMANDS):
            with pytest.raises(SystemExit) as exit_:
                cli.build_parser().parse_args([command, "--help"] if command else ["--help"])
            assert exit_.value.code == 0
            texts[command] = capsys.readouterr().out
        return texts

    clean = helps()
    assert "default: 8765" in clean["serve"] and "default: cpu" in clean["tokenize"]
    for parser in subparsers().values():
        for _, name in options_of(parser):
            monkeypatch.setenv(name, BAD_VALUE)
    monkeypatch.setenv("ICHIGO_PORT", "9999")
    monkeypatch.setenv("ICHIGO_MODEL", "/from/the/environment.pth")
    assert helps() == clean
    assert "ICHIGO_SOME_OPTION" in clean[""] and "ICHIGO_SOME_OPTION" in clean["serve"]


def test_flag_words() -> None:
    for word in ("1", "true", "YES", " on "):
        assert flag_value(word) is True
    for word in ("0", "False", "no", "OFF"):
        assert flag_value(word) is False
    for word in ("2", "y", "enabled", ""):
        with pytest.raises(ValueError, match="1/true/yes/on or 0/false/no/off"):
            flag_value(word)


def test_an_option_name_means_one_thing_across_commands() -> None:
    # One variable per name: two commands may share ICHIGO_X only if --x parses the same way
    # (ICHIGO_DEVICE must not be a torch device for serve and a microphone for mic).
    seen: dict[str, tuple[str, tuple[object, ...]]] = {}
    for command, parser in subparsers().items():
        for action, name in options_of(parser):
            kind = (type(action), action.type, action.choices, action.nargs, action.const)
            first = seen.setdefault(name, (command, kind))
            assert first[1] == kind, f"{name}: {first[0]} and {command} disagree"
    assert {"ICHIGO_INPUT_DEVICE", "ICHIGO_CHECKPOINT_FORMAT", "ICHIGO_AUTH_TOKEN"} <= set(seen)


# -- the server's secret and the client's credential -------------------------------------------


def test_server_secret_and_client_credential_are_different_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ICHIGO_AUTH_TOKEN", "server-secret")
    assert config_from_args(parse("serve")).token == "server-secret"
    assert parse("send", "a.wav").token is None and parse("mic").token is None
    monkeypatch.delenv("ICHIGO_AUTH_TOKEN")

    monkeypatch.setenv("ICHIGO_TOKEN", "client-credential")
    assert send_options(parse("send", "a.wav")).token == "client-credential"
    assert parse("mic").token == "client-credential"
    args = parse("serve")
    assert args.auth_token is None
    # The server does not start open because its old variable was renamed.
    with pytest.raises(IchigoStreamError, match="ICHIGO_AUTH_TOKEN"):
        config_from_args(args)
    assert config_from_args(parse("serve", "--auth-token", "")).token is None
    assert config_from_args(parse("serve", "--token", "flag")).token == "flag"  # the old flag
    monkeypatch.setenv("ICHIGO_AUTH_TOKEN", "server-secret")
    assert config_from_args(parse("serve")).token == "server-secret"


def test_no_token_anywhere_serves_open() -> None:
    assert config_from_args(parse("serve")).token is None


# -- device, dtype and speed: one type each, the same everywhere -------------------------------


@pytest.mark.parametrize(
    ("dest", "kind", "bad", "message", "good"),
    [
        ("device", cli_common.device_arg, "tpu", "expected cpu, cuda or cuda:N, got 'tpu'",
         ("cpu", "cuda", "cuda:1")),
        ("dtype", cli_common.dtype_arg, "float64",
         "expected one of float32, float16, bfloat16, got 'float64'", ("float16", "bfloat16")),
        ("speed", speed_arg, "-1", "must be >= 0, got -1", ("0", "inf", "2.5")),
    ],
)  # fmt: skip
def test_device_dtype_and_speed_are_checked_alike(
    dest: str,
    kind: object,
    bad: str,
    message: str,
    good: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    having = {
        command: action
        for command, parser in subparsers().items()
        for action in parser._actions
        if action.dest == dest
    }
    expected = {"speed": {"send", "demo"}}.get(dest, {"tokenize", "transcribe", "serve", "demo"})
    assert set(having) == expected
    for command, action in having.items():
        assert action.type is kind, command
        base = required_argv(subparsers()[command], action)
        line = usage_error(capsys, command, *base, f"--{dest}", bad)
        assert line == f"ichigo-stream {command}: error: argument --{dest}: {message}"
        monkeypatch.setenv(f"ICHIGO_{dest.upper()}", bad)
        env_line = usage_error(capsys, command, *base)
        assert env_line == f"{line} (from the environment variable ICHIGO_{dest.upper()})"
        monkeypatch.delenv(f"ICHIGO_{dest.upper()}")
        for text in good:
            assert getattr(parse(command, *base, f"--{dest}", text), dest) == kind(text)
    assert "must be >= 0, got nan" in usage_error(capsys, "send", "a.wav", "--speed", "nan")


def test_load_options_check_device_and_dtype_and_ignore_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ModelLoadError, match=r"--device 'tpu': expected cpu, cuda or cuda:N"):
        LoadOptions(device="tpu")
    with pytest.raises(ModelLoadError, match=r"--dtype 'float64': expected one of float32"):
        LoadOptions(dtype="float64")
    assert LoadOptions(device="cuda:0", dtype="bfloat16").device == "cuda:0"
    for name, value in (("MODEL", "env.pth"), ("DEVICE", "cuda"), ("DTYPE", "float16")):
        monkeypatch.setenv(f"ICHIGO_{name}", value)
    assert LoadOptions() == LoadOptions(DEFAULT_MODEL, None, "cpu", "float32")
    # The command line, by contrast, reads them: through the one rule, into LoadOptions.
    assert cli_common.load_options(parse("tokenize", "a.wav")) == LoadOptions(
        "env.pth", None, "cuda", "float16"
    )


# -- typed options below the command line ------------------------------------------------------


def test_send_and_demo_build_frozen_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICHIGO_URL", "ws://from-env:1/v1/stream")
    options = send_options(parse("send", "a.wav", "--speed", "0", "--no-reconnect", "--text"))
    assert options == SendOptions(
        file="a.wav", url="ws://from-env:1/v1/stream", text=True, reconnect=False, speed=0.0
    )
    with pytest.raises(FrozenInstanceError):
        options.speed = 2.0  # type: ignore[misc]
    # A URL given as the argument wins over ICHIGO_URL, as any command-line value does.
    given = "ws://arg:2/v1/stream"
    assert send_options(parse("send", "a.wav", given)).url == given
    client = options.client_options()
    assert (client.url, client.reconnect, client.start.text) == (options.url, None, True)

    demo = demo_options(parse("demo", "--device", "cuda", "--no-text", "--speed", "3"))
    assert demo == DemoOptions(device="cuda", speed=3.0, text=False)
    command = _serve_args(demo)
    assert command[command.index("--device") + 1] == "cuda" and "--text" not in command
    assert command[command.index("--auth-token") + 1] == ""  # its own client sends no token
    assert "--model" not in command  # None: the server's default


def test_mic_input_device_is_not_the_model_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from ichigo_stream_client.mic import mic_options

    monkeypatch.setenv("ICHIGO_DEVICE", "cuda")
    assert mic_options(parse("mic")).device is None
    assert mic_options(parse("mic", "--device", "pulse")).device == "pulse"  # the old spelling
    monkeypatch.setenv("ICHIGO_INPUT_DEVICE", "2")
    assert mic_options(parse("mic")).device == "2"


def test_max_text_tokens_reaches_the_server_config_within_whispers_cap() -> None:
    assert config_from_args(parse("serve")).max_text_tokens is None  # Whisper's own, 224
    assert config_from_args(parse("serve", "--max-text-tokens", "12")).max_text_tokens == 12
    for bad in ("0", "225", "1.5"):
        with pytest.raises(SystemExit):
            parse("serve", "--max-text-tokens", bad)


def test_compile_option_reaches_load_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile (and ICHIGO_COMPILE) -> LoadOptions.compile, for tokenize and serve alike."""
    assert cli_common.load_options(parse("tokenize", "x.wav")).compile == "none"
    assert cli_common.load_options(parse("tokenize", "x.wav", "--compile", "buckets")).compile == (
        "buckets"
    )
    monkeypatch.setenv("ICHIGO_COMPILE", "inductor")
    assert config_from_args(parse("serve")).load.compile == "inductor"
    with pytest.raises(ModelLoadError, match="--compile 'graphs': CUDA graphs need --device cuda"):
        LoadOptions(compile="graphs")
    assert LoadOptions(device="cuda", compile="graphs").compile == "graphs"
