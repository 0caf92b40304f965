"""The run's books, kept by ``_Run`` between steps: the timing, the metrics rows and progress bar, the data
counts (skipped samples, summed over ranks), checkpoints, zero-shot evaluations and ``summary.json``."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lowbit.atomic_io import atomic_write_text
from lowbit.hardware import dense_bf16_peak_tflops, format_mfu, mfu, mfu_warning
from lowbit.models.flops import clip_train_flops
from lowbit.train.announce import compile_choice, fuse_choice
from lowbit.train.checkpoint import (
    CHECKPOINT_NAME,
    DCP_NAME,
    PREV_DCP_NAME,
    PREV_NAME,
    get_rng_state,
    save_checkpoint,
)
from lowbit.train.config import TrainConfig
from lowbit.train.distributed import all_finite, save_dcp, sum_over_ranks
from lowbit.train.env import Env, versions
from lowbit.train.errors import DataError, NonFiniteLossError
from lowbit.train.metrics import RunLogger
from lowbit.train.signals import Interrupt
from lowbit.train.threads import recorded_threads
from lowbit.train.timing import steady_rate, step_clock
from lowbit.train.trainer import Trainer, check_replicas
from lowbit.train.zeroshot import evaluate_zeroshot

__all__ = ["BAD_MIN_SAMPLES", "SKIP_REASONS", "describe_skips"]


SKIP_REASONS = {  # dataset.stats key -> what it means (lowbit.data.stream.STAT_KEYS)
    "skipped_images": "undecodable image",
    "skipped_captions": "missing or empty caption",
    "missing_files": "missing file",
    "skipped_large_images": "image above --max-image-pixels",
}

BAD_MIN_SAMPLES = 200  # the bad-data fraction is judged after this many samples


class _Run:
    """The loop's state between steps: bookkeeping (checkpoints, logs, data accounting) around ``train_step``."""

    def __init__(self, cfg: TrainConfig, env: Env, tr: Trainer, model_cfg: Any, out: Path) -> None:
        self.cfg, self.env, self.tr, self.model_cfg, self.out = cfg, env, tr, model_cfg, out
        self.samples_per_step = cfg.batch_size * env.world_size * cfg.accum_steps  # the global batch
        self.data_position = 0  # samples this rank has consumed
        self.last_ckpt: Path | None = None
        self.last_ckpt_step: int | None = None
        self.evals: list[dict[str, Any]] = []
        self.skipped_before: dict[str, int] = {}  # data skips counted by earlier invocations (from the checkpoint)
        self.skipped: dict[str, int] = {}  # this run's totals (all ranks, earlier invocations included)
        self.tasks: list[Any] = []
        self.tokenizer: Any = None
        self.dataset: Any = None
        self.damage: dict[str, Any] = {}  # what indexing the data lost (damaged shards, incomplete samples)
        self.logger: RunLogger | None = None
        self.pbar: Any = None
        # this invocation's timing: seconds in training steps to the end of their device work (not evaluation or
        # saving), read from the step clock where a log row is written; MFU against the device's bf16 peak
        self.clock = step_clock(env.device)
        self.losses: list[float] = []
        self.step_times: list[float] = []
        self.t_train = self.t_wait = self.samples_per_s = 0.0
        self.mfu: float | None = None
        self.flops_per_sample = clip_train_flops(model_cfg, self.samples_per_step)
        self.skips_reported = 0
        self.mfu_warned = False
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    # ---- logs
    def open_logs(self, start_step: int, resumed: bool) -> None:
        from tqdm.auto import tqdm

        master, cfg = self.env.master, self.cfg
        self.logger = RunLogger(self.out, resume_step=start_step if resumed else None) if master else None
        self.pbar = tqdm(total=cfg.steps, initial=start_step, disable=not (master and cfg.progress), unit="step",
                         dynamic_ncols=True, mininterval=0.5)
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def close(self) -> None:
        tr = self.tr
        if self.pbar is not None:
            self.pbar.close()
        if self.logger is not None:
            self.logger.close()
        if tr.monitor is not None and hasattr(tr.monitor, "close"):
            tr.monitor.close()
        if tr.act_monitor is not None:
            tr.act_monitor.remove()

    def record(self, step: int, loss_value: float, grad_norm: float, logging: bool, signum: int) -> int:
        """The books after one update: data counts (and every rank's word on a signal: returns how many ranks saw
        one); where a row is logged the steps' times (``read_clock``), the metrics row, the progress line."""
        cfg, tr, master = self.cfg, self.tr, self.env.master
        self.losses.append(loss_value)
        signalled = self.count_data(self.dataset, 1 if signum else 0)
        self.check_bad_fraction(self.data_position * self.env.world_size)
        bad = sum(self.skipped.values())
        if logging:  # the same steps on every rank
            steps, seconds, wait = self.read_clock()
            self.samples_per_s = steps * self.samples_per_step / max(seconds, 1e-9)
            self.mfu = self.mfu_of(self.samples_per_s)
        if master and logging:
            row = {
                "step": step,
                "loss": loss_value,
                "lr": _lr_used(tr.scheduler, step),
                "samples_per_s": self.samples_per_s,
                **({"mfu": self.mfu} if self.mfu is not None else {}),  # a GPU of lowbit.hardware's table
                "step_s": seconds / max(steps, 1),
                "data_wait_s": wait / max(steps, 1),  # per step: the device idle, waiting for the loader
                "data_wait_frac": wait / max(seconds, 1e-9),
                "logit_scale": tr.raw_model.logit_scale.exp().item(),
                "grad_norm": float(grad_norm),
                **({f"data/{k}": v for k, v in self.skipped.items()} if bad else {}),  # once data was skipped
                **(tr.monitor.metrics() if tr.monitor is not None else {}),  # rms/<param>, rms_max, ...
                **(tr.act_monitor.metrics(reset=True) if tr.act_monitor is not None else {}),  # act/<block>, act_max
            }
            assert self.logger is not None
            self.logger.log_step(row)
        if master and bad > self.skips_reported:
            if not self.skips_reported or not cfg.progress:
                self.pbar.write(f"lowbit train: step {step}: skipped {bad:,} bad sample(s) so far "
                                f"({describe_skips(self.skipped)})")
            self.skips_reported = bad
        self.pbar.update(1)
        postfix = {"loss": f"{loss_value:.4f}", "lr": f"{_lr_used(tr.scheduler, step):.2e}",
                   "samples_s": f"{self.samples_per_s:.0f}"}
        if self.mfu is not None:
            postfix["mfu"] = format_mfu(self.mfu)
        if bad:
            postfix["skipped"] = f"{bad}"
        self.pbar.set_postfix(postfix)
        return signalled

    def read_clock(self) -> tuple[int, float, float]:
        """The steps finished since the last read (waits for the last one's device work): how many, their seconds
        and their data wait; added to this invocation's totals."""
        times = self.clock.read()
        seconds, wait = sum(t.seconds for t in times), sum(t.data_wait for t in times)
        self.step_times += [t.seconds for t in times]
        self.t_train, self.t_wait = self.t_train + seconds, self.t_wait + wait
        return len(times), seconds, wait

    def mfu_of(self, samples_per_s: float | None) -> float | None:
        """MFU of a global throughput (each process's device does its share); warns once above 75% (stderr)."""
        value = mfu(self.flops_per_sample, samples_per_s / self.env.world_size if samples_per_s else None,
                    self.env.device_name)
        warning = mfu_warning(value, "lowbit train's throughput")
        if warning and self.env.master and not self.mfu_warned:
            self.mfu_warned = True
            (self.pbar.write if self.pbar is not None else print)(warning, file=sys.stderr)
        return value

    def summary(self, step: int, interrupted: int) -> dict[str, Any]:
        """``summary.json`` (written by rank 0) of this invocation."""
        cfg, env, evals, losses = self.cfg, self.env, self.evals, self.losses
        self.read_clock()  # the steps since the last log row (an interrupted run's last steps)
        rate = (len(self.step_times) * self.samples_per_step / self.t_train) if self.t_train else None
        steady = steady_rate(self.step_times, self.samples_per_step)
        status = "interrupted" if interrupted else ("finished" if step == cfg.steps else "stopped")
        summary = {
            "status": status,
            **({"signal": Interrupt.NAMES.get(interrupted, str(interrupted))} if interrupted else {}),
            "step": step,
            "final_loss": losses[-1] if losses else None,
            "final_loss_avg10": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            "zeroshot": {r["task"]: r["top1"] for r in evals},
            "chance": {r["task"]: r["chance"] for r in evals},
            "zeroshot_mean": sum(r["top1"] for r in evals) / len(evals) if evals else None,
            # this invocation's steps, each to the end of its device work (lowbit.train.timing)
            "samples_per_s": rate,
            # after warm-up: without this invocation's first min(5, n/2) steps (compilation, autotuning, allocator)
            "samples_per_s_steady": steady,
            "mfu": self.mfu_of(rate),  # model FLOPs / s over the devices' dense bf16 peak (None: peak unknown)
            "mfu_steady": self.mfu_of(steady),
            "flops_per_sample": self.flops_per_sample,  # lowbit.models.flops.clip_train_flops: forward + backward
            "peak_tflops": dense_bf16_peak_tflops(env.device_name),  # per device
            "data_wait_seconds": self.t_wait,  # of train_seconds: the device idle, waiting for the loader
            "data_wait_frac": self.t_wait / self.t_train if self.t_train else None,
            "peak_memory_gb": torch.cuda.max_memory_allocated(env.device) / 2**30 if env.device.type == "cuda" else None,
            "train_seconds": self.t_train,
            "wall_seconds": time.perf_counter() - self.wall0,  # this invocation's loop, evaluations included
            "cpu_seconds": time.process_time() - self.cpu0,  # CPU time of all threads (contention-independent)
            "samples_seen": self.data_position * env.world_size,
            "data": {**self.skipped, **{k: (len(v) if isinstance(v, dict) else v) for k, v in self.damage.items()}},
            "parameters": self.tr.n_params,
            "recipe": cfg.recipe,
            "optimizer": cfg.optimizer,
            "precision": env.precision,
            "compiled": compile_choice(cfg, env, self.tr),  # what compile (auto by default) chose, and why
            "fused": fuse_choice(cfg, self.tr),  # what fuse (auto by default) chose, and why
            "device": env.device_name,
            "world_size": env.world_size,
            "parallel": env.parallel or "none",
            "global_batch": self.samples_per_step,
            "config": cfg.to_dict(),
            "model_config": self.model_cfg.to_dict(),
            "versions": versions(),
            "out": str(self.out),
        }
        if env.master:
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
            if any(self.skipped.values()):
                print(f"lowbit train: data: skipped {sum(self.skipped.values()):,} bad sample(s): "
                      f"{describe_skips(self.skipped)}", flush=True)
        return summary

    # ---- checkpoints
    def save(self, step: int) -> None:
        cfg, env, tr, out = self.cfg, self.env, self.tr, self.out
        if not all_finite(tr.raw_model):
            raise NonFiniteLossError(step, float("nan"), self.last_ckpt, self.last_ckpt_step, what="a weight")
        if env.parallel == "ddp" and env.world_size > 1:
            check_replicas(tr, step)
        meta = {
            "scheduler": tr.scheduler.state_dict(),
            "rng": get_rng_state(),  # every rank's RNG is seeded alike and only the model init draws from it
            "data_position": self.data_position,  # samples consumed per rank
            "samples_seen": self.data_position * env.world_size,
            "data_skipped": dict(self.skipped),
            "world_size": env.world_size,
            **recorded_threads(env.device),  # CPU: the thread count (a resume keeps it: lowbit.train.threads)
            "step": step,
            "config": cfg.to_dict(),
            "model_config": self.model_cfg.to_dict(),
            "versions": versions(),
        }
        if env.parallel == "fsdp":
            keep = not (self.last_ckpt is not None and self.last_ckpt.name == PREV_DCP_NAME)  # else: current damaged
            self.last_ckpt = save_dcp(out / DCP_NAME, tr.raw_model, tr.optimizer, meta, keep_previous=keep)
            self.last_ckpt_step = step
            if env.master:
                (out / CHECKPOINT_NAME).unlink(missing_ok=True)
                (out / PREV_NAME).unlink(missing_ok=True)
        elif env.master:
            state = {"model": tr.raw_model.state_dict(), "optimizer": tr.optimizer.state_dict(), **meta}
            # resumed from checkpoint.prev.pt (checkpoint.pt was damaged): keep the good one as the previous
            keep = not (self.last_ckpt is not None and self.last_ckpt.name == PREV_NAME)
            self.last_ckpt = save_checkpoint(out / CHECKPOINT_NAME, state, keep_previous=keep)
            self.last_ckpt_step = step
            for name in (DCP_NAME, PREV_DCP_NAME):
                if (out / name).is_dir():
                    shutil.rmtree(out / name)

    # ---- evaluation
    def evaluate(self, step: int, announce: bool = True) -> None:
        if not self.tasks:
            return
        # blocks compiled in place (compile auto) run eager here, as the whole-model compile leaves raw_model: no
        # recompiles for eval mode and other shapes, no CUDA-graph replays outside the training steps
        regional = self.tr.compiled is not None and self.tr.compiled.scope == "blocks"
        with torch.compiler.set_stance("force_eager") if regional else contextlib.nullcontext():
            self.evals = evaluate_zeroshot(self.tr.raw_model, self.tasks, self.tokenizer, self.env.device,
                                           self.env.autocast)
        if not self.env.master:
            return
        assert self.logger is not None
        self.logger.log_eval(step, self.evals)
        if announce and self.cfg.progress:
            self.pbar.write(f"step {step} zero-shot top-1: " + ", ".join(f"{r['task']} {100 * r['top1']:.1f}%" for r in self.evals))

    # ---- data accounting
    def count_data(self, dataset: Any, interrupted: int) -> int:
        """Skipped-sample counters summed over ranks (one all_reduce per step under torchrun, which also makes
        every rank agree on an interrupt); returns the number of ranks that saw a signal."""
        consumed = getattr(dataset, "consumed_stats", None)  # the samples used, not those workers read ahead
        local = consumed(self.data_position) if consumed else (getattr(dataset, "stats", None) or {})
        keys = list(SKIP_REASONS)
        values = [interrupted] + [int(local.get(k, 0)) for k in keys]
        if self.env.distributed:
            values = sum_over_ranks(values)
        self.skipped = {k: self.skipped_before.get(k, 0) + v for k, v in zip(keys, values[1:])}
        return values[0]

    def check_bad_fraction(self, consumed: int) -> None:
        """Stop when more than ``max_bad_fraction`` of the samples read were unusable (after ``BAD_MIN_SAMPLES``)."""
        bad = sum(self.skipped.values())
        seen = bad + consumed
        if bad and seen >= BAD_MIN_SAMPLES and bad > self.cfg.max_bad_fraction * seen:
            raise DataError(
                f"too much bad training data: {bad:,} of {seen:,} samples read ({100 * bad / seen:.1f}%) were skipped "
                f"({describe_skips(self.skipped)}), more than max_bad_fraction {self.cfg.max_bad_fraction:g}; "
                f"check the data ({self.cfg.data}) or raise --max-bad-fraction"
            )


def describe_skips(skipped: dict[str, int]) -> str:
    return ", ".join(f"{SKIP_REASONS.get(k, k)} {v:,}" for k, v in skipped.items() if v)


def _lr_used(scheduler: torch.optim.lr_scheduler.LRScheduler, step: int) -> float:
    """The learning rate the update of (1-based) ``step`` used."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step - 1)  # type: ignore[attr-defined]
