"""``ConvertReport``: what :func:`lowbit.nn.convert` did to each matmul layer, and why.

One :class:`LayerRow` per layer in model order (converted, fused, or left 16-bit with the cause), with the views a
user reads: :meth:`ConvertReport.summary` (one line of counts by cause), :meth:`~ConvertReport.table` (one line per
layer), :meth:`~ConvertReport.measured_summary` (a measured conversion's gains), :meth:`~ConvertReport.launch_note`
(the CPU cost a conversion adds).
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field

__all__ = ["CONVERTED", "FUSED", "NOT_FUSED", "PACKED", "SKIPPED", "ConvertReport", "LayerRow"]

# A report row's status: what happened to the layer.
CONVERTED, FUSED, SKIPPED, NOT_FUSED = "converted", "fused", "16-bit", "not fused"
# The kind of a packed q/k/v group's row (lowbit.nn.packed), named "<attention>.q_proj+k_proj+v_proj"
PACKED = "packed projections"


@dataclass(frozen=True)
class LayerRow:
    """One matmul layer (or MLP) in a :class:`ConvertReport`: where it is, what it is, what became of it, and why.

    ``kind``: the module class (``Linear``, ``MultiheadAttention.in_proj`` for the packed q/k/v parameter, the MLP
    class); ``shape``: ``"d_in→d_out"`` (empty for an MLP); ``status``: converted / fused / 16-bit / not fused;
    ``cause``: for a layer left 16-bit, one of ``too small``, ``alignment``, ``measured slower``, ``not measured``,
    ``measurement failed``, ``module_filter``, ``unsupported``, ``filter rejects``; ``detail``: the full sentence
    (for a layer the measured filter converted, the measured gain). ``gain`` and ``measured_at``: where the measured
    filter timed the layer's shape, the recipe's speed over bf16 and the shape (``tokens×in→out``).
    """

    layer: str
    kind: str
    shape: str
    status: str
    cause: str
    detail: str
    gain: float | None = None
    measured_at: str = ""


def _cause(detail: str) -> str:
    for key, cause in (("measured slower", "measured slower"), ("not measured", "not measured"),
                       ("measurement failed", "measurement failed"),
                       ("too small", "too small"), ("multiples of", "alignment"), ("module_filter", "module_filter"),
                       ("unsupported", "unsupported"), ("bypasses", "unsupported")):
        if key in detail:
            return cause
    return "other"


@dataclass
class ConvertReport:
    """What :func:`convert` did: fqn → description / reason (``""`` is the root module).

    ``converted``: linears now running the recipe (those inside fused MLPs and the projections of converted
    ``nn.MultiheadAttention`` modules included); ``fused``: MLPs now one ``LowbitMLP``; ``skipped``: linears left as
    they were, with the reason; ``not_fused``: MLP-like modules that were not fused, with the reason (their linears
    are then converted or skipped on their own). ``layers``: the same, one :class:`LayerRow` per layer in model
    order (:meth:`rows` as dicts, :meth:`table` as text).
    """

    recipe: str = ""
    converted: dict[str, str] = field(default_factory=dict)
    fused: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    not_fused: dict[str, str] = field(default_factory=dict)
    layers: list[LayerRow] = field(default_factory=list)

    def record(self, fqn: str, kind: str, shape: str, status: str, detail: str,
               measured: tuple[float, str] | None = None) -> None:
        """Add one decision to the dicts and to ``layers`` (``measured``: the gain over bf16 and the shape timed)."""
        {CONVERTED: self.converted, FUSED: self.fused, SKIPPED: self.skipped, NOT_FUSED: self.not_fused}[status][
            fqn] = detail
        cause = _cause(detail) if status in (SKIPPED, NOT_FUSED) else ""
        gain, at = measured if measured is not None else (None, "")
        self.layers.append(LayerRow(fqn or "<root>", kind, shape, status, cause, detail, gain, at))

    def summary(self) -> str:
        n = len(self.converted) + len(self.skipped)
        causes: dict[str, int] = {}
        for r in self.layers:
            if r.status == SKIPPED:
                causes[r.cause] = causes.get(r.cause, 0) + 1
        why = f" ({', '.join(f'{k}: {v}' for k, v in causes.items())})" if causes else ""
        return (f"lowbit.convert: {len(self.converted)} linear layer(s) → {self.recipe}; {len(self.skipped)} skipped "
                f"(of {n}){why}; {len(self.fused)} fused module(s), {len(self.not_fused)} not fused")

    def measured_summary(self) -> str:
        """For a measured conversion (``--layers auto``): how many linears went 8-bit, each measured shape's speed over
        bf16 and its decision, and why the others stayed 16-bit (the causes: measured slower, not measured, ...)."""
        rows = [r for r in self.layers if r.status in (CONVERTED, SKIPPED)]
        causes: dict[str, int] = {}
        shapes: dict[str, str] = {}  # "tokens×in→out": "1.31× 8-bit", in model order
        for r in rows:
            if r.status == SKIPPED:  # "not measured (cpu): width threshold: ..." → "not measured (cpu), width threshold"
                cause = r.detail.split(": width")[0] + ", width threshold" if r.cause == "not measured" else r.cause
                causes[cause] = causes.get(cause, 0) + 1
            if r.gain is not None:
                shapes.setdefault(r.measured_at, f"{r.gain:.2f}× {'8-bit' if r.status == CONVERTED else '16-bit'}")
        measured = f"; measured fwd+bwd vs bf16 on this device: {', '.join(f'{k} {v}' for k, v in shapes.items())}"
        kept = ", ".join(f"{k} {v}" for k, v in causes.items()) or "none"
        return (f"{len(self.converted)} of {len(rows)} linears in {self.recipe}{measured if shapes else ''}; "
                f"16-bit: {kept}")

    def details(self) -> str:
        lines = [f"\n  fused {k or '<root>'}: {v}" for k, v in self.fused.items()]
        lines += [f"\n  not fused {k or '<root>'}: {v}" for k, v in self.not_fused.items()]
        lines += [f"\n  skipped {k or '<root>'}: {v}" for k, v in self.skipped.items()]
        return "".join(lines)

    def rows(self) -> list[dict[str, str]]:
        """One dict per layer (``layer``, ``kind``, ``shape``, ``status``, ``cause``, ``detail``, ``gain``,
        ``measured_at``), in model order."""
        return [dataclasses.asdict(r) for r in self.layers]

    def table(self, width: int | None = None) -> str:
        """The layers as an aligned text table, the summary above it (``width``: cut each detail to that many
        characters)."""
        head = ("layer", "kind", "shape", "status", "why / what")
        body = [(r.layer, r.kind, r.shape, r.status if not r.cause else f"{r.status} ({r.cause})",
                 r.detail if width is None or len(r.detail) <= width else r.detail[: width - 1] + "…")
                for r in self.layers]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(4)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths), "-" * len(head[4]))]
        lines += [fmt.format(*row).rstrip() for row in body]
        note = textwrap.fill(self.launch_note(), 80)  # prose under the table, wrapped
        return self.summary() + "\n" + "\n".join(lines) + (f"\n{note}" if note else "")

    def launch_note(self) -> str:
        """The CPU cost the conversion adds (``""`` when nothing converted): each 8-bit linear issues several kernel
        launches per training step (its quantizers and 8-bit GEMMs), which the CPU must keep up with unless CUDA
        graphs replay them. Measured on an H100 host: 1.77-1.88 ms of CPU time per converted ``Linear(1280, 5120)`` and
        step against 0.24 ms in bf16, and open_clip ViT-H-14 compiled without graphs ran 0.86-1.12x bf16 depending on
        the host, 1.12x with graphs (``docs/your-own-model.md``)."""
        n = len(self.converted)
        if not n:
            return ""
        # a packed group of k linears runs as one: k - 1 fewer (its name joins the k with "+")
        gemms = n - sum(r.layer.count("+") for r in self.layers if r.kind == PACKED and r.status == FUSED)
        packed = f" ({gemms} GEMMs: q/k/v packed)" if gemms != n else ""
        return (f"note: the {n} 8-bit layer(s){packed} issue about {7 * gemms} more kernel launches per training step "
                "(quantizers and 8-bit GEMMs, forward and backward); eager or compiled without CUDA graphs the CPU "
                "may then bound the step — compile with torch.compile(model, mode=\"reduce-overhead\") (CUDA graphs); "
                "`lowbit bench model --compile --profile` reports a step's GPU-busy share, `--cudagraphs` the step with "
                "graphs")

    def __str__(self) -> str:
        return self.summary() + self.details()
