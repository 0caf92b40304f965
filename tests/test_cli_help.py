"""``--help`` of every sub-command shows the defaults; benchmarks on a CPU say their timings mean nothing there."""

from __future__ import annotations

import argparse

import pytest

from lowbit.cli.bench import cpu_warning
from lowbit.cli.main import build_parser


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


def test_every_sub_command_help_shows_defaults() -> None:
    parsers = dict(_parsers(build_parser()))
    assert {("train",), ("data", "prepare"), ("bench", "step"), ("bench", "linear"), ("plot",)} <= set(parsers)
    for path, parser in parsers.items():
        text = parser.format_help().split("\noptions:", 1)[1]
        for action in parser._actions:
            shown = action.option_strings and action.default not in (None, False, argparse.SUPPRESS, [], "")
            if shown and not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                flag = action.option_strings[0]
                assert "default" in text.split(f"  {flag}", 1)[1].split("\n  -", 1)[0], (path, flag)
    train = parsers[("train",)].format_help()
    # lowbit train's flags default to None (only given flags override the config); --help shows TrainConfig's
    for expected in ("(default: tiny)", "(default: switchback)", "(default: 250)", "(default: auto)", "(default: 0.001)"):
        assert expected in " ".join(train.split()), expected
    assert "(default: 10000)" not in parsers[("data", "prepare")].format_help()  # its help already says "default 10000"


@pytest.mark.parametrize("what", ["linear", "step", "optim", "matmul"])
def test_bench_on_cpu_warns(what: str) -> None:
    args = build_parser().parse_args(["bench", what, "--device", "cpu"])
    warning = cpu_warning(args)
    assert warning and "CPU timings say nothing about the GPU speed-ups" in warning


def test_bench_memory_does_not_warn() -> None:
    assert cpu_warning(build_parser().parse_args(["bench", "memory", "--device", "cpu"])) is None
