"""The environment rule of the command line: --some-option may come from ICHIGO_SOME_OPTION.

One rule, read in one place (EnvironmentParser.parse_known_args), at one time: right after
argparse has parsed the command line of the subcommand that runs, for the options that command
line did not give. A value from the environment goes through the option's own argparse type,
choices and action, so it is converted and checked exactly as the flag would be; a bad one is a
usage error of that subcommand (exit status 2) naming the variable. Nothing is read while the
parser is built, so `--help` shows the built-in defaults whatever the environment holds, and a
variable meant for one subcommand never troubles another.

The rule, for every option of every subcommand:
- the variable is ICHIGO_ + the option's first long name, upper-cased, dashes as underscores
  (--max-batch: ICHIGO_MAX_BATCH; -o/--output: ICHIGO_OUTPUT);
- the command line wins; an empty variable counts as unset;
- a flag that takes no value (--text) reads 1/true/yes/on as given and 0/false/no/off as not
  given (any case); anything else is an error;
- an option taking several values (--allow-origin) reads them separated by whitespace;
- positional arguments never come from the environment.
Library code (LoadOptions, ServerConfig, ClientOptions) never reads ICHIGO_*.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "ENV_PREFIX",
    "FALSE_WORDS",
    "TRUE_WORDS",
    "EnvironmentParser",
    "environment_name",
    "environment_value",
    "flag_value",
]

ENV_PREFIX = "ICHIGO_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class _Unset:
    """Marks an option the command line did not give (argparse's default would hide that)."""

    def __repr__(self) -> str:
        return "<not given>"


_UNSET = _Unset()


def environment_name(action: argparse.Action) -> str | None:
    """ICHIGO_<OPTION> for an option, from its first long name; None for positionals and the
    options that leave nothing in the namespace (--help, --version)."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    if not longs or argparse.SUPPRESS in (action.dest, action.default):
        return None
    return ENV_PREFIX + longs[0][2:].upper().replace("-", "_")


def environment_value(flag: str) -> str | None:
    """The environment's value for `--flag` under the rule (None if unset or empty).

    For the few checks that must look at a variable no option reads any more (serve's guard
    against the retired ICHIGO_TOKEN); options themselves are filled by EnvironmentParser.
    """
    if not flag.startswith("--"):
        raise ValueError(f"expected a long option, got {flag!r}")
    return _lookup(ENV_PREFIX + flag[2:].upper().replace("-", "_"))


def flag_value(text: str) -> bool:
    """A flag's value from the environment: True for TRUE_WORDS, False for FALSE_WORDS."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected one of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}")


def _lookup(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value is not None and value.strip() else None


class EnvironmentParser(argparse.ArgumentParser):
    """An ArgumentParser that fills the options its command line left out from ICHIGO_*.

    build_parser makes the top-level parser of this class, so every subcommand's parser is
    one too (argparse gives subparsers their parent's class): the subcommand that runs reads
    its own options' variables when it parses, and no other subcommand reads anything.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._relaxed: list[argparse.Action] = []  # required options met by the environment

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        namespace = argparse.Namespace() if namespace is None else namespace
        # argparse sets a default only where the namespace has no value yet: marking the
        # options here tells, after parsing, which ones the command line did not give.
        settable = [
            a
            for a in self._actions
            if environment_name(a) is not None and not hasattr(namespace, a.dest)
        ]
        for action in settable:
            setattr(namespace, action.dest, _UNSET)
        with self._required_met_by_environment(settable):
            namespace, extras = super().parse_known_args(args, namespace)
        for action in settable:
            if getattr(namespace, action.dest) is _UNSET:
                self._fill(action, namespace)
        return namespace, extras

    @contextlib.contextmanager
    def _required_met_by_environment(self, actions: Sequence[argparse.Action]) -> Iterator[None]:
        """A required option set in the environment is not missing from the command line."""
        relaxed = [a for a in actions if a.required and _lookup(environment_name(a) or "")]
        self._relaxed = relaxed
        for action in relaxed:
            action.required = False
        try:
            yield
        finally:
            for action in relaxed:
                action.required = True
            self._relaxed = []

    @contextlib.contextmanager
    def _as_built(self) -> Iterator[None]:
        # --help (or a usage error) inside the window above shows the options as they are
        # declared: the environment never changes what help says.
        relaxed = self._relaxed
        for action in relaxed:
            action.required = True
        try:
            yield
        finally:
            for action in relaxed:
                action.required = False

    def format_usage(self) -> str:
        with self._as_built():
            return super().format_usage()

    def format_help(self) -> str:
        with self._as_built():
            return super().format_help()

    def _fill(self, action: argparse.Action, namespace: argparse.Namespace) -> None:
        """The option's value from its variable, else its default (converted as argparse does)."""
        name = environment_name(action)
        assert name is not None
        setattr(namespace, action.dest, self._default(action))
        text = _lookup(name)
        if text is None:
            return
        flag = next(s for s in action.option_strings if s.startswith("--"))
        try:
            if action.nargs == 0:  # a flag: act as if it were given, or leave the default
                try:
                    given = flag_value(text)
                except ValueError as e:
                    raise argparse.ArgumentError(action, f"{e}, got {text!r}") from None
                if given:
                    action(self, namespace, [], flag)
                elif isinstance(action, argparse.BooleanOptionalAction):
                    setattr(namespace, action.dest, False)
                return
            several = action.nargs not in (None, argparse.OPTIONAL)
            strings = text.split() if several else [text]
            # argparse's own conversion (private, but unchanged since Python 3.2): type,
            # nargs and choices exactly as for the flag, with the flag's error messages.
            action(self, namespace, self._get_values(action, strings), flag)
        except argparse.ArgumentError as e:
            self.error(f"{e} (from the environment variable {name})")

    def _default(self, action: argparse.Action) -> Any:
        # As argparse does for a default it sets itself: a string default goes through `type`.
        if isinstance(action.default, str):
            return self._get_value(action, action.default)
        return action.default
