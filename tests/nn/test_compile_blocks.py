"""``lowbit.compile_blocks``: each repeated transformer block compiled in place (CUDA graphs by default on the GPU).

On the CPU with ``backend="aot_eager"`` (no code generation): the blocks are found where the model families keep them,
a converted model compiles block by block and computes what it computed eager (outputs and gradients), and its
module tree and ``state_dict`` keys do not change.
"""

from __future__ import annotations

import torch
from torch import nn

import lowbit
from lowbit.nn import repeated_blocks


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln(x))))


class _Tower(nn.Module):
    def __init__(self, d: int, depth: int) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.blocks = nn.ModuleList(_Block(d) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4))  # two modules of different classes: no blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_the_blocks_are_found_where_the_families_keep_them() -> None:
    tower = _Tower(16, 3)
    assert repeated_blocks(tower) == list(tower.blocks)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2, enable_nested_tensor=False)
    assert repeated_blocks(encoder) == list(encoder.layers)  # open_clip's resblocks, HF's layers: the same shape
    assert repeated_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU())) == []


def test_a_converted_model_compiles_block_by_block_and_computes_the_same() -> None:
    torch.manual_seed(0)
    eager = lowbit.convert(_Tower(32, 3), "switchback-sim", module_filter=lambda fqn, m: True)
    compiled = lowbit.convert(_Tower(32, 3), "switchback-sim", module_filter=lambda fqn, m: True)
    compiled.load_state_dict(eager.state_dict())
    keys = list(compiled.state_dict())
    assert lowbit.compile_blocks(compiled, mode=None, backend="aot_eager") == 3
    assert list(compiled.state_dict()) == keys and type(compiled.blocks[0].fc1) is type(eager.blocks[0].fc1)
    x = torch.randn(2, 5, 8)
    y_eager, y_compiled = eager(x), compiled(x)
    y_eager.square().mean().backward()
    y_compiled.square().mean().backward()
    torch.testing.assert_close(y_compiled, y_eager, rtol=0, atol=0)  # the same ops, traced: bit for bit on the CPU
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)


def test_no_repeated_blocks_compiles_nothing() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    assert lowbit.compile_blocks(model, mode=None, backend="aot_eager") == 0
    assert all(not hasattr(m, "_compiled_call_impl") or m._compiled_call_impl is None for m in model.modules())


def test_open_clip_fused_with_its_layernorms_compiles_and_computes_the_same(third_party) -> None:
    """convert(fuse=True) on open_clip (each ln_2 → mlp one LayerNormMLP, ln_1 → attn normalized inside the
    LowbitMultiheadAttention, both LayerNorms identity aliases), then its blocks
    compiled: the row-wise flow's custom ops are traced (no graph break: fullgraph) and give eager's outputs and
    gradients."""
    open_clip = third_party("open_clip")

    def build() -> nn.Module:
        torch.manual_seed(0)
        model = open_clip.CLIP(embed_dim=16, vision_cfg=dict(image_size=28, patch_size=14, width=64, layers=2,
                                                              head_width=16),
                               text_cfg=dict(context_length=8, vocab_size=100, width=64, heads=2, layers=2))
        return lowbit.convert(model, "fp8-switchback", module_filter=lambda fqn, m: True, fuse=True)

    eager, compiled = build(), build()
    assert sum(isinstance(m, lowbit.nn.LayerNormMLP) for m in compiled.modules()) == 4
    assert sum(getattr(m, "layer_norm", None) is not None for m in compiled.modules()
               if isinstance(m, lowbit.LowbitMultiheadAttention)) == 4
    for block in repeated_blocks(compiled):
        block.compile(backend="aot_eager", fullgraph=True)
    image, text = torch.randn(2, 3, 28, 28), torch.randint(0, 100, (2, 8))
    outs = []
    for model in (eager, compiled):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(image, text)
            loss = open_clip.ClipLoss()(*out[:3])
        loss.backward()
        outs.append((out[0].float(), out[1].float()))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
