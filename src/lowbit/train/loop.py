"""The CLIP training loop (``lowbit train``), in the style of nanoGPT's train.py: set up, loop, evaluate.

One process trains on one device; under ``torchrun`` (``WORLD_SIZE`` > 1) every process takes a GPU and its
own shard of the data (``batch_size`` per process), the model is wrapped in DDP or sharded with FSDP2
(``parallel``), features are all-gathered for the contrastive loss over the global batch
(``lowbit.train.distributed``) and rank 0 writes the run directory:

    OUT/metrics.csv  OUT/eval.csv  OUT/tensorboard/  OUT/checkpoint.pt (+ checkpoint.prev.pt, or checkpoint.dcp/)
    OUT/summary.json  OUT/config.yaml

Reading order: ``train`` → ``_train`` (everything that can refuse the run, before anything is written:
``lowbit.train.setup``) → ``setup_env`` (processes, device: ``lowbit.train.env``) → ``_run``: ``build_trainer``
(model, recipe, optimizer, schedule, wrapping: ``lowbit.train.trainer``), ``restore`` (resume), the data
(``lowbit.train.batches``), then ``_loop``, which calls ``train_step`` once per update (``lowbit.train.step``, the
same function ``lowbit bench step`` times) and keeps the books in ``_Run`` (``lowbit.train.books``: checkpoints,
evaluation, skipped-data counts; ``Interrupt`` turns SIGINT/SIGTERM into a checkpoint at the end of the current
step). Each step is timed to the end of its GPU work, and its wait for the data loader apart
(``lowbit.train.timing``): the images/s and MFU that the run reports are what the GPU did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lowbit.kernels.ops import compiled_quantize_mode
from lowbit.train.announce import announce
from lowbit.train.batches import _to_device, open_data
from lowbit.train.books import _Run
from lowbit.train.checkpoint import load_checkpoint
from lowbit.train.config import TrainConfig
from lowbit.train.distributed import destroy_process_group
from lowbit.train.env import Env, setup_env
from lowbit.train.errors import DataError, NonFiniteLossError, RunExistsError
from lowbit.train.runlock import claim_run_dir
from lowbit.train.setup import (
    check_names,
    check_out,
    check_prepared_data,
    check_resume,
    default_out,
    make_run_dir,
    resolve_config,
)
from lowbit.train.signals import Interrupt
from lowbit.train.step import _NonFiniteLoss, train_step
from lowbit.train.threads import threads_for_resume
from lowbit.train.trainer import Trainer, build_trainer, check_replicas, restore
from lowbit.train.watchdog import collective_watchdog

__all__ = ["DataError", "Env", "NonFiniteLossError", "RunExistsError", "Trainer", "resolve_config", "train", "train_step"]


def _explain_compile_failure(e: Exception, tr: Trainer) -> None:
    """A torch.compile error (dynamo / inductor) under ``compile: auto``, which the user did not ask for: raise one
    line that says so and how to train eager instead (the original error stays attached as the cause)."""
    choice = tr.compiled
    if choice is None or not choice.compile or not choice.reason.startswith("auto"):
        return
    if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
        return
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise RuntimeError(f"torch.compile failed in the blocks that compile auto compiled ({choice.reason}): "
                       f"{type(e).__name__}: {first[:300]}; train eager with --no-compile (compile: false)") from e


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary written to ``OUT/summary.json``.

    Raises ``NonFiniteLossError`` if the loss becomes NaN/Inf, leaving the last good checkpoint in place. On
    SIGINT/SIGTERM the current step finishes, a checkpoint is written and the summary says
    ``status: "interrupted"`` (with ``signal``); a second signal aborts at once (``KeyboardInterrupt``). Resuming
    a run that is already at its last step changes nothing and returns ``status: "nothing to do"``.
    """
    cfg.validate()
    with compiled_quantize_mode(cfg.compiled_quantize):  # read when the compiled model traces: during the run
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    threads_before = torch.get_num_threads()
    # ---------------------------------------------------------------- checks before anything is written
    model_cfg = check_names(cfg)
    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None
    resume_dir = Path(ckpt["path"]).parent if ckpt is not None else None
    if ckpt is not None and resume_dir is not None and int(ckpt["step"]) >= min(cfg.stop_at or cfg.steps, cfg.steps):
        return _nothing_to_do(cfg, int(ckpt["step"]), resume_dir)
    out = Path(cfg.out) if cfg.out else (resume_dir if resume_dir is not None else default_out())
    master = int(os.environ.get("RANK", "0")) == 0
    lock = claim_run_dir(out) if master else None  # one run per folder, before anything is written there
    try:
        check_out(cfg, out, resume_dir, master)
        data_position = check_resume(cfg, ckpt, int(os.environ.get("WORLD_SIZE", "1"))) if ckpt is not None else 0
        check_prepared_data(cfg.data)
        if ckpt is not None:  # the recorded CPU thread count (results depend on it)
            on_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
            threads, note = threads_for_resume(cfg.threads, ckpt, on_cpu)
            cfg = cfg.replace({"threads": threads})
            if note and master:
                print(note, flush=True)
        env = setup_env(cfg)
        try:
            with (collective_watchdog(env.rank, env.world_size, cfg.dist_timeout) if env.distributed  # names a
                  else contextlib.nullcontext()):  # frozen rank when a collective times out (--dist-timeout)
                summary = _run(cfg, env, model_cfg, ckpt, out, data_position)
            if env.distributed:
                # every rank done before any tears the group down: a gloo peer still talking to a destroyed group
                # aborted its process at exit ("terminate called without an active exception", rc 1) now and then
                dist.barrier()
            return summary
        finally:
            if env.distributed:
                destroy_process_group()  # its threads may outlive it: lowbit.train.distributed "teardown"
            torch.set_num_threads(threads_before)
    finally:
        if lock is not None:
            lock.release()


def _nothing_to_do(cfg: TrainConfig, step: int, run_dir: Path) -> dict[str, Any]:
    """A resume whose checkpoint is already at the last step to take: one line (rank 0, stderr) and nothing
    written, so the finished run's books (summary.json, eval.csv, metrics.csv) stay as they are."""
    if step >= cfg.steps:
        line = (f"lowbit train: {run_dir} is already finished (step {step} of {cfg.steps}); nothing changed. "
                f"To train further, raise --steps: lowbit train --resume {run_dir} --steps N (N > {step})")
    else:
        line = (f"lowbit train: {run_dir} is already at step {step}, --stop-at {cfg.stop_at}; nothing changed. "
                "To train further, raise --stop-at or leave it out")
    if int(os.environ.get("RANK", "0")) == 0:
        print(line, file=sys.stderr, flush=True)
    return {"status": "nothing to do", "step": step, "out": str(run_dir), "message": line}


def _run(cfg: TrainConfig, env: Env, model_cfg: Any, ckpt: dict[str, Any] | None, out: Path, data_position: int) -> dict[str, Any]:
    """Model, resume, data, the loop, the summary."""
    start_step = int(ckpt["step"]) if ckpt else 0
    end_step = min(cfg.stop_at or cfg.steps, cfg.steps)
    tr = build_trainer(cfg, env, model_cfg)
    run = _Run(cfg, env, tr, model_cfg, out)
    if ckpt is not None:
        restore(tr, ckpt)
        run.data_position = data_position
        run.last_ckpt, run.last_ckpt_step = Path(ckpt["path"]), start_step
        run.skipped_before = {k: int(v) for k, v in (ckpt.get("data_skipped") or {}).items()}
        run.skipped = dict(run.skipped_before)
    batches = open_data(run)
    if env.master:  # after everything that can refuse the run: no orphan folder
        make_run_dir(cfg, out)
        announce(cfg, env, tr, run.samples_per_step, out, (start_step, ckpt["path"]) if ckpt else None, run.damage)
    run.open_logs(start_step, resumed=ckpt is not None)
    try:
        step, interrupted = _loop(run, batches, start_step, end_step)
    finally:
        run.close()
    return run.summary(step, interrupted)


def _loop(run: _Run, batches: Any, start_step: int, end_step: int) -> tuple[int, int]:
    """Steps ``start_step + 1 .. end_step``, periodic checkpoints and evaluations, the final checkpoint and
    evaluation. Returns the last step taken and the signal that stopped the run early (0: none)."""
    cfg, env, tr = run.cfg, run.env, run.tr
    evaluating = env.master or env.parallel == "fsdp"  # FSDP: every rank takes part in the (sharded) forward
    step, interrupted = start_step, 0
    tr.model.train()
    clock = run.clock  # each step's time, to the end of its device work (lowbit.train.timing)
    with Interrupt() as interrupt:
        for step in range(start_step + 1, end_step + 1):  # `step` counts completed updates (1-based)
            clock.start()
            got = [next(batches) for _ in range(cfg.accum_steps)]
            clock.data_ready()
            micro = [(_to_device(images, env.device), tokens.to(env.device, non_blocking=True)) for images, tokens in got]
            logging = step % cfg.log_every == 0 or step == end_step  # the same on every rank
            try:
                loss, grad_norm = train_step(tr, micro, step, logging)
            except _NonFiniteLoss as e:
                raise NonFiniteLossError(step, e.value, run.last_ckpt, run.last_ckpt_step) from None
            except Exception as e:
                _explain_compile_failure(e, tr)
                raise
            clock.stop()  # after the step's last queued op: the optimizer, the schedule, the clamp
            run.data_position += cfg.batch_size * cfg.accum_steps
            stop = run.record(step, loss, grad_norm, logging, interrupt.signum)
            if step - start_step <= tr.replica_checks:  # after the step's row is written, outside its timing
                clock.pause()
                check_replicas(tr, step)
            if stop:
                interrupted = interrupt.signum or signal.SIGTERM  # another rank's signal: pre-emption
                break
            if cfg.save_every > 0 and step % cfg.save_every == 0 and step != end_step:
                clock.pause()  # checkpoints and evaluations are not training time
                run.save(step)
            if evaluating and cfg.eval_every and step % cfg.eval_every == 0 and step != end_step:
                clock.pause()
                run.evaluate(step)
        # the end, or the interrupted step; save_every -1: no checkpoint at all (benchmarks)
        if step > start_step and run.last_ckpt_step != step and cfg.save_every >= 0:
            run.save(step)
        if evaluating and not interrupted:
            run.evaluate(end_step, announce=False)  # the caller prints the final results
    return step, interrupted
