"""One benchmark row, run in this process or in a process of its own, so that one row cannot lose the others.

A row whose failure can poison the CUDA context (an illegal memory access inside a torchao anchor took down a
whole ``bench step`` run on an H100: every later row failed, and the table was never written) runs in a child
process: ``python -m lowbit.bench.rows JOB.json ROW.json`` calls the row function named by ``target``
(``"module:function"``, taking the job dict and returning the row dict) and writes the row as JSON. A Python
exception becomes the row's ``error``; a child that dies without a result (a signal, ``os._exit``, an abort in
a CUDA driver) gives an error row naming its exit status and the last line it wrote to stderr. The child's
output goes through to the terminal as it comes.

``lowbit bench step`` and ``lowbit bench model`` isolate by default on CUDA (``--no-isolate`` runs every row in
one process, as before: faster, and where a test monkeypatches the row); on the CPU rows run in-process unless
``--isolate`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowbit.bench.common import error_line, write_atomic

Row = dict[str, Any]


def resolve(target: str) -> Callable[[dict[str, Any]], Row]:
    """``"package.module:function"`` -> the function."""
    module, sep, name = target.partition(":")
    if not sep or not name:
        raise ValueError(f"row target must be 'module:function', got {target!r}")
    return getattr(importlib.import_module(module), name)


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options a row needs, as JSON values (private ``_`` entries and anything not JSON-able left out)."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("_"):
            continue
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


def add_isolate_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="run each row in a process of its own, so that a row that crashes or poisons the CUDA "
                             "context loses only itself (default: on for CUDA devices, off on the CPU)")


def isolate_default(args: argparse.Namespace) -> bool:
    """``--isolate`` / ``--no-isolate`` when given, else on for CUDA devices."""
    choice = getattr(args, "isolate", None)
    if choice is not None:
        return bool(choice)
    return str(getattr(args, "device", "cpu")).startswith("cuda")


def run_row(target: str, job: dict[str, Any], isolate: bool) -> Row:
    """The row of ``job``: ``{..., "error": "..."}`` when it failed, whichever way it failed."""
    if not isolate:
        try:
            return resolve(target)(job)
        except Exception as e:  # OOM, compile error, unsupported recipe: recorded, not fatal
            return {"error": error_line(e)}
    return _in_child(target, job)


def _in_child(target: str, job: dict[str, Any]) -> Row:
    with tempfile.TemporaryDirectory(prefix="lowbit-row-") as tmp:
        job_file, row_file = Path(tmp) / "job.json", Path(tmp) / "row.json"
        job_file.write_text(json.dumps({"target": target, "job": job}))
        # autotuning results cached on disk: each row's process would otherwise autotune every GEMM shape again
        env = {**os.environ, "TRITON_CACHE_AUTOTUNING": os.environ.get("TRITON_CACHE_AUTOTUNING", "1")}
        proc = subprocess.Popen([sys.executable, "-m", "lowbit.bench.rows", str(job_file), str(row_file)],
                                stderr=subprocess.PIPE, text=True, errors="replace", env=env)
        tail: deque[str] = deque(maxlen=30)
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # through to the terminal, the last lines kept for the error
                sys.stderr.write(line)
                tail.append(line)
            rc = proc.wait()
        except BaseException:  # Ctrl-C (the child got it too) or anything else: no orphan left behind
            proc.kill()
            proc.wait()
            raise
        if row_file.is_file():
            return json.loads(row_file.read_text())
        if rc < 0:
            try:
                why = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                why = f"killed by signal {-rc}"
        else:
            why = f"exit code {rc}"
        last = next((s.strip() for s in reversed(tail) if s.strip()), "")
        return {"error": (f"the row's process died ({why}) without a result" + (f": {last}" if last else ""))[:300]}


def main(argv: list[str] | None = None) -> int:
    """The child: run the row of JOB.json, write it to ROW.json (an exception becomes the row's error)."""
    job_file, row_file = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(Path(job_file).read_text())
    try:
        row = resolve(spec["target"])(spec["job"])
    except Exception as e:
        row = {"error": error_line(e)}
    write_atomic(Path(row_file), json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
