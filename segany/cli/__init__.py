"""The ``segany`` command line.

Each subcommand lives in its own module of this package and is discovered at start-up,
so a feature adds a command by adding one file. A subcommand module defines:

- ``HELP``: one line for ``segany --help``;
- ``add_arguments(parser)``: its flags;
- ``run(args) -> int``: the work, returning the exit code.

Modules keep heavy imports (torch, fastapi, ...) inside ``run`` so that ``segany --help``
stays instant. Errors a user caused (``ValueError``, ``FileNotFoundError``, ...) become one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, KeyError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _subcommand_modules() -> dict[str, ModuleType]:
    """Import every subcommand module of this package, keyed by command name."""
    modules = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        modules[info.name.replace("_", "-")] = module
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segany",
        description="Segment Anything: promptable segmentation, automatic masks, training, evaluation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, module in sorted(_subcommand_modules().items()):
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"segany {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"segany {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
