"""What every plastix command line shares: errors in one line, values checked where they
enter (`plastix.checks` bounds as ``argparse`` types), flags that do not apply refused
by name, and a ``main`` that turns the user's mistakes into one line and exit status 2.

    parser = cli.Parser(description=...)
    parser.add_argument("--hidden", type=checks.SIZE, default=32)
    args, given = cli.parse(parser, argv)      # given: dest -> the flag as typed
    cli.refuse(given, ["seq_len"], "to --task assoc_retrieval")

    if __name__ == "__main__":
        cli.run(main)

A user's mistake is a ``ValueError`` (a `plastix.checks.FieldError` among them), an
``OSError`` (a missing, unreadable or unwritable file) or a missing optional package
(`plastix.checks.MissingDependency`): `run` prints it as ``error: <message>`` on one
line. Set ``PLASTIX_TRACEBACK=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable, Iterable

from plastix.checks import FieldError, MissingDependency

USER_ERRORS = (ValueError, OSError, MissingDependency)
EXIT_USAGE = 2


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with the description as written (its example commands keep their lines)
    and every option's default after its help, also for an option without help text
    (``argparse.ArgumentDefaultsHelpFormatter`` skips those); a help that states its
    default itself, as ``(default: ...)``, is left as it is."""

    def _format_action(self, action):
        if (action.option_strings and action.default is not argparse.SUPPRESS
                and action.help is not argparse.SUPPRESS
                and "(default" not in (action.help or "")):
            action = copy.copy(action)
            action.help = f"{action.help or ''} (default: %(default)s)".lstrip()
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``error: argument --lr: ...``),
    which never guesses a flag from its prefix (``--l`` is not ``--lr``) and whose
    ``--help`` shows every default (`HelpFormatter`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        sys.stderr.write(f"error: {one_line(message)} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def one_line(message: object) -> str:
    """``message`` with its lines joined: an error is one line however it was raised."""
    return " ".join(str(message).split())


def given_flags(parser: argparse.ArgumentParser, argv: Iterable[str]) -> dict[str, str]:
    """``dest -> flag`` of every option written in ``argv`` (not left at its default),
    following a subcommand into its own parser."""
    given, parser = {}, parser
    for token in argv:
        if token == "--":
            break
        sub = _subparsers(parser)
        if sub is not None and token in sub.choices:
            parser = sub.choices[token]
            continue
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            action = parser._option_string_actions.get(flag)
            if action is not None:
                given[action.dest] = flag
    return given


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None
          ) -> tuple[argparse.Namespace, dict[str, str]]:
    """``(args, given)``: the parsed command line and which flags it wrote
    (`given_flags`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return parser.parse_args(argv), given_flags(parser, argv)


def refuse(given: dict[str, str], dests: Iterable[str], context: str) -> None:
    """Refuse the flags among ``dests`` that ``given`` holds: they do not apply
    ``context`` (e.g. "to --task assoc_retrieval"); the error names each flag."""
    flags = [given[d] for d in dests if d in given]
    if flags:
        raise FieldError(", ".join(flags), f"{'does' if len(flags) == 1 else 'do'} not apply "
                                           f"{context}")


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Call ``main(argv)``; a user's mistake (`USER_ERRORS`) exits with status 2 and one
    line ``error: ...``, an interrupt with status 130 and a line saying so."""
    try:
        main(argv)
    except USER_ERRORS as error:
        if os.environ.get("PLASTIX_TRACEBACK"):
            raise
        sys.stderr.write(f"error: {describe(error)}\n")
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (a run with a checkpoint continues with --resume)\n")
        sys.exit(130)


def describe(error: BaseException) -> str:
    """One line for a user's mistake; an ``OSError`` names its file and the problem."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return one_line(f"{error.filename}: {error.strerror}")
    return one_line(error) or type(error).__name__
