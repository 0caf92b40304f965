"""Everything that can refuse a run before anything is written: the config (defaults < checkpoint < YAML <
command line), the model and recipe names, ``--out``, the checkpoint to resume, a prepared data folder's
manifest; then the run directory."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from lowbit.atomic_io import atomic_write_text
from lowbit.messages import did_you_mean
from lowbit.models import get_config
from lowbit.train.checkpoint import CHECKPOINT_NAME, DCP_NAME, PREV_DCP_NAME, PREV_NAME, load_checkpoint
from lowbit.train.config import TrainConfig, load_yaml
from lowbit.train.errors import DataError, RunExistsError

__all__ = ["check_names", "check_out", "check_prepared_data", "check_resume", "existing_run", "make_run_dir",
           "resolve_config"]


# Options that may differ between a run and its resumption without changing what is computed.
RESUMABLE_CHANGES = {
    "steps", "stop_at", "resume", "out", "eval_every", "log_every", "save_every", "progress", "zeroshot",
    "zeroshot_limit", "monitor", "activations", "compile", "compile_mode", "compiled_quantize", "threads", "device", "workers", "parallel", "local_loss", "gather_with_grad",
    "overwrite", "max_bad_fraction", "dist_timeout",
    "fsdp_8bit_allgather",  # exact: the same numbers either way
    "fuse",  # same parameters, state_dict keys and numerics (bit-identical on the CPU) fused or per-linear
}
# May change on resume if the global batch (batch_size x processes x accum_steps) stays the same.
GLOBAL_BATCH_OPTIONS = {"batch_size", "accum_steps"}
# What makes a directory a run (``--out`` holding any of them is refused unless ``overwrite``).
CHECKPOINT_FILES = (CHECKPOINT_NAME, PREV_NAME, DCP_NAME, PREV_DCP_NAME, f".{DCP_NAME}.old")  # what --resume continues
RUN_FILES = (*CHECKPOINT_FILES, "metrics.csv", "eval.csv", "summary.json", "config.yaml", "tensorboard")


def resolve_config(overrides: dict[str, Any] | None = None, config_file: str | None = None) -> TrainConfig:
    """Defaults < checkpoint's config (if resuming) < YAML ``config_file`` < ``overrides`` (the command line)."""
    overrides = dict(overrides or {})
    from_file = load_yaml(config_file) if config_file else {}
    resume = overrides.get("resume") or from_file.get("resume") or ""
    base = TrainConfig()
    if resume:
        ckpt = load_checkpoint(resume)
        saved = {k: v for k, v in ckpt["config"].items() if k not in ("stop_at", "resume", "out", "overwrite")}
        base = base.replace(saved)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        saved_world = int(ckpt.get("world_size", 1))
        if world != saved_world and "batch_size" not in from_file and "batch_size" not in overrides:
            # another number of processes: keep the global batch by default (per-process batch rescaled)
            accum = int(overrides.get("accum_steps", from_file.get("accum_steps", base.accum_steps)))
            total = base.batch_size * saved_world * base.accum_steps
            if total % (world * accum) == 0:
                base = base.replace({"batch_size": total // (world * accum), "accum_steps": accum})
    merged = base.to_dict()
    for layer in (from_file, overrides):
        merged = _deep_merge(merged, layer)
    return TrainConfig.from_dict(merged)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``; nested mappings (the ``model`` overrides) merge key by key."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def default_out() -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out, i = Path("runs") / stamp, 1
    while out.exists():
        out, i = Path("runs") / f"{stamp}-{i}", i + 1
    return out


def check_names(cfg: TrainConfig) -> Any:
    """The model config; an unknown preset, model option or recipe raises ``ValueError`` before anything is
    written (no orphan run directory)."""
    model_cfg = get_config(cfg.preset).replace(cfg.model, where="model")  # errors name keys as the file does
    if cfg.recipe != "none":
        from lowbit.functional import RECIPES

        if cfg.recipe not in RECIPES:  # the trainer also takes "none" (plain nn.Linear): list it too
            names = ["none", *RECIPES]
            raise ValueError(f"unknown recipe {cfg.recipe!r}{did_you_mean([cfg.recipe], names)}; choose one of: "
                             f"{', '.join(names)}")
    return model_cfg


def existing_run(out: Path) -> list[str]:
    """The files of a run that ``out`` already holds (empty if none)."""
    return [n for n in RUN_FILES if (out / n).exists()] if out.is_dir() else []


def check_out(cfg: TrainConfig, out: Path, resume_dir: Path | None, master: bool) -> None:
    """Refuse an ``out`` that holds another run unless ``overwrite`` (then rank 0 deletes that run's files)."""
    same = resume_dir is not None and out.resolve() == resume_dir.resolve()
    if same:
        if cfg.overwrite:
            raise ValueError(f"--overwrite with --resume {resume_dir} would delete the run being resumed; "
                             "drop --overwrite, or pass another --out")
        return
    found = existing_run(out)
    if not found:
        return
    if not cfg.overwrite:
        if not set(found) & set(CHECKPOINT_FILES):  # no checkpoint (e.g. a double Ctrl-C before the first save)
            raise RunExistsError(
                f"--out {out} already holds a run without a checkpoint ({', '.join(found)}), so it cannot be "
                "resumed: pass --overwrite to delete it and start over, or choose another --out"
            )
        raise RunExistsError(
            f"--out {out} already holds a run ({', '.join(found)}): continue it with `lowbit train --resume {out}`, "
            "or pass --overwrite to delete it and start over"
        )
    if master:
        for name in found:
            p = out / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def make_run_dir(cfg: TrainConfig, out: Path) -> None:
    """Create ``out`` and write ``config.yaml``; an unusable path is one clear ``OSError``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    except OSError as e:
        what = e.strerror or str(e)
        if isinstance(e, FileExistsError | NotADirectoryError):
            what = "a file is in the way (not a directory)"
        raise OSError(e.errno, f"cannot use run directory {str(out)!r}: {what}") from e


def check_resume(cfg: TrainConfig, ckpt: dict[str, Any], world_size: int) -> int:
    """Refuse a resume that would change the computation; returns this rank's data position (samples)."""
    samples_per_step = cfg.batch_size * world_size * cfg.accum_steps
    keep = RESUMABLE_CHANGES | GLOBAL_BATCH_OPTIONS
    changed = {k for k, v in ckpt["config"].items() if k not in keep and hasattr(cfg, k) and getattr(cfg, k) != v}
    saved_world = int(ckpt.get("world_size", 1))
    saved_global = int(ckpt["config"]["batch_size"]) * saved_world * int(ckpt["config"].get("accum_steps", 1))
    if saved_global != samples_per_step:
        raise ValueError(
            f"cannot resume with global batch {samples_per_step} (batch_size {cfg.batch_size} x {world_size} "
            f"process(es) x accum_steps {cfg.accum_steps}): the checkpoint's is {saved_global} "
            f"({ckpt['config']['batch_size']} x {saved_world} x {ckpt['config'].get('accum_steps', 1)})"
        )
    if changed:
        raise ValueError(f"cannot resume with changed option(s) {', '.join(sorted(changed))}: they change the computation")
    seen = int(ckpt.get("samples_seen", int(ckpt["data_position"]) * saved_world))
    return seen // world_size  # the global stream is dealt round-robin: rank r's k-th = k*W + r


def check_prepared_data(spec: str, sha256_limit: int = 1 << 30) -> None:
    """A folder made by ``lowbit data prepare``: every file its manifest lists must have the recorded size, and
    (when the folder holds at most ``sha256_limit`` bytes: cheap) the recorded SHA-256."""
    if not (isinstance(spec, str) and os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "manifest.json"))):
        return
    from lowbit.data.spec import read_manifest
    from lowbit.data.tars import sha256_file

    try:
        manifest = read_manifest(spec)
    except (OSError, ValueError) as e:
        raise DataError(f"prepared data {spec!r}: {e}") from e
    files = manifest.get("files", {})
    problems = []
    for name, info in files.items():
        p = Path(spec) / name
        size = p.stat().st_size if p.is_file() else None
        if size is None:
            problems.append(f"{name} is missing")
        elif "bytes" in info and size != int(info["bytes"]):
            problems.append(f"{name} has {size:,} bytes, the manifest says {int(info['bytes']):,}"
                            + (" (truncated)" if size < int(info["bytes"]) else ""))
    if not problems and sum(int(i.get("bytes", 0)) for i in files.values()) <= sha256_limit:
        problems = [f"{n} does not match its SHA-256" for n, i in files.items()
                    if i.get("sha256") and sha256_file(Path(spec) / n) != i["sha256"]]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise DataError(f"prepared data {spec!r} does not match its manifest: {shown} "
                        f"(`lowbit data verify {spec}` lists all; prepare it again)")
