"""``convert`` / ``unconvert``: swap a model's ``nn.Linear`` layers, ``nn.MultiheadAttention`` modules (and
Linear → activation → Linear MLPs) for lowbit modules in place, and back.

Modelled on torchao's ``convert_to_float8_training``: a ``module_filter(fqn, module) -> bool`` picks the
layers; by default layers the kernels cannot serve efficiently are skipped. With ``fuse=True`` every
MLP whose structure and activation are known exactly becomes one :class:`~lowbit.nn.LowbitMLP` (both linears must
pass the filter). Every decision is logged at INFO on ``lowbit.nn.convert`` and recorded in a
:class:`ConvertReport` (``convert(..., report=r)`` fills ``r``; :func:`convert_report` returns the last one of a
model); when nothing converts, one WARNING line says why and how to override the size threshold. Instead of
the threshold, :func:`lowbit.nn.measured_filter` decides from each layer shape's measured speed on the user's GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.functional.recipe import Recipe, get_recipe
from lowbit.nn._names import class_path
from lowbit.nn.attention import LowbitMultiheadAttention
from lowbit.nn.attention import unsupported as unsupported_attention
from lowbit.nn.block_norms import fuse_block_norms
from lowbit.nn.layernorm import LayerNormAlias
from lowbit.nn.linear import LowbitLinear
from lowbit.nn.mlp import LayerNormMLP, LowbitMLP
from lowbit.nn.packed import PACKED_PROJECTIONS, PackedLinear, pack_projections
from lowbit.nn.report import CONVERTED, FUSED, NOT_FUSED, SKIPPED, ConvertReport, LayerRow  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

ModuleFilter = Callable[[str, nn.Linear], bool]

# Smallest in/out width worth converting. On an H100 (bench/results/h100/sweep.md, linear.log) no width up to
# 1024 gained at 32k tokens (0.1-0.8x: the extra quantize launches cost more host time than the 8-bit matmuls
# save), 1280 (ViT-H) is break-even (0.97-1.08x by recipe) and 4096 gains (1.12-1.43x).
MIN_FEATURES = 1280
# Widths must be multiples of 16 for aligned, vectorised 8-bit tiles.
ALIGNMENT = 16
_OVERRIDE = "module_filter=lambda fqn, m: True"


def shape_reason(d_in: int, d_out: int, min_features: int = MIN_FEATURES) -> str | None:
    """Why the default filter leaves a ``d_in → d_out`` matmul in 16-bit (too narrow, misaligned), or ``None``
    (``min_features=0``: the alignment rule alone, as the measured filter of ``lowbit.nn.autolayers`` uses it)."""
    if min(d_in, d_out) < min_features:
        return (f"too small to gain ({d_in}→{d_out}; both widths must be ≥ {min_features}): narrower layers ran "
                "slower on an H100, their quantize launches costing more than the 8-bit matmul saves; torch.compile "
                "with CUDA graphs makes launches cheaper (module_filter converts them anyway)")
    if d_in % ALIGNMENT or d_out % ALIGNMENT:
        return f"widths {d_in}→{d_out} are not multiples of {ALIGNMENT} (the 8-bit tiles need aligned rows)"
    return None


def skip_reason(fqn: str, module: nn.Linear, min_features: int = MIN_FEATURES) -> str | None:
    """Why the default filter leaves ``module`` in 16-bit, or ``None`` when it converts it (``min_features``: as
    for :func:`shape_reason`)."""
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return ("inside nn.MultiheadAttention, which bypasses the module's forward (convert the attention module "
                "itself: LowbitMultiheadAttention)")
    return shape_reason(module.in_features, module.out_features, min_features)


def default_filter(fqn: str, module: nn.Linear) -> bool:
    """The default ``module_filter``: convert unless :func:`skip_reason` gives a reason."""
    return skip_reason(fqn, module) is None


def filter_reason(module_filter: ModuleFilter, fqn: str, module: nn.Linear) -> str:
    """Why ``module_filter`` rejects ``module``: its own ``reason(fqn, module)`` when it has one (the measured
    filter of ``lowbit.nn.autolayers`` does), else ``"rejected by module_filter"``."""
    reason = getattr(module_filter, "reason", None)
    return (reason(fqn, module) if callable(reason) else None) or "rejected by module_filter"


def filter_measurement(module_filter: ModuleFilter | None, fqn: str, module: nn.Linear) -> tuple[float, str] | None:
    """The gain over bf16 ``module_filter`` measured for the layer and the shape it measured (its
    ``measurement(fqn, module)``, as the measured filter of ``lowbit.nn.autolayers`` has), or ``None``."""
    measurement = getattr(module_filter, "measurement", None)
    return measurement(fqn, module) if callable(measurement) else None


def filter_note(module_filter: ModuleFilter | None, fqn: str, module: nn.Linear) -> str:
    """What ``module_filter`` says about a layer it accepts (its ``note(fqn, module)``, e.g. the measured gain), or
    ``""``."""
    note = getattr(module_filter, "note", None)
    return (note(fqn, module) or "") if callable(note) else ""


# ------------------------------------------------------------------------------------------- activation matching

def _probe(module: nn.Module) -> str | None:
    """Which activation ``module`` computes, by evaluating it (float32, [-8, 8]) against the exact candidates."""
    from lowbit.functional._pieces import ACTIVATIONS, act_forward

    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        return None
    t = torch.linspace(-8, 8, 161, dtype=torch.float32)
    try:
        with torch.no_grad():
            out = module(t.clone())
    except Exception:
        return None
    if not isinstance(out, torch.Tensor) or out.shape != t.shape or not out.is_floating_point():
        return None
    for name in ACTIVATIONS:
        if float((out.double() - act_forward(t.double(), name)).abs().max()) <= 1e-5:
            return name
    return None


# Hugging Face / open_clip class names → activation (each is then checked by behaviour too).
_ACT_NAMES = {
    "QuickGELU": "quick_gelu", "QuickGELUActivation": "quick_gelu",
    "GELUActivation": "gelu",
    "NewGELUActivation": "gelu_tanh", "PytorchGELUTanh": "gelu_tanh", "GELUTanh": "gelu_tanh",
}


def match_activation(module: nn.Module) -> tuple[str | None, str]:
    """``(activation, "")`` if ``module`` is GELU (erf / tanh) or QuickGELU exactly, else ``(None, reason)``."""
    if type(module) is nn.GELU:
        return ("gelu_tanh" if module.approximate == "tanh" else "gelu"), ""
    name = type(module).__name__
    if isinstance(module, (nn.GELU,)) or name in _ACT_NAMES:
        got = _probe(module)
        want = _ACT_NAMES.get(name, "gelu")
        if got == want:
            return got, ""
        return None, f"{name} does not compute {want} here (probed: {got or 'something else'})"
    got = _probe(module)
    if got is not None:
        return got, ""
    return None, (f"activation {name} is not one lowbit fuses exactly (GELU erf / tanh, QuickGELU x·σ(1.702x))")


# ------------------------------------------------------------------------------------------------- MLP matching

@dataclass
class _MLPMatch:
    fc1: str
    act: str
    fc2: str
    activation: str
    kind: str


def _passthrough(m: nn.Module) -> str | None:
    """``None`` if ``m`` does nothing in training (Identity, Dropout p=0), else why it blocks fusion."""
    if isinstance(m, nn.Identity):
        return None
    if isinstance(m, nn.Dropout):
        return None if m.p == 0 else f"dropout p={m.p} (fused only with p=0)"
    return f"{type(m).__name__} in the MLP"


def _match_sequential(module: nn.Sequential) -> _MLPMatch | str | None:
    items = list(module.named_children())
    core = []
    for name, child in items:
        if isinstance(child, (nn.Identity, nn.Dropout)):
            why = _passthrough(child)
            if why:
                return f"{name}: {why}"
            continue
        core.append((name, child))
    if len(core) != 3 or not isinstance(core[0][1], nn.Linear) or not isinstance(core[2][1], nn.Linear):
        return None  # not Linear → act → Linear: not an MLP candidate
    (n1, fc1), (na, act), (n2, fc2) = core
    if isinstance(act, nn.Linear):
        return None
    activation, why = match_activation(act)
    if activation is None:
        return why
    if fc1.out_features != fc2.in_features:
        return f"{n1} gives {fc1.out_features} features but {n2} takes {fc2.in_features}"
    return _MLPMatch(n1, na, n2, activation, "nn.Sequential")


# (class-name test, fc1, act, fc2, other children allowed to be pass-through, description)
_KNOWN: list[tuple[Callable[[type], bool], str, str, str, tuple[str, ...], str]] = [
    (lambda c: c.__name__ == "Mlp", "fc1", "act", "fc2", ("drop1", "norm", "drop2"), "timm Mlp"),
    (lambda c: c.__name__.endswith("MLP") and c.__name__ != "MLP", "fc1", "activation_fn", "fc2", (),
     "Hugging Face *MLP"),
    (lambda c: c.__name__ == "MLP" and c.__module__ == "lowbit.models.clip", "fc", "act", "proj", (), "lowbit CLIP MLP"),
]


def _match_named(module: nn.Module) -> _MLPMatch | str | None:
    children = dict(module.named_children())
    cls = type(module)
    for test, f1, a, f2, extra, kind in _KNOWN:
        if not (test(cls) and isinstance(children.get(f1), nn.Linear) and isinstance(children.get(f2), nn.Linear)):
            continue
        if set(children) - {f1, a, f2, *extra}:
            return f"{kind} {cls.__name__} has extra children {sorted(set(children) - {f1, a, f2, *extra})}"
        if any(True for _ in module.parameters(recurse=False)):
            return f"{kind} {cls.__name__} holds parameters of its own"
        for name in extra:
            if name in children:
                why = _passthrough(children[name])
                if why:
                    return f"{name}: {why}"
        act = children.get(a)
        if act is None:
            return f"{kind} {cls.__name__}: no activation module {a!r}"
        activation, why = match_activation(act)
        if activation is None:
            return why
        if children[f1].out_features != children[f2].in_features:
            return f"{f1} gives {children[f1].out_features} features but {f2} takes {children[f2].in_features}"
        return _MLPMatch(f1, a, f2, activation, kind)
    name = cls.__name__
    if name.endswith("Intermediate") and isinstance(children.get("dense"), nn.Linear):
        return ("Linear → activation here, the second linear in the sibling *Output module (Hugging Face "
                "ViT/BERT split): only an MLP held by one module is fused")
    linears = [n for n, c in children.items() if isinstance(c, nn.Linear)]
    if len(linears) == 2 and ("mlp" in name.lower() or {"fc1", "fc2"} <= set(children)):
        return f"{name}: unknown MLP class (its forward is not known to be fc2(act(fc1(x))))"
    return None


def match_mlp(module: nn.Module) -> _MLPMatch | str | None:
    """How ``module`` is a fusable Linear → activation → Linear MLP (a match), why it is an MLP that cannot be
    fused (a reason string), or ``None`` when it is not an MLP candidate at all."""
    if isinstance(module, LowbitMLP):
        return None
    if type(module) is nn.Sequential:
        return _match_sequential(module)
    if isinstance(module, nn.Sequential):
        return None
    return _match_named(module)


# ------------------------------------------------------------------------------------------------- convert

def convert(
    model: nn.Module,
    recipe: str | Recipe = "switchback",
    module_filter: ModuleFilter | None = None,
    *,
    fuse: bool = False,
    verbose: bool = False,
    report: ConvertReport | None = None,
) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` that ``module_filter`` accepts for a ``LowbitLinear`` in place, and
    (``fuse=True``) every Linear → activation → Linear MLP both of whose linears it accepts for a ``LowbitMLP``, with
    the LayerNorm in front of it where the block's class says it feeds the MLP alone (open_clip, timm, Hugging Face
    CLIP: :mod:`lowbit.nn.block_norms`; ``LayerNormMLP``, keys unchanged), and likewise the LayerNorm in front of
    the attention's in-projection (timm's ``norm1`` → ``attn.qkv``, open_clip's ``ln_1`` → its
    ``LowbitMultiheadAttention``, Hugging Face's ``layer_norm1`` → its q/k/v); Hugging Face's q, k, v projections
    (CLIP, SigLIP, the transformers 5 ViT family, BERT-style encoders, LLaMA-style decoders: the classes of
    :data:`lowbit.nn.packed.PACKED_PROJECTIONS`) run as one GEMM (:mod:`lowbit.nn.packed`, keys unchanged).
    Fused, the row-wise recipes (fp8-switchback, switchback: SPEC §10's flow) quantize inside the producers —
    LayerNorm, bias + GELU, GELU′ — instead of in separate passes; compiled with CUDA graphs that measured faster
    on an H100 (open_clip ViT-H-14 fused 1.162× bf16 fp8-switchback, 1.111× switchback, session 14; per linear 1.133×
    and 1.096×, session 12: ``bench/results/h100/model-open-clip-vit-h-14-cudagraphs-*.md``). ``fuse`` stays off by
    default: eager, the fused CLIP step ran slower than per linear at ViT-L and ViT-B widths
    (``bench/results/h100/step-*-fused.md``), and under ``torch.compile`` recipes outside the row-wise flow compute
    the per-linear composition anyway (their fused function's Triton launches would break the graph).

    Every ``nn.MultiheadAttention`` (open_clip's towers, ``nn.TransformerEncoderLayer``) becomes a
    :class:`~lowbit.nn.LowbitMultiheadAttention` (its packed in-projection and ``out_proj`` run the recipe, SDPA in
    between) when ``module_filter`` accepts both its ``<fqn>.in_proj`` (offered as an ``nn.Linear(E, 3E)``
    stand-in on the meta device) and ``<fqn>.out_proj``; modules built with kdim/vdim, ``add_bias_kv`` or
    ``add_zero_attn`` stay as they are, reported as unsupported.

    Parameters are shared, not copied, and ``state_dict`` keys are unchanged. Layers already converted get the new
    recipe. Returns ``model`` (replaced when it is itself a bare ``nn.Linear`` or an MLP: use the return value).
    By default (``module_filter=None``) a linear converts only when both widths are ≥ ``MIN_FEATURES`` (1280) and
    multiples of 16 (:func:`skip_reason`); pass ``module_filter=lambda fqn, m: True`` to convert every linear, or
    ``module_filter=lowbit.nn.measured_filter(recipe, tokens=batch * seq_len)`` to convert only the linears whose
    recipe measures faster than bf16 at their shape, timed on your GPU when ``convert`` asks (cached per shape;
    :mod:`lowbit.nn.autolayers`). A filter's ``reason`` / ``note`` methods, where it has them, word the report. A
    filter that measures (has a ``measurement`` method) is asked, with ``fuse=True``, about q/k/v that will be
    packed as one ``nn.Linear(E, 3E)`` stand-in: the GEMM that will run.

    The decisions go to a :class:`ConvertReport` (filled into ``report`` when given, and kept as
    ``convert_report(model)``), to the ``lowbit.nn.convert`` logger at INFO (printed too with ``verbose``), and,
    when no linear converts, one WARNING line naming the threshold and the override.
    """
    recipe = get_recipe(recipe)
    accept = module_filter or default_filter
    rep = report if report is not None else ConvertReport()
    rep.recipe = recipe.name

    def why_not(fqn: str, module: nn.Linear) -> str:
        if module_filter is None:
            return skip_reason(fqn, module) or "rejected by module_filter"
        return filter_reason(module_filter, fqn, asked_as.get(fqn, module))

    def noted(what: str, fqn: str, module: nn.Linear) -> str:
        note = filter_note(module_filter, fqn, asked_as.get(fqn, module))
        return f"{what}; {note}" if note else what

    def takes(fqn: str, module: nn.Linear) -> bool:
        return accept(fqn, asked_as.get(fqn, module))

    def join(fqn: str, name: str) -> str:
        return f"{fqn}.{name}" if fqn else name

    def shape(m: nn.Linear) -> str:
        return f"{m.in_features}→{m.out_features}"

    def linear(fqn: str, m: nn.Linear, status: str, detail: str) -> None:
        probe = asked_as.get(fqn, m)
        rep.record(fqn, type(m).__name__, shape(m), status, detail, filter_measurement(module_filter, fqn, probe))

    # q/k/v that fuse=True will pack run at E → 3E: a measuring filter is asked about that shape (a stand-in on the
    # meta device, as for nn.MultiheadAttention's in_proj), so that it times the GEMM that will run
    measuring = fuse and callable(getattr(module_filter, "measurement", None))
    asked_as: dict[str, nn.Linear] = {}

    def ask_packed(module: nn.Module, fqn: str) -> None:
        names = PACKED_PROJECTIONS.get(class_path(module)) if measuring else None
        members = [module._modules.get(n) for n in names or ()]
        if not names or not all(type(m) in (nn.Linear, LowbitLinear, PackedLinear) for m in members):
            return
        standin = nn.Linear(members[0].in_features, sum(m.out_features for m in members),
                            bias=any(m.bias is not None for m in members), device="meta")
        asked_as.update({join(fqn, n): standin for n in names})

    def attention(module: nn.MultiheadAttention, fqn: str) -> nn.Module:
        e = module.embed_dim
        in_fqn, out_fqn = join(fqn, "in_proj"), join(fqn, "out_proj")
        kinds = (f"{type(module).__name__}.in_proj", f"{type(module).__name__}.out_proj")
        shapes = (f"{e}→{3 * e}", f"{e}→{e}")
        why = unsupported_attention(module)
        if why:
            why = f"unsupported {type(module).__name__}: {why} (PyTorch's own path, which bypasses the projections)"
            rejected, measured = {in_fqn: why, out_fqn: why}, {}
        else:
            # plain nn.Linear stand-ins for the filter: the packed in-projection is a bare parameter, and out_proj's
            # class (NonDynamicallyQuantizableLinear) is no reason here, as the module runs it through the recipe
            in_proj = nn.Linear(e, 3 * e, bias=module.in_proj_bias is not None, device="meta")
            out_proj = nn.Linear(e, e, bias=module.out_proj.bias is not None, device="meta")
            rejected = {}
            measured = {f: filter_measurement(module_filter, f, m) for f, m in ((in_fqn, in_proj), (out_fqn, out_proj))}
            for f, m in ((in_fqn, in_proj), (out_fqn, out_proj)):
                if module_filter is None:  # the default filter's shape rule (out_proj's class is no reason here)
                    if r := shape_reason(m.in_features, m.out_features):
                        rejected[f] = r
                elif not module_filter(f, m):
                    rejected[f] = filter_reason(module_filter, f, m)
            if len(rejected) == 1:  # both projections run one forward: both convert or neither
                (f, r), = rejected.items()
                other = out_fqn if f == in_fqn else in_fqn
                rejected[other] = f"its sibling {f.rsplit('.', 1)[-1]} stays 16-bit ({r})"
        if rejected:
            done = " (already converted: left as it is)" if isinstance(module, LowbitMultiheadAttention) else ""
            for f, k, sh in zip((in_fqn, out_fqn), kinds, shapes, strict=True):
                rep.record(f, k, sh, SKIPPED, rejected[f] + done, measured.get(f))
            return module
        for f, k, sh, m in zip((in_fqn, out_fqn), kinds, shapes, (in_proj, out_proj), strict=True):
            rep.record(f, k, sh, CONVERTED, noted("in LowbitMultiheadAttention (SDPA between the projections)", f, m),
                       measured.get(f))
        if isinstance(module, LowbitMultiheadAttention):
            module.recipe = recipe
            return module
        return LowbitMultiheadAttention.from_module(module, recipe)

    def visit(module: nn.Module, fqn: str) -> nn.Module:
        if isinstance(module, LowbitMLP):
            names = (module.fc1_name, module.fc2_name)
            if all(accept(join(fqn, n), module._modules[n]) for n in names):
                module.recipe = recipe
                rep.record(fqn, type(module).__name__, "", FUSED,
                           f"{names[0]} → {module.activation} → {names[1]} ({type(module).__name__})")
                for n in names:
                    linear(join(fqn, n), module._modules[n], CONVERTED, f"in {type(module).__name__}")
            else:
                for n in names:
                    linear(join(fqn, n), module._modules[n], SKIPPED,
                           "in an already fused MLP whose linears the filter now rejects")
            return module
        if isinstance(module, nn.MultiheadAttention):
            return attention(module, fqn)
        if isinstance(module, nn.Linear):
            if isinstance(module, LowbitLinear):
                if takes(fqn, module):
                    module.recipe = recipe
                    linear(fqn, module, CONVERTED, noted(type(module).__name__, fqn, module))
                else:
                    linear(fqn, module, SKIPPED, why_not(fqn, module) + " (already converted: left as it is)")
                return module
            if takes(fqn, module):
                linear(fqn, module, CONVERTED, noted("LowbitLinear", fqn, module))
                return LowbitLinear.from_linear(module, recipe)
            linear(fqn, module, SKIPPED, why_not(fqn, module))
            return module
        if fuse:
            m = match_mlp(module)
            if isinstance(m, _MLPMatch):
                lin = {n: module._modules[n] for n in (m.fc1, m.fc2)}
                rejected = {n: why_not(join(fqn, n), c) for n, c in lin.items() if not accept(join(fqn, n), c)}
                if not rejected:
                    rep.record(fqn, type(module).__name__, "", FUSED, f"{m.fc1} → {m.activation} → {m.fc2} ({m.kind})")
                    for n, c in lin.items():
                        linear(join(fqn, n), c, CONVERTED, noted("in LowbitMLP", join(fqn, n), c))
                    return LowbitMLP.from_module(module, m.fc1, m.fc2, m.activation, recipe)
                rep.record(fqn, type(module).__name__, "", NOT_FUSED,
                           "; ".join(f"{n}: {r}" for n, r in rejected.items()))
            elif isinstance(m, str):
                rep.record(fqn, type(module).__name__, "", NOT_FUSED, m)
        ask_packed(module, fqn)
        for name, child in list(module.named_children()):
            new = visit(child, join(fqn, name))
            if new is not child:
                setattr(module, name, new)
        return module

    model = visit(model, "")
    if fuse:  # q/k/v linears of one input as one GEMM; the LayerNorm in front of a fused MLP or an in-projection, in
        pack_projections(model, rep)  # the classes whose forward says so
        fuse_block_norms(model, rep)
    for k, v in rep.fused.items():
        logger.info("lowbit.convert: fused %s: %s → %s", k or "<root>", v, recipe.name)
    for k, v in rep.not_fused.items():
        logger.info("lowbit.convert: not fused %s: %s", k or "<root>", v)
    for k, v in rep.converted.items():
        logger.info("lowbit.convert: converted %s (%s) → %s", k or "<root>", v, recipe.name)
    for k, v in rep.skipped.items():
        logger.info("lowbit.convert: skipped %s: %s", k or "<root>", v)
    logger.info(rep.summary() + rep.details())
    if verbose:
        print(str(rep))
    if not rep.converted:
        n = len(rep.skipped)
        small = sum("too small" in r for r in rep.skipped.values())
        why = (f"{small} of {n} narrower than the default threshold (both widths ≥ {MIN_FEATURES})" if small else
               "see the INFO log of lowbit.nn.convert for each reason")
        logger.warning(f"lowbit.convert: 0 of {n} linear layers converted to {recipe.name} ({why}); "
                       f"pass {_OVERRIDE} to convert every linear")
    object.__setattr__(model, "_lowbit_report", rep)  # a plain attribute: not state, not a submodule
    return model


def matmul_layers(model: nn.Module) -> int:
    """How many matmul layers ``convert`` looks at in ``model``: every ``nn.Linear`` plus the packed in-projection
    of every ``nn.MultiheadAttention`` (a parameter, not a module). The denominator of "k of n converted"."""
    return sum(isinstance(m, nn.Linear) + isinstance(m, nn.MultiheadAttention) for m in model.modules())


def convert_report(model: nn.Module) -> ConvertReport | None:
    """The :class:`ConvertReport` of the last :func:`convert` call on ``model`` (``None`` if never converted)."""
    return getattr(model, "_lowbit_report", None)


def unconvert(model: nn.Module) -> nn.Module:
    """Turn every lowbit module back into the plain one (``nn.Linear``, the original MLP module, ``nn.LayerNorm``),
    parameters shared. Returns ``model`` (replaced when it is itself a lowbit module: use the return value)."""
    if isinstance(model, LayerNormAlias):
        return model.to_layernorm()
    if isinstance(model, (LowbitMLP, LayerNormMLP)):
        return model.to_module()
    if isinstance(model, LowbitLinear):
        return model.to_linear()
    if isinstance(model, LowbitMultiheadAttention):
        return model.to_module()
    for name, child in list(model.named_children()):
        new = unconvert(child)
        if new is not child:
            setattr(model, name, new)
    return model
