"""Entry point of the ``lowbit`` command.

Each sub-command lives in its own module ``lowbit.cli.<name>`` that defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy dependencies inside ``run`` so that
``lowbit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
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
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (also LOWBIT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error (also LOWBIT_DEBUG=1)")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def one_line(exc: BaseException) -> str:
    """An error as the one line a user reads: what failed and on which path, no traceback."""
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and "space" not in str(exc.strerror or ""):
            what = "no space left on the device"
        else:
            what = exc.strerror or str(exc)
        where = f": {exc.filename}" if exc.filename else ""
        return f"{what}{where}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = bool(getattr(args, "debug", False)) or os.environ.get("LOWBIT_DEBUG", "") not in ("", "0")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"lowbit {args.command}: aborted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        if debug:
            raise
        print(f"lowbit {args.command}: error: {one_line(e)}", file=sys.stderr)  # --debug: the traceback
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
