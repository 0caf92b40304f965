"""CPU-side cost of one SwitchBack layer fwd+bwd at a small width (where launches, not math, dominate)."""
import cProfile
import pstats
import time

import torch

from lowbit.kernels import _triton_quant as triton_quant
from lowbit.kernels import quantize
from lowbit.nn import LowbitLinear

layer = LowbitLinear(256, 1024, recipe="switchback").cuda().bfloat16()
ref = torch.nn.Linear(256, 1024).cuda().bfloat16()
x = torch.randn(4096, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
g = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16)
for m in (layer, ref):
    for _ in range(5):
        m(x).backward(g)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(50):
        m(x).backward(g)
    torch.cuda.synchronize()
    print(type(m).__name__, "wall ms per fwd+bwd:", (time.perf_counter() - t) / 50 * 1e3)
for name, fn in [("quantize row", lambda: quantize(x, "int8", "row")),
                 ("quantize tensor", lambda: quantize(x, "int8", "tensor")),
                 ("rows kernel only", lambda: triton_quant.quantize_rows(x.detach(), "int8"))]:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    print(name, "us per call:", (time.perf_counter() - t) / 200 * 1e6)
pr = cProfile.Profile()
pr.enable()
for _ in range(50):
    layer(x).backward(g)
torch.cuda.synchronize()
pr.disable()
pstats.Stats(pr).sort_stats("cumulative").print_stats(35)
