"""Multi-process training pieces (``torchrun``): process group, DDP / FSDP2 wrapping, the contrastive loss over
the global batch (all-gathered features, local loss, exact gradient accumulation), gradient norms of sharded
parameters, and distributed checkpoints (``torch.distributed.checkpoint``). PyTorch's own stack throughout.

Global batch. ``batch_size`` is per process; one update sees ``N = batch_size × world_size × accum_steps``
samples. The loss is CLIP's symmetric cross-entropy over the ``N × N`` similarity matrix of the *whole* global
batch, so every configuration (1 process or W, DDP or FSDP, any ``accum_steps``, local loss or not, gather
with or without gradient) computes the same loss and, up to rounding, the same gradient:

* features are all-gathered across ranks; with ``gather_with_grad`` through
  ``torch.distributed.nn.functional.all_gather`` (its backward sums every rank's gradient of a rank's slot),
  otherwise with a plain ``all_gather`` whose own slot is replaced by the local features (open_clip's
  scheme), the local gradient then being scaled by W so that DDP/FSDP's averaging gives the full gradient;
* ``local_loss`` (open_clip): each rank's rows are only its own samples, against all gathered columns; the
  ranks' losses average to the global loss and (with ``gather_with_grad``) their gradients to its gradient.
  The logged loss is the average over ranks (one extra ``all_reduce`` of a scalar per step);
* ``accum_steps`` > 1 follows open_clip's ``accum_freq``: a no-grad forward of every micro-batch caches the
  features, then each micro-batch is run again with gradient and the loss is computed over the cached
  features of the other micro-batches plus its own live ones; the micro-batch gradients sum to the full-batch
  gradient (``logit_scale``, which every micro-batch's loss sees directly, gets 1/accum_steps of each). Costs
  one extra forward per micro-batch; gradient sync only on the last micro-batch (``no_sync`` /
  ``set_requires_gradient_sync``).

FSDP2. ``fully_shard`` on every transformer block, then on the root (patch/token embeddings, projections,
final norms) with ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` when training in bf16 on
CUDA (fp32 otherwise). ``logit_scale`` is a 0-dim parameter, which ``fully_shard`` cannot shard: it stays a
replicated plain parameter and its gradient is averaged with one ``all_reduce``.

Checkpoints. Single process and DDP: ``OUT/checkpoint.pt`` (``lowbit.train.checkpoint``). FSDP:
``OUT/checkpoint.dcp/``, a ``torch.distributed.checkpoint`` directory of the model and optimizer state
(``get_state_dict``: DTensor shards, keyed by parameter name) plus ``meta.pt`` (step, config, scheduler, RNG,
data position; plain tensors). Written to ``OUT/.checkpoint.dcp.tmp``; ``meta.pt`` records the SHA-256 of
every file DCP wrote (verified by ``load_checkpoint``); then the current one becomes ``OUT/checkpoint.prev.dcp``
and the new one takes its place, as the single-file ``checkpoint.pt`` / ``checkpoint.prev.pt``. Either format
resumes on any number of processes and in either mode (``set_state_dict`` reshards). DCP's own errors
(``CheckpointException``: every rank's traceback) reach the user as one line (``CheckpointError`` / ``OSError``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn  # before any process group exists: see "teardown" below
import torch.nn.functional as F

from lowbit.atomic_io import fsync_dir, no_space

__all__ = [
    "all_finite",
    "average_loss",
    "average_replicated_grads",
    "contrastive_loss",
    "destroy_process_group",
    "gather_features",
    "grad_norm_and_clip",
    "load_dcp",
    "load_full_into_fsdp",
    "no_grad_sync",
    "process_group_outlives_destroy",
    "save_dcp",
    "shard_model",
    "sum_over_ranks",
]

META_NAME = "meta.pt"


# ---------------------------------------------------------------------------------------------- wrapping


def shard_model(model: torch.nn.Module, device: torch.device, bf16_params: bool) -> torch.nn.Module:
    """FSDP2: ``fully_shard`` each transformer block, then the root (``logit_scale`` left replicated).

    ``encode_image``/``encode_text`` are registered as FSDP forward methods, so zero-shot evaluation (which
    calls them, not ``forward``) unshards the root's parameters too.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params else MixedPrecisionPolicy()
    blocks = [b for tower in (model.visual, model.text) for b in tower.blocks]
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    ignored = {p for n, p in model.named_parameters() if p.ndim == 0}  # logit_scale: 0-dim, not shardable
    fully_shard(model, mesh=mesh, mp_policy=mp, ignored_params=ignored)
    for name in ("encode_image", "encode_text"):
        register_fsdp_forward_method(model, name)
    return model


@contextlib.contextmanager
def no_grad_sync(model: torch.nn.Module, parallel: str | None, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter of a backward unless ``sync`` (gradient accumulation)."""
    if sync or parallel is None:
        yield
    elif parallel == "ddp":
        with model.no_sync():  # type: ignore[operator]
            yield
    else:
        model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)  # type: ignore[operator]


def average_replicated_grads(model: torch.nn.Module) -> None:
    """Average, across ranks, the gradients of plain (non-DTensor) parameters of an FSDP model (``logit_scale``)."""
    from lowbit.optim._stable_adamw import is_dtensor

    grads = [p.grad for p in model.parameters() if p.grad is not None and not is_dtensor(p)]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # gloo has no AVG
    flat /= dist.get_world_size()
    for g, x in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(x.view_as(g))


# ---------------------------------------------------------------------------------------------- the loss


def _scale_grad(x: torch.Tensor, k: float) -> torch.Tensor:
    """``x`` in the forward; the backward multiplies the gradient by ``k``."""
    if k == 1.0:
        return x
    d = x.detach()
    return d + (x - d) * k


def gather_features(x: torch.Tensor, with_grad: bool) -> torch.Tensor:
    """Every rank's ``x`` concatenated in rank order (a no-op with one process).

    ``with_grad``: ``torch.distributed.nn.functional.all_gather`` (gradients flow to the owning ranks).
    Otherwise a plain all-gather with this rank's slot replaced by ``x`` itself (gradient to it only).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if with_grad:
        with warnings.catch_warnings():  # torch 2.13 marks it deprecated (for private successors); same semantics
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(dist_nn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def contrastive_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    local_loss: bool = False,
    gather_with_grad: bool = True,
    accum_steps: int = 1,
) -> torch.Tensor:
    """CLIP's loss over the global batch from this rank's features ``[n, D]`` (all its micro-batches).

    Returns the global-batch loss (``local_loss``: this rank's share, whose average over ranks is the global
    loss), with gradient scalings that make DDP/FSDP's gradient averaging and the sum over micro-batches give
    the gradient of the global loss (see the module docstring).
    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    world = dist.get_world_size() if distributed else 1
    scale = _scale_grad(logit_scale, 1.0 / accum_steps)
    if not distributed:
        from lowbit.models import clip_loss

        return clip_loss(image, text, scale)
    if not gather_with_grad:  # the gradient reaches only the local slot: DDP/FSDP's mean over ranks needs W x
        image, text = _scale_grad(image, float(world)), _scale_grad(text, float(world))
    all_image, all_text = gather_features(image, gather_with_grad), gather_features(text, gather_with_grad)
    if not local_loss:
        from lowbit.models import clip_loss

        return clip_loss(all_image, all_text, scale)
    n = image.shape[0]
    labels = torch.arange(n, device=image.device) + dist.get_rank() * n
    logits_per_image = scale * image.float() @ all_text.float().t()
    logits_per_text = scale * text.float() @ all_image.float().t()
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def average_loss(value: float) -> float:
    """The mean of a float over ranks (the global loss from ``local_loss`` shares)."""
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def sum_over_ranks(values: list[int]) -> list[int]:
    """Element-wise sum of small integer counters over ranks (one ``all_reduce``): the trainer's per-step
    agreement on an interrupt signal and on skipped-data counts."""
    t = torch.tensor(values, dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t.tolist()]


# ---------------------------------------------------------------------------------------------- gradients


def grad_norm_and_clip(model: torch.nn.Module, max_norm: float) -> float:
    """Global gradient 2-norm over all (sharded and plain) parameters; scales gradients to ``max_norm`` if above.

    FSDP: the DTensor gradients' norm via ``torch.nn.utils.get_total_norm`` (reduced over the mesh), the plain
    (replicated) ones' added locally; ``clip_grads_with_norm_`` on each kind.
    """
    from lowbit.optim._stable_adamw import is_dtensor

    sharded = [p for p in model.parameters() if p.grad is not None and is_dtensor(p)]
    plain = [p for p in model.parameters() if p.grad is not None and not is_dtensor(p)]
    sq = torch.zeros((), dtype=torch.float64)
    if sharded:
        n = torch.nn.utils.get_total_norm([p.grad for p in sharded], 2.0)
        n = n.full_tensor() if is_dtensor(n) else n
        sq = sq + n.double().cpu() ** 2
    if plain:
        sq = sq + torch.nn.utils.get_total_norm([p.grad for p in plain], 2.0).double().cpu() ** 2
    total = float(sq.sqrt())
    if max_norm < float("inf") and total > max_norm:
        for ps in (sharded, plain):
            if ps:
                torch.nn.utils.clip_grads_with_norm_(ps, max_norm, torch.tensor(total))
    return total


def all_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter (every rank's shard) is finite; the same answer on every rank."""
    from lowbit.optim._stable_adamw import is_dtensor

    ok = all(bool(torch.isfinite(p.to_local() if is_dtensor(p) else p).all()) for p in model.parameters())
    if dist.is_available() and dist.is_initialized():
        flag = torch.tensor([0.0 if ok else 1.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        ok = float(flag.item()) == 0.0
    return ok


def replicas_agree(model: torch.nn.Module) -> bool:
    """Whether every rank holds the same parameters, DDP's invariant (checked where it is not guaranteed: CUDA
    graphs replay the gradients DDP all-reduces from hooks). Per parameter a float64 sum and sum of squares,
    compared by a MIN and a MAX ``all_reduce`` (equal on all ranks exactly when the checksums are); the same answer
    on every rank. True without a process group."""
    params = list(model.parameters())  # the same model on every rank: all have parameters, or none
    if not params or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return True
    with torch.no_grad():
        lo = torch.stack([t for p in params for t in (p.double().sum(), p.double().square().sum())])
    if dist.get_backend() == "nccl" and lo.device.type != "cuda":
        lo = lo.cuda()
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


# ---------------------------------------------------------------------------------------------- checkpoints


def save_dcp(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
             keep_previous: bool = True) -> Path:
    """Write model + optimizer (every rank its shards) and ``meta`` (rank 0, with the SHA-256 of every DCP file) to
    the DCP directory ``path``.

    Collective. Atomic: written to ``.NAME.tmp`` beside it; then (``keep_previous``) the current directory
    becomes ``checkpoint.prev.dcp`` (replacing the one before) and the new one takes its place. A crash between the
    two renames leaves the previous one, which ``resolve_checkpoint`` finds. ``keep_previous=False`` (the run
    resumed from the previous one: the current is damaged) drops the current one instead.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from lowbit.train.checkpoint import PREV_DCP_NAME, dcp_file_checksums, save_checkpoint

    path = Path(path)
    tmp, prev, old = path.parent / f".{path.name}.tmp", path.parent / PREV_DCP_NAME, path.parent / f".{path.name}.old"
    master = dist.get_rank() == 0
    if master:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp))
    except (Exception, dcp.api.CheckpointException) as exc:  # CheckpointException is a BaseException
        raise dcp_error(exc, tmp, "write") from exc
    dist.barrier()
    if master:
        save_checkpoint(tmp / META_NAME, {**meta, "files": dcp_file_checksums(tmp)})
        fsync_dir(tmp)
        if path.exists():
            if keep_previous:
                shutil.rmtree(prev, ignore_errors=True)
                os.replace(path, prev)  # a crash right here leaves the previous one to resume from
            else:
                shutil.rmtree(path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)  # the layout before checkpoint.prev.dcp
    dist.barrier()
    return path


def dcp_error(exc: BaseException, path: str | Path, doing: str) -> Exception:
    """DCP's ``CheckpointException`` (a dict of every failed rank's exception and traceback) or any other error of a
    DCP read/write as one line: ``OSError(ENOSPC)`` for a full disk, else ``CheckpointError`` naming the directory,
    the ranks and the first failure."""
    import errno

    from lowbit.train.checkpoint import CheckpointError

    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        ranks = sorted(failures)
        first = failures[ranks[0]]  # (exception, traceback)
        inner = first[0] if isinstance(first, tuple) else first
        who = f" on rank(s) {', '.join(map(str, ranks))}"
    else:
        inner, who = exc, ""
    if no_space(inner):
        return OSError(errno.ENOSPC, f"no space left on the device: could not write checkpoint {str(path)!r} "
                       "(the previous checkpoint, if any, is kept)")
    text = str(inner).strip().splitlines()
    what = f"{type(inner).__name__}: {text[0][:200]}" if text else type(inner).__name__
    return CheckpointError(f"checkpoint {str(path)!r} could not be {'read' if doing == 'read' else 'written'}{who}: "
                           f"{what}")


def load_dcp(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a DCP checkpoint's model + optimizer state into ``model`` (FSDP-sharded or plain, any number of
    ranks, or one process without a process group) and ``optimizer``: DCP reads the pieces each rank needs."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    try:
        with warnings.catch_warnings():  # one process without a group is intended (a resume on fewer processes)
            warnings.filterwarnings("ignore", "torch.distributed is disabled, unavailable or uninitialized",
                                    UserWarning)
            dcp.load(state, checkpoint_id=str(path))
    except (Exception, dcp.api.CheckpointException) as exc:  # CheckpointException is a BaseException
        raise dcp_error(exc, path, "read") from exc
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_full_into_fsdp(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: dict[str, Any]) -> None:
    """Load a single-file checkpoint (full tensors; optimizer state keyed by index) into an FSDP model."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, ckpt["model"], options=options)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved = ckpt["optimizer"]
    state = {order[int(i)]: v for i, v in saved["state"].items()}
    groups = [{**g, "params": [order[int(i)] for i in g["params"]]} for g in saved["param_groups"]]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=options)


# ---------------------------------------------------------------------------------------------- teardown
# A gloo process group runs three threads (its two workers and gloo's TCP loop) until its C++ object is destroyed,
# and destroy_process_group() destroys it only if nothing else holds it. Two things did, so the threads ran on
# through the interpreter's finalization and the C++ teardown of exit(), where a rank now and then aborted
# ("terminate called without an active exception", rc 1 from torchrun after a finished run):
# - torch.distributed.nn.functional's collectives take ``group=group.WORLD`` as a default argument, evaluated when
#   the module is first imported. Imported after init_process_group (as gather_features once did, lazily), the
#   defaults held the live group until Py_FinalizeEx's last garbage collection destroyed it there (seen in gdb:
#   ~ProcessGroupGloo under func_clear <- finalize_modules). Imported with this module, before any group, they
#   are None.
# - FSDP2 (fully_shard) keeps a reference of its own that no Python object shows (torch 2.13; a bare script with
#   one fully_shard leaves the group alive after destroy_process_group too), so under FSDP the threads are still
#   running when the process exits. The command line therefore ends such a process with os._exit once its output
#   is flushed (lowbit.cli.main), skipping the teardown the threads could race.
_DESTROYED: list[bool] = []


def destroy_process_group() -> None:
    """``dist.destroy_process_group()``, remembered: ``process_group_outlives_destroy`` then says whether the
    group's threads may still be running (see "teardown" above)."""
    dist.destroy_process_group()
    _DESTROYED.append(True)


def process_group_outlives_destroy() -> bool:
    """True once this process has destroyed a process group that may live on (FSDP2 holds it): the caller
    ends the process with ``os._exit`` after flushing its output rather than through the interpreter's teardown."""
    if not _DESTROYED:
        return False
    threads = Path("/proc/self/task")
    if not threads.is_dir():  # not Linux: assume the group lives on
        return True
    names = []
    for t in threads.iterdir():
        with contextlib.suppress(OSError):
            names.append((t / "comm").read_text().strip())
    return any(n.startswith(("pt_gloo", "gloo_", "pt_nccl")) for n in names)
