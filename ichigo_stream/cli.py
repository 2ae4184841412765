"""The ichigo-stream command: one small function pair (arguments, run) per subcommand.

Configuration flows one way: command line (and ICHIGO_* variables, by the one rule of
ichigo_stream.config, applied while parsing) -> frozen options dataclasses -> constructors.
Nothing below a subcommand's run function sees the argparse Namespace.
Exit status: 0 success; 1 some input files failed (the others were still processed);
2 usage, configuration or model-loading errors; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from . import __version__
from .cli_common import (
    DTYPE_NAMES,
    EXIT_ERROR,
    EXIT_FILES_FAILED,
    EXIT_INTERRUPTED,
    PROG,
    Command,
    HelpFormatter,
    error_line,
    missing_extra_message,
)
from .cli_offline import OFFLINE_COMMANDS
from .config import ENV_PREFIX, FALSE_WORDS, TRUE_WORDS, EnvironmentParser
from .errors import IchigoStreamError

__all__ = ["DTYPE_NAMES", "build_parser", "main"]


COMMANDS_GROUP = "ichigo_stream.commands"
# --help lists the applications' commands in this order; others (plug-ins) follow by name.
APPLICATION_ORDER = ("serve", "send", "demo", "mic")


ENVIRONMENT_HELP = f"""\
environment: every option --some-option of a command may also be set as
ICHIGO_SOME_OPTION (e.g. ICHIGO_PORT=9000, ICHIGO_MAX_BATCH=8). The command line wins;
an empty variable counts as unset; flags without a value read {"/".join(TRUE_WORDS)} or
{"/".join(FALSE_WORDS)}; options taking several values read them separated by spaces;
positional arguments never come from the environment. The server's secret is
ICHIGO_AUTH_TOKEN (serve --auth-token), the clients' credential ICHIGO_TOKEN (--token).
"""


ENVIRONMENT_NOTE = (
    "environment: --some-option may also come from ICHIGO_SOME_OPTION (the command line\n"
    f"wins); see `{PROG} --help`.\n"
)
assert ENV_PREFIX == "ICHIGO_"  # the help texts spell it out


def all_commands() -> tuple[Command, ...]:
    """Every subcommand: the library's offline ones, then those the applications register.

    The applications (server/ -> ichigo_stream_server, client/ -> ichigo_stream_client) depend
    on this library, never the other way: they declare their commands as entry points in
    pyproject.toml, and this loads what the installed metadata names.
    """
    found = {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}
    applications = []
    for name in sorted(found, key=_listing_position):
        command = found[name].load()
        if not isinstance(command, Command) or command.name != name:
            raise IchigoStreamError(f"entry point {name!r} of {COMMANDS_GROUP} is not its Command")
        applications.append(command)
    return (*OFFLINE_COMMANDS, *applications)


def _listing_position(name: str) -> tuple[int, str]:
    known = name in APPLICATION_ORDER
    return (APPLICATION_ORDER.index(name) if known else len(APPLICATION_ORDER), name)


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    parser = EnvironmentParser(
        prog=PROG,
        description="Real-time streaming speech tokenizer (Ichigo-Whisper).",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands or all_commands():
        # Subparsers are of the parent's class (EnvironmentParser): each reads its own options'
        # variables when it is the one parsing, and only then.
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=f"{command.epilog}{ENVIRONMENT_NOTE}",
            formatter_class=HelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ichigo-stream console script; returns the exit status."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except IchigoStreamError as e:
        error_line(str(e))
        return EXIT_ERROR
    except ModuleNotFoundError as e:
        # An optional extra that is not installed: one line naming it, never a traceback.
        message = missing_extra_message(e, getattr(args, "command", None))
        if message is None:
            raise
        error_line(message)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, and keep Python's final flush
        # of stdout from raising again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FILES_FAILED


if __name__ == "__main__":
    sys.exit(main())
