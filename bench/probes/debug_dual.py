"""GPU check: quantize_dual vs the separate tensor-wise passes at multi-program grids, and the fp8-tensorwise layer."""
import torch

from lowbit.kernels import quantize, quantize_dual

for shape in [(40, 70), (200, 96), (200, 80), (1000, 300), (4096, 1280)]:
    for fmt in ("e4m3", "e5m2", "int8"):
        x = torch.randn(shape, device="cuda")
        q, qt, s = quantize_dual(x, fmt)
        q1, s1 = quantize(x, fmt, "tensor")
        q2, s2 = quantize(x, fmt, "tensor", transpose=True)
        u = lambda t: t.view(torch.uint8)  # noqa: E731
        print(shape, fmt, "q==", torch.equal(u(q), u(q1)), "qt==", torch.equal(u(qt), u(q2)),
              "qt==q.t", torch.equal(u(qt), u(q1).t().contiguous()), "s==", torch.equal(s, s1), float(s), float(s1),
              flush=True)
