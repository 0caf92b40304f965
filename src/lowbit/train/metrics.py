"""Run logs: CSV files (the plotting contract) and TensorBoard scalars.

``metrics.csv``: one row per logged step, columns ``step, loss, lr, samples_per_s`` (since the previous row,
each step timed to the end of its device work: ``lowbit.train.timing``), ``mfu`` (on GPUs of
``lowbit.hardware``'s table), ``step_s, data_wait_s`` (per step), ``data_wait_frac, logit_scale, grad_norm``
and ``rms/<param>`` when the RMS monitor is on. ``eval.csv``: ``step, task, top1, chance, n``.

Nothing lost: rows are appended; a rewrite (a resume drops the rows after its checkpoint, a new column grows
the header) goes to a temporary file that replaces the old one (``lowbit.atomic_io``), so a kill at any moment
leaves the old or the new file. A full disk is one ``OSError(ENOSPC)`` naming the file, also when TensorBoard's
writer thread meets it (``RunLogger.check``).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowbit.atomic_io import atomic_open, no_space

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
        with atomic_open(self.path, "w", newline="") as f:  # a kill leaves the old file or the new one
            w = csv.DictWriter(f, fieldnames=self.columns, restval="")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self.columns]
        if new or not self.path.is_file():
            old = self.read()
            self.columns += new
            self._rewrite(old)
        with _named(self.path), self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """A full disk while writing ``path``: one ``OSError(ENOSPC)`` that names it (Python's own names no file)."""
    try:
        yield
    except OSError as exc:
        if no_space(exc) and "no space left" not in str(exc):
            raise OSError(errno.ENOSPC, f"no space left on the device: could not write {str(path)!r}") from exc
        raise


class RunLogger:
    """``metrics.csv``, ``eval.csv`` and TensorBoard event files in one run directory."""

    def __init__(self, out: Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.metrics = CSVLog(out / "metrics.csv", ("step", "loss", "lr", "samples_per_s"))
        self.evals = CSVLog(out / "eval.csv", ("step", "task", "top1", "chance", "n"))
        if resume_step is not None:
            self.metrics.truncate_after(resume_step)
            self.evals.truncate_after(resume_step)
        self.tb = None
        self._hook: Any = None
        self._tb_dir = out / "tensorboard"
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._hook = threading.excepthook  # before the writer thread starts: it writes at once
            threading.excepthook = _quiet_tensorboard_disk_full(self._hook)
            try:
                with self._tensorboard():
                    self.tb = SummaryWriter(str(self._tb_dir), purge_step=resume_step + 1 if resume_step else None)
            except BaseException:
                self.close()
                raise

    def _tb_file(self) -> str:
        writer = getattr(getattr(self.tb, "file_writer", None), "event_writer", None)
        if getattr(writer, "_file_name", None):
            return str(writer._file_name)  # type: ignore[union-attr]
        found = sorted(self._tb_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
        return str(found[-1] if found else self._tb_dir)

    @contextlib.contextmanager
    def _tensorboard(self) -> Iterator[None]:
        """TensorBoard's writer thread re-raises its errors on the next call: a full disk becomes one line naming
        the event file."""
        try:
            yield
        except Exception as exc:
            if no_space(exc):
                raise OSError(errno.ENOSPC, f"no space left on the device: could not write {self._tb_file()!r}") from exc
            raise

    def log_step(self, row: dict[str, float]) -> None:
        self.metrics.write(row)
        if self.tb is not None:
            step = int(row["step"])
            with self._tensorboard():
                for k, v in row.items():
                    if k != "step":
                        self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)

    def log_eval(self, step: int, results: list[dict[str, Any]]) -> None:
        for r in results:
            self.evals.write({"step": step, **r})
            if self.tb is not None:
                with self._tensorboard():
                    self.tb.add_scalar(f"zeroshot/{r['task']}", r["top1"], step)

    def close(self) -> None:
        tb, self.tb = self.tb, None
        unwinding = sys.exc_info()[1] is not None  # called from a `finally` while another error propagates
        try:
            if tb is not None:
                with self._tensorboard():
                    tb.close()
        except Exception:
            if not unwinding:
                raise  # the writer thread's error, met first here
        finally:
            if self._hook is not None:
                threading.excepthook = self._hook
                self._hook = None


def _quiet_tensorboard_disk_full(previous: Any) -> Any:
    """A ``threading.excepthook`` that leaves TensorBoard's writer thread's full-disk error to the training thread
    (``RunLogger`` reports it as one line naming the file) instead of printing its raw traceback."""

    def hook(args: Any) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and no_space(args.exc_value):
            return
        previous(args)

    return hook
