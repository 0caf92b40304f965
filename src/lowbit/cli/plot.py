"""``lowbit plot RUN_DIR``: PNGs of a training run (loss, learning rate, zero-shot accuracy, RMS per parameter with
``--monitor``, largest activation per block with ``--activations``).

``lowbit plot spikes RUN_DIR``: the loss-spike / RMS diagnostic figure of ``lowbit.monitor.plot_spikes``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "plot a run: loss, lr, zero-shot accuracy, RMS, activations (or `plot spikes RUN_DIR`)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", metavar="RUN_DIR | spikes", help="a run directory, or 'spikes' followed by one")
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the run directory (after 'spikes')")
    parser.add_argument("--out", metavar="PATH", help="output directory (default RUN_DIR/plots) or, for spikes, PNG file")


def run(args: argparse.Namespace) -> int:
    if args.what == "spikes":
        if not args.run_dir:
            print("lowbit plot: error: usage: lowbit plot spikes RUN_DIR", file=sys.stderr)
            return 2
        run_dir = Path(args.run_dir)
        out_png = Path(args.out) if args.out else run_dir / "plots" / "spikes.png"
        try:
            from lowbit.monitor import plot_spikes
        except ImportError as e:
            print(f"lowbit plot: error: spikes needs lowbit.monitor.plot_spikes, not available in this build ({e})", file=sys.stderr)
            return 2
        out_png.parent.mkdir(parents=True, exist_ok=True)
        plot_spikes(run_dir, out_png)
        print(out_png)
        return 0
    if args.run_dir:
        print(f"lowbit plot: error: unexpected argument {args.run_dir!r} (did you mean `lowbit plot spikes RUN_DIR`?)", file=sys.stderr)
        return 2
    from lowbit.train.plots import plot_run

    try:
        files = plot_run(args.what, args.out)
    except ValueError as e:
        print(f"lowbit plot: error: {e}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    if "rms.png" not in {f.name for f in files}:  # stdout lists the files; what is missing, and why, goes to stderr
        print("lowbit plot: no RMS plots: the run was trained without --monitor (under torchrun: --set monitor=true)",
              file=sys.stderr)
    return 0
