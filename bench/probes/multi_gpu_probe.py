"""What bounds a multi-GPU run before the model does: the GPUs' link and the data pipeline (issue #19).

* ``--nccl`` (under ``torchrun``): bus bandwidth of ``all_reduce`` (fp32, DDP's gradients) and ``all_gather_into_tensor``
  (bf16 and 8-bit, FSDP2's weights) at 64 and 256 MiB, as nccl-tests defines it (all-reduce: ``2(n-1)/n · bytes /
  t``; all-gather: ``(n-1)/n · bytes / t``), median of 10 after 3 warm-ups. Rank 0 prints one JSON line.
* ``--data SPEC``: images/s that ``lowbit train``'s DataLoader delivers with ``--workers`` processes (no GPU; 0: in
  the process, as ``lowbit train --workers 0``), after the first batches (worker start-up excluded). Prints one JSON
  line, which ``bench/multi_gpu.py`` reads for its "data?" flag. Stored images travel as uint8 pixels, as in
  ``lowbit train`` (which normalises them on the GPU); ``--pixels float32`` times the loader normalising them
  itself (the trainer's path before uint8 transport).

    torchrun --standalone --nproc_per_node 4 bench/probes/multi_gpu_probe.py --nccl
    python bench/probes/multi_gpu_probe.py --data synthetic --workers 14 --batch-size 256 --seconds 10
    python bench/probes/multi_gpu_probe.py --data .data/fmnist --workers 14 --batch-size 256 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def nccl() -> None:
    import torch.distributed as dist

    dist.init_process_group("nccl")
    rank, n = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    out: dict[str, float] = {}
    for mib in (64, 256):
        for op, dtype in (("all_reduce", torch.float32), ("all_gather", torch.bfloat16), ("all_gather", torch.int8)):
            numel = mib * 2**20 // torch.empty((), dtype=dtype).element_size()
            if op == "all_reduce":
                buf = torch.ones(numel, dtype=dtype, device="cuda")
                fn = lambda: dist.all_reduce(buf)  # noqa: E731
                factor = 2 * (n - 1) / n
            else:
                full = torch.empty(numel, dtype=dtype, device="cuda")
                shard = torch.ones(numel // n, dtype=dtype, device="cuda")
                fn = lambda: dist.all_gather_into_tensor(full, shard)  # noqa: E731
                factor = (n - 1) / n
            times = []
            for i in range(13):
                torch.cuda.synchronize()
                t = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                if i >= 3:
                    times.append(time.perf_counter() - t)
            t = statistics.median(times)
            out[f"{op} {str(dtype).split('.')[-1]} {mib} MiB: GB/s bus"] = round(factor * mib * 2**20 / t / 1e9, 1)
            out[f"{op} {str(dtype).split('.')[-1]} {mib} MiB: ms"] = round(t * 1e3, 2)
    if rank == 0:
        print(json.dumps({"world_size": n, **out}), flush=True)
    dist.destroy_process_group()


def data(spec: str, workers: int, batch_size: int, seconds: float, image_size: int, pixels: str = "uint8") -> None:
    from lowbit.data import build_train_data
    from lowbit.models import get_tokenizer
    from lowbit.train.batches import _batches, _loader_batches

    dataset = build_train_data(spec, image_size=image_size, seed=0, batch_size=batch_size, uint8=pixels == "uint8")
    batches = _loader_batches(dataset, batch_size, get_tokenizer(), workers, pin=False) if workers else \
        _batches(dataset, batch_size, get_tokenizer())  # as lowbit train --workers 0: in the process itself
    for _ in range(max(2, workers)):  # start-up: every worker's first batch
        next(batches)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        images, _ = next(batches)
        n += images.shape[0]
    dt = time.perf_counter() - t0
    print(json.dumps({"data": spec, "workers": workers, "batch_size": batch_size, "image_size": image_size,
                      "pixels": str(images.dtype).removeprefix("torch."),
                      "images_per_s": round(n / dt, 1), "per_worker": round(n / dt / max(1, workers), 1)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nccl", action="store_true")
    p.add_argument("--data", default="")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--pixels", choices=["uint8", "float32"], default="uint8",
                   help="how stored images leave the loader (uint8: as lowbit train)")
    a = p.parse_args()
    if a.nccl:
        nccl()
    if a.data:
        data(a.data, a.workers, a.batch_size, a.seconds, a.image_size, a.pixels)


if __name__ == "__main__":
    main()
