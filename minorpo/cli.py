"""The `minorpo` command line: one subcommand per module that has one.

Each module listed in COMMANDS defines `add_cli(subparsers)`, which adds its own subparser and
sets `func` (called with the parsed args; its return value is the exit status). Modules are
imported only when needed, so `minorpo --help` stays fast.
"""

import argparse
import importlib
import sys

# subcommand name -> module that defines add_cli(subparsers)
COMMANDS = {
    "generate": "minorpo.generate",
    "data": "minorpo.data_inspect",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minorpo",
        description="ORPO from scratch: load a model, inspect preference data, train with ORPO/SFT/DPO, "
                    "check other implementations. `minorpo COMMAND --help` explains each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).add_cli(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
