"""The `minorpo` command line: one subcommand per module that has one.

Each module listed in COMMANDS defines `add_cli(subparsers)`, which adds its own subparser and
sets `func` (called with the parsed args; its return value is the exit status). Only the
module of the command being run is imported; `minorpo --help` imports them all to list them.
"""

import argparse
import importlib
import os
import sys

from minorpo.errors import UserError

# subcommand name -> module that defines add_cli(subparsers)
COMMANDS = {
    "generate": "minorpo.tools.generate",
    "data": "minorpo.tools.data_inspect",
    "train": "minorpo.tools.train_cli",
    "plot": "minorpo.tools.plot",
    "conformance": "minorpo.tools.conformance",
    "exercises": "minorpo.exercises.grader",
}


class Parser(argparse.ArgumentParser):
    """argparse, with its errors (unknown flag, invalid choice, missing --model) in the one-line style too."""

    def error(self, message):
        self.exit(2, f"minorpo: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="minorpo",
        description="ORPO from scratch: load a model, inspect preference data, train with ORPO/SFT/DPO, "
                    "check other implementations. `minorpo COMMAND --help` explains each command. A mistake in a flag, "
                    "file or row is reported in one line (exit status 2); `minorpo --debug COMMAND ...` or "
                    "MINORPO_DEBUG=1 shows the traceback.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).add_cli(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("MINORPO_DEBUG", "") not in ("", "0")
    if argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        if debug:
            raise
        print(f"minorpo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
