"""Entry point of the ``lowbit`` command.

Each sub-command lives in its own module ``lowbit.cli.<name>`` that defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy dependencies inside ``run`` so that
``lowbit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lowbit._version import __version__

# name -> module; the order is the order shown by --help.
COMMANDS: dict[str, str] = {
    "train": "lowbit.cli.train",
    "bench": "lowbit.cli.bench",
    "plot": "lowbit.cli.plot",
    "data": "lowbit.cli.data",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit",
        description="Fast, stable, low-precision training of transformers (int8 SwitchBack, fp8, StableAdamW).",
    )
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
