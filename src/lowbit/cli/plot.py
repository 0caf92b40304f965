"""``lowbit plot``: not yet available (placeholder until its issue lands)."""

from __future__ import annotations

import argparse

HELP = "plot (not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs=argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    print("lowbit plot: not yet available")
    return 0
