"""Run logs: CSV files (the plotting contract) and TensorBoard scalars.

``metrics.csv``: one row per logged step, columns ``step, loss, lr, samples_per_s`` (since the previous row,
each step timed to the end of its device work: ``lowbit.train.timing``), ``mfu`` (on GPUs of
``lowbit.hardware``'s table), ``step_s, data_wait_s`` (per step), ``data_wait_frac, logit_scale, grad_norm``
and ``rms/<param>`` when the RMS monitor is on. ``eval.csv``: ``step, task, top1, chance, n``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

__all__ = ["CSVLog", "RunLogger"]


class CSVLog:
    """Append rows (dicts) to a CSV file; the header grows if later rows bring new columns."""

    def __init__(self, path: str | Path, first_columns: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        self.columns: list[str] = list(first_columns)
        if self.path.is_file():
            with self.path.open(newline="") as f:
                header = next(csv.reader(f), None)
            if header:
                self.columns = header

    def truncate_after(self, step: int) -> None:
        """Drop rows with ``step`` > ``step`` (a resumed run rewrites what came after its checkpoint)."""
        if not self.path.is_file():
            return
        rows = [r for r in self.read() if int(float(r["step"])) <= step]
        self._rewrite(rows)

    def read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, restval="")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self.columns]
        if new or not self.path.is_file():
            old = self.read()
            self.columns += new
            self._rewrite(old)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)


class RunLogger:
    """``metrics.csv``, ``eval.csv`` and TensorBoard event files in one run directory."""

    def __init__(self, out: Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.metrics = CSVLog(out / "metrics.csv", ("step", "loss", "lr", "samples_per_s"))
        self.evals = CSVLog(out / "eval.csv", ("step", "task", "top1", "chance", "n"))
        if resume_step is not None:
            self.metrics.truncate_after(resume_step)
            self.evals.truncate_after(resume_step)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def log_step(self, row: dict[str, float]) -> None:
        self.metrics.write(row)
        if self.tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)

    def log_eval(self, step: int, results: list[dict[str, Any]]) -> None:
        for r in results:
            self.evals.write({"step": step, **r})
            if self.tb is not None:
                self.tb.add_scalar(f"zeroshot/{r['task']}", r["top1"], step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
