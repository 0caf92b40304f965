"""``lowbit data``: prepare real data sets offline, describe/verify data specs, preview and time them.

Sub-commands::

    lowbit data prepare fashion-mnist|emoji --out DIR [--source PATH] [--shard-size N] [--limit N] [--force]
    lowbit data info SPEC            what SPEC resolves to (JSON), plus its zero-shot tasks
    lowbit data verify DIR           check a prepared directory's shards against manifest checksums
    lowbit data preview SPEC --out grid.png [--n 64] [--image-size 64]   image grid + captions
    lowbit data bench [SPEC] [--image-size 32] [--n 2048]               samples per second of the stream
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "prepare data sets (fashion-mnist, emoji), inspect, verify, preview and time data specs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    p = sub.add_parser("prepare", help="write WebDataset shards + zero-shot tasks + manifest from installed files")
    p.add_argument("dataset", choices=("fashion-mnist", "emoji"))
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--source", default=None, help="where the installed files are (default: the usual places)")
    p.add_argument("--shard-size", type=int, default=10000, help="samples per shard (default 10000)")
    p.add_argument("--limit", type=int, default=None, help="at most N samples per split (quick trials)")
    p.add_argument("--force", action="store_true", help="overwrite an existing prepared directory")

    p = sub.add_parser("info", help="print what a data spec resolves to (JSON)")
    p.add_argument("spec", nargs="?", default="synthetic")

    p = sub.add_parser("verify", help="check a prepared directory against its manifest checksums")
    p.add_argument("dir")

    p = sub.add_parser("preview", help="save a grid of training images and print their captions")
    p.add_argument("spec", nargs="?", default="synthetic")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("bench", help="time the training stream (samples/s, single process)")
    p.add_argument("spec", nargs="?", default="synthetic")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    parser.set_defaults(_data_parser=parser)


def _prepare(args: argparse.Namespace) -> int:
    from lowbit.data.prepare import prepare

    manifest = prepare(
        args.dataset, args.out, source=args.source, shard_size=args.shard_size, limit=args.limit,
        force=args.force, log=lambda m: print(m, flush=True),
    )  # fmt: skip
    counts = ", ".join(f"{s}: {v['count']}" for s, v in manifest["splits"].items())
    from lowbit.data.spec import train_command

    print(f"prepared {args.dataset} in {args.out} ({counts}); its zero-shot task comes with it. Train with:")
    print(f"  {train_command(args.out)}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from lowbit.data import describe

    print(json.dumps(describe(args.spec), indent=2, default=str))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from lowbit.data.prepare import verify

    problems = verify(args.dir)
    for p in problems:
        print(f"FAIL {p}")
    if not problems:
        print(f"ok: {args.dir} matches its manifest")
    return 1 if problems else 0


def _preview(args: argparse.Namespace) -> int:
    import itertools
    import math

    import torch
    from PIL import Image

    from lowbit.data import build_train_data, denormalize

    ds = build_train_data(args.spec, image_size=args.image_size, seed=args.seed)
    samples = list(itertools.islice(ds, args.n))
    cols = math.ceil(math.sqrt(len(samples)))
    rows = math.ceil(len(samples) / cols)
    s = args.image_size
    grid = torch.zeros(3, rows * s, cols * s)
    for i, (img, caption) in enumerate(samples):
        r, c = divmod(i, cols)
        grid[:, r * s : (r + 1) * s, c * s : (c + 1) * s] = denormalize(img)
        print(f"{i:4d} {caption}")
    Image.fromarray((grid * 255).round().byte().permute(1, 2, 0).numpy()).save(args.out)
    print(f"wrote {args.out} ({rows}x{cols}); stats {ds.stats}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import itertools
    import time

    from lowbit.data import build_train_data

    ds = build_train_data(args.spec, image_size=args.image_size, seed=args.seed)
    it = iter(ds)
    next(it)
    t = time.perf_counter()
    for _ in itertools.islice(it, args.n):
        pass
    dt = time.perf_counter() - t
    print(json.dumps({"spec": args.spec, "image_size": args.image_size, "samples": args.n,
                      "us_per_sample": round(dt / args.n * 1e6, 1), "samples_per_s": round(args.n / dt, 1),
                      "stats": ds.stats}))  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    actions = {"prepare": _prepare, "info": _info, "verify": _verify, "preview": _preview, "bench": _bench}
    action = actions.get(getattr(args, "data_command", None) or "")
    if action is None:
        args._data_parser.print_help()
        return 0
    try:
        return action(args)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"lowbit data {args.data_command}: error: {exc}", file=sys.stderr)
        return 2
