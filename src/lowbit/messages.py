"""One message style for the ``lowbit`` command: lowbit's own words as one line on stderr
(``lowbit COMMAND: warning: ...``); a library's text (PyTorch's warnings, tracebacks) only with ``--debug``.

A leaf module (no lowbit imports), so every room can warn the same way: ``warn("steps 1 < warmup 5 ...")``.
``routed_warnings`` puts Python ``warnings`` (and the ``lowbit.*`` loggers' warnings) through the same door while a
command runs: lowbit's own become its one line, a library's become one lowbit line naming where it came from (its
text with ``--debug``), so a user reads one style and nothing is hidden.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["did_you_mean", "nearest", "routed_warnings", "warn", "warning_line"]

_PACKAGE = Path(__file__).resolve().parent  # src/lowbit
_command = "train"  # the running command's name (set by routed_warnings)


def warn(text: str, command: str | None = None) -> None:
    """Print lowbit's own warning as one line on stderr: ``lowbit COMMAND: warning: TEXT``."""
    print(f"lowbit {command or _command}: warning: {text}", file=sys.stderr, flush=True)


def nearest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (``difflib``, ratio >= 0.6), or None."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(unknown: Iterable[str], known: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean batch_size?)``: the nearest known name of each unknown one, or "" if none is close;
    ``prefix`` names them as the user wrote them (``model.vision.width``)."""
    known = list(known)
    hints = [f"{prefix}{m}" for k in unknown if (m := nearest(k, known))]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def _origin(filename: str) -> tuple[bool, str]:
    """(issued by lowbit itself, where: a path relative to its package's parent folder, e.g. torch/x.py)."""
    path = Path(filename).resolve()
    if path.is_relative_to(_PACKAGE):
        return True, str(path.relative_to(_PACKAGE.parent))
    parts = path.parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return False, "/".join(parts[parts.index(anchor) + 1 :])
    return False, path.name


def warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, command: str) -> str:
    """The one line a warning becomes: lowbit's own text, or for a library's warning where it came from."""
    own, where = _origin(filename)
    if own:
        first = str(message).strip().splitlines()
        return f"lowbit {command}: warning: {first[0] if first else category.__name__}"
    package = where.split("/", 1)[0].removesuffix(".py")
    return (f"lowbit {command}: warning: {package} issued a {category.__name__} ({where}:{lineno}); "
            f"`lowbit {command} --debug` shows its text")


@contextlib.contextmanager
def routed_warnings(command: str, debug: bool) -> Iterator[None]:
    """While a command runs, every Python warning reaches stderr as ``warning_line`` (``debug``: as Python prints
    it, the library's full text and source line)."""
    global _command
    before, shown = _command, warnings.showwarning
    _command = command

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
        if debug:
            shown(message, category, filename, lineno, file, line)  # type: ignore[arg-type]
        else:
            print(warning_line(message, category, filename, lineno, command), file=sys.stderr, flush=True)

    warnings.showwarning = show
    # lowbit's own loggers (lowbit.nn.convert's "nothing converted") the same way, unless the user set up logging
    log = logging.getLogger("lowbit")
    handler = None
    if not debug and not log.handlers and not logging.getLogger().handlers:
        handler = _OneLine(command)
        log.addHandler(handler)
    try:
        yield
    finally:
        warnings.showwarning = shown
        _command = before
        if handler is not None:
            log.removeHandler(handler)


class _OneLine(logging.Handler):
    """A ``lowbit.*`` log record of level WARNING or above as ``lowbit COMMAND: warning: <its first line>``."""

    def __init__(self, command: str) -> None:
        super().__init__(logging.WARNING)
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        first = record.getMessage().strip().splitlines()
        kind = "warning" if record.levelno < logging.ERROR else "error"
        print(f"lowbit {self.command}: {kind}: {first[0] if first else record.levelname}", file=sys.stderr, flush=True)
