"""Entry point of the ``lowbit`` command.

Each sub-command lives in its own module ``lowbit.cli.<name>`` that defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy dependencies inside ``run`` so that
``lowbit --help`` stays fast. A module whose options default to ``None`` because the real defaults live elsewhere
(``lowbit train``: ``TrainConfig``) may define ``help_defaults() -> dict[dest, value]``; ``--help`` shows them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from lowbit._version import __version__
from lowbit.atomic_io import no_space
from lowbit.messages import routed_warnings

# name -> module; the order is the order shown by --help.
COMMANDS: dict[str, str] = {
    "train": "lowbit.cli.train",
    "bench": "lowbit.cli.bench",
    "plot": "lowbit.cli.plot",
    "data": "lowbit.cli.data",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default: argparse's own, or ``defaults_source()``'s for options whose
    argparse default is ``None`` (loaded only when help is printed). Flags (store_true/false), help that already
    names its default, and options without one are left as written."""

    defaults_source: ClassVar[Callable[[], dict[str, Any]] | None] = None
    _loaded: ClassVar[dict[str, Any] | None] = None

    def _default_text(self, action: argparse.Action) -> str:
        """``(default: X)``, or "" when the option has none worth showing."""
        if isinstance(action, argparse._StoreConstAction | argparse._HelpAction | argparse._VersionAction):
            return ""  # flags: the default is "not given"
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return ""  # a required positional has no default
        default = action.default
        cls = type(self)
        if default is None and cls.defaults_source is not None:
            if cls._loaded is None:
                cls._loaded = cls.defaults_source()
            default = cls._loaded.get(action.dest)
        if default is None or default is argparse.SUPPRESS or default in ([], ""):
            return ""
        if isinstance(default, list | tuple):
            default = " ".join(map(str, default))
        return f"(default: {str(default).replace('%', '%%')})"

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower():
            return text  # already says it
        extra = self._default_text(action)
        return f"{text} {extra}" if extra else text

    def _format_action(self, action: argparse.Action) -> str:
        if not (action.help and action.help.strip()) and self._default_text(action):
            action = copy.copy(action)  # argparse prints no help line for an option without help text
            action.help = self._default_text(action)
        return super()._format_action(action)


def _formatter(source: Callable[[], dict[str, Any]] | None) -> type[HelpFormatter]:
    return type("HelpFormatter", (HelpFormatter,), {"defaults_source": staticmethod(source) if source else None})


def _apply_formatter(parser: argparse.ArgumentParser, formatter: type[HelpFormatter]) -> None:
    """Give ``parser`` and every nested sub-command parser ``formatter`` (argparse does not pass it down)."""
    parser.formatter_class = formatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _apply_formatter(child, formatter)


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
        _apply_formatter(p, _formatter(getattr(module, "help_defaults", None)))
        p.set_defaults(_run=module.run)
    return parser


def one_line(exc: BaseException) -> str:
    """An error as the one line a user reads: what failed and on which path, no traceback."""
    if isinstance(exc, OSError):
        if no_space(exc) and "space" not in str(exc.strerror or ""):
            what = "no space left on the device"
        else:
            what = exc.strerror or str(exc)
        where = f": {exc.filename}" if exc.filename else ""
        return f"{what}{where}"
    text = str(exc).strip().splitlines()
    if text and text[0].startswith("Caught ") and "DataLoader worker process" in text[0]:
        # torch re-raises a worker's error as "Caught X in DataLoader worker process N." + its traceback: the
        # error's own last line says what went wrong (the data error naming shard and key)
        worker = text[0].removeprefix("Caught ").rstrip(".")
        last = next((line for line in reversed(text) if line.strip() and not line.startswith(" ")), "")
        return f"{last.split(': ', 1)[-1]} ({worker})" if last and last != text[0] else text[0]
    return text[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code. A torchrun rank whose process group lives on ends here (``_end``)."""
    return _end(_main(argv))


def _end(code: int) -> int:
    """``code``, or, in a process whose destroyed process group still runs its threads (FSDP2 keeps it:
    ``lowbit.train.distributed`` "teardown"), ``os._exit(code)`` once stdout and stderr are flushed: the
    interpreter's teardown and exit()'s C++ destructors raced those threads, and a finished rank aborted now and
    then (rc 1 from torchrun)."""
    module = sys.modules.get("lowbit.train.distributed")  # imported only if this command trained
    if module is None or not module.process_group_outlives_destroy():
        return code
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = bool(getattr(args, "debug", False)) or os.environ.get("LOWBIT_DEBUG", "") not in ("", "0")
    try:
        with routed_warnings(args.command, debug):  # one style: lowbit's line on stderr, library text with --debug
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
