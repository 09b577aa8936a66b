"""The `bioxlstm` command line: assembles the commands of `bioxlstm.commands` and turns a user's
mistake, or an optional dependency the command needs but the install lacks, into one line and exit
status 1."""

import argparse
import copy
import os
import sys
import traceback
from collections.abc import Callable

from . import __version__
from .commands import convert, embed, evaluate, export, generate, info, inpaint, score, train
from .commands.options import refuse_overwriting_input
from .extras import missing_extra_message, missing_optional_module

# In the order `--help` lists them.
COMMANDS = (generate, embed, score, inpaint, info, export, convert, evaluate, train)
# Mistakes a user can make; they are reported in one line, without a traceback (unless --debug).
USER_ERRORS = (ValueError, OSError)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Ends an option's help with its default, unless there is nothing to say (a flag, an option
    without default) or the help already says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not self._has_default(action) or "default" in text.lower():
            return text
        return super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        if not (action.help or "").strip() and self._has_default(action):
            # argparse lists an option without help by its name alone; its default is still worth saying.
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    @staticmethod
    def _has_default(action: argparse.Action) -> bool:
        return action.default not in (None, False, [], argparse.SUPPRESS) and action.help != argparse.SUPPRESS


class Parser(argparse.ArgumentParser):
    """The parser of the command and of every subcommand: argparse builds each subcommand's parser
    with the class of its parent, so commands added later show their defaults without asking."""

    def __init__(self, *args, formatter_class: type = DefaultsHelpFormatter, **kwargs):
        if not issubclass(formatter_class, DefaultsHelpFormatter):
            # A command's own layout (e.g. a raw description) keeps the defaults too.
            formatter_class = type(formatter_class.__name__, (formatter_class, DefaultsHelpFormatter), {})
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
        # The innermost parser that reads the command line sets it last: e.g. "bioxlstm evaluate chem".
        self.set_defaults(command_path=self.prog)

    def error(self, message: str):
        # A mistake on the command line is a user error like any other: one line, status 1.
        self.exit(1, f"bioxlstm: error: {message} (see: {self.prog} --help)\n" if reports_errors() else None)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bioxlstm",
        description="xLSTM language models for DNA, proteins and small molecules.",
    )
    parser.add_argument("--version", action="version", version=f"bioxlstm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    if not started_by_torchelastic():
        run_command(argv)
        return
    from .training.launchers import end_launched_process

    end_launched_process(exit_status(run_command, argv))


def started_by_torchelastic() -> bool:
    """Whether torchrun, or accelerate launch through torchrun's agent, started this process (and
    then reads its exit status as the run's)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def exit_status(command: Callable[[list[str] | None], None], argv: list[str] | None) -> int:
    """The exit status `command(argv)` gives the process, as Python would report it."""
    try:
        command(argv)
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def run_command(argv: list[str] | None) -> None:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    # argparse reads a positional list only up to the first option; overrides may also follow one.
    if extras and hasattr(args, "overrides") and not any(e.startswith("-") for e in extras):
        args.overrides += extras
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        sys.exit(1)
    from transformers.utils import logging as transformers_logging

    # Loading a small model is quick; its per-tensor progress bars would only bury our messages.
    transformers_logging.disable_progress_bar()
    try:
        refuse_overwriting_input(args)
        args.run(args)
    except KeyboardInterrupt:
        # Every output is written to a temporary file and renamed at the end: nothing half-written remains.
        if reports_errors():
            print("bioxlstm: interrupted; no output file was left half-written", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # The reader of our output (e.g. `head`) has had enough; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except ModuleNotFoundError as error:
        module = missing_optional_module(error)
        if args.debug or module is None:
            raise  # a module of the base install is missing: a broken install, not a choice
        if reports_errors():
            command = args.command_path.removeprefix(f"{parser.prog} ")
            print(f"bioxlstm: error: {missing_extra_message(command, module)}", file=sys.stderr)
        sys.exit(1)
    except USER_ERRORS as error:
        if args.debug:
            raise
        if reports_errors():
            print(f"bioxlstm: error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)


def reports_errors() -> bool:
    """Whether this process tells the user about their mistake: under `torchrun` every process makes
    the same one, and one line says it; the others only exit with the same status."""
    return os.environ.get("RANK", "0") in ("", "0")


def one_line(error: Exception) -> str:
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: no such file or directory"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    main()
