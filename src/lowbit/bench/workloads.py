"""The model of a ``lowbit bench model --model SPEC`` (random weights, random inputs, nothing downloaded): the spec
parsed, the package of its prefix imported, the model built and fed.

* ``open_clip:<name>[:key=value,...]``: ``open_clip.create_model(name, pretrained=None)`` (a name of
  ``open_clip.list_models()``; ``vision.width=32`` / ``text.layers=2`` set keys of its ``vision_cfg`` /
  ``text_cfg``, other keys are ``create_model`` arguments or top-level config keys such as ``embed_dim``), fed random
  images of its tower's ``image_size`` and random tokens of its ``context_length`` (the tokenizer's length),
  ``open_clip.ClipLoss`` (``SigLipLoss`` for a model with a logit bias), images/s.
* ``timm:<name>[:key=value,...]``: ``timm.create_model(name, pretrained=False, **options)``, fed random images of
  the size the model takes (its patch embedding's ``img_size``, so that ``img_size=`` works, else
  ``pretrained_cfg["input_size"]``) and random class labels (cross-entropy).
* ``hf:<model type or config class>[:key=value,...]``: a ``transformers`` model built from its config object
  (``AutoConfig.for_model(type)`` or ``transformers.<Name>Config``; options override the config's attributes; a
  config with sub-configs, such as CLIP's ``text_config`` / ``vision_config``, takes ``text.hidden_size=1024`` for
  one of them and an unprefixed key that only the sub-configs have, such as ``hidden_size=1280``, for each that has
  it). ``clip`` / ``siglip``: ``CLIPModel`` / ``SiglipModel`` (``AutoModel.from_config``) on random
  ``pixel_values`` + ``input_ids`` with ``return_loss=True`` (images/s). A vision config (``image_size``):
  ``AutoModelForImageClassification`` with random labels (images/s). Otherwise a text model: ``AutoModelForMaskedLM`` (or ``AutoModelForCausalLM`` where
  there is no masked-LM head) with ``labels=input_ids`` over ``--seq-len`` tokens (tokens/s).

Each package is needed only for its own prefix; without it the command stops with one line naming it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

PACKAGES = {"open_clip": "open_clip", "timm": "timm", "hf": "transformers"}  # SPEC prefix -> the package it needs
PIP_NAMES = {"open_clip": "open_clip_torch"}  # where the pip name is not the import name


# ---------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value: ``source`` ("open_clip", "timm" or "hf"), ``name``, ``options`` (key -> int/float/bool/str)."""

    source: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.source}:{self.name}" + (f":{opts}" if opts else "")


def _value(text: str) -> Any:
    """``"1280"`` -> 1280, ``"0.1"`` -> 0.1, ``"true"``/``"false"`` -> bool, ``"none"`` -> None, else the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> ModelSpec:
    """``open_clip:<name>[:k=v,...]``, ``timm:<name>[:k=v,...]`` or ``hf:<model type or config class>[:k=v,...]``;
    ``ValueError`` naming what is wrong otherwise."""
    source, sep, rest = spec.partition(":")
    if not sep or source not in PACKAGES:
        raise ValueError(f"--model {spec!r}: expected timm:<model name>, hf:<model type or config class> or "
                         "open_clip:<model name>[:key=value,...], e.g. timm:vit_huge_patch14_224, "
                         "hf:clip:vision.hidden_size=1280 or open_clip:ViT-H-14")
    name, _, opts = rest.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"--model {spec!r}: no model name after {source}:")
    options: dict[str, Any] = {}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--model {spec!r}: option {item!r} is not key=value")
        options[key.strip()] = _value(value.strip())
    return ModelSpec(source, name, options)


def require(source: str, spec: str | None = None) -> Any:
    """The package a spec prefix needs, imported; ``ImportError`` with one line naming it when it is missing."""
    package = PACKAGES[source]
    try:
        return importlib.import_module(package)
    except ImportError as e:
        if getattr(e, "name", None) not in (package, None):
            raise  # the package is there but one of its own imports failed: show that
        raise ImportError(f"--model {spec or source + ':...'} needs the {package} package, which is not "
                          f"installed: pip install {PIP_NAMES.get(source, package)}") from None


# ---------------------------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """A model and how to feed it: ``batch(n, device)`` -> keyword inputs, ``loss(model, inputs)`` -> scalar;
    ``unit`` is what the throughput counts ("images" or "tokens"), ``per_sample`` how many of them one sample is."""

    model: nn.Module
    batch: Callable[[int, torch.device], dict[str, torch.Tensor]]
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    unit: str = "images"
    per_sample: int = 1


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _output_loss(out: Any, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of 2-D logits against ``labels`` (modulo the class count); the mean square otherwise."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[-1] > 1:
        return nn.functional.cross_entropy(out.float(), labels % out.shape[-1])
    return out.float().pow(2).mean()


def timm_input_size(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) the timm ``model`` takes: its patch embedding's ``img_size`` and input channels
    when it has one (``img_size=`` / ``in_chans=`` options change those but not ``pretrained_cfg``), else
    ``pretrained_cfg["input_size"]``, else (3, 224, 224)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    c, h, w = (int(v) for v in tuple(cfg.get("input_size") or (3, 224, 224)))
    c = int(getattr(model, "in_chans", None) or c)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, int):
        size = (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        h, w = size
    return c, h, w


def timm_workload(spec: ModelSpec) -> Workload:
    timm = require("timm")
    model = timm.create_model(spec.name, pretrained=False, **spec.options)
    c, h, w = timm_input_size(model)
    classes = int(getattr(model, "num_classes", 0) or 1000)

    def batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
        g = _generator(0)
        return {"x": torch.randn(n, c, h, w, generator=g).to(device),
                "labels": torch.randint(0, classes, (n,), generator=g).to(device)}

    return Workload(model, batch, lambda m, b: _output_loss(m(b["x"]), b["labels"]))


def hf_config(transformers: Any, spec: ModelSpec) -> Any:
    """The config object of ``spec``: defaults of the model type / config class, ``spec.options`` applied."""
    name = spec.name
    cls = getattr(transformers, name, None) if name.endswith("Config") else None
    if cls is None:
        try:
            cls = type(transformers.AutoConfig.for_model(name))
        except (ValueError, KeyError):
            raise ValueError(f"--model hf:{name}: transformers knows no model type or config class {name!r} "
                             "(e.g. clip, vit, bert or CLIPConfig)") from None
    default = cls()
    subs = {k[: -len("_config")]: v for k, v in vars(default).items() if k.endswith("_config") and hasattr(v, "to_dict")}
    top: dict[str, Any] = {}
    sub_kw: dict[str, dict[str, Any]] = {p: {} for p in subs}
    for key, value in spec.options.items():
        prefix, dot, attr = key.partition(".")
        if dot and prefix in subs:
            if not hasattr(subs[prefix], attr):
                raise ValueError(f"--model {spec}: {type(subs[prefix]).__name__} has no attribute {attr!r}")
            sub_kw[prefix][attr] = value
        elif hasattr(default, key):
            top[key] = value
        elif any(hasattr(s, key) for s in subs.values()):
            for p, s in subs.items():
                if hasattr(s, key):
                    sub_kw[p][key] = value
        else:
            where = f" or its {'/'.join(subs)} configs" if subs else ""
            raise ValueError(f"--model {spec}: {key!r} is not an attribute of {cls.__name__}{where}")
    return cls(**top, **{f"{p}_config": kw for p, kw in sub_kw.items() if kw})


def _seq_len(cfg: Any, requested: int) -> int:
    longest = next((int(v) for k in ("max_position_embeddings", "n_positions", "n_ctx")
                    if isinstance(v := getattr(cfg, k, None), int) and v > 0), 512)
    return min(requested, longest) if requested > 0 else min(longest, 512)


def hf_workload(spec: ModelSpec, seq_len: int = 0) -> Workload:
    transformers = require("hf")
    cfg = hf_config(transformers, spec)
    model_type = getattr(cfg, "model_type", "")
    if model_type in ("clip", "siglip"):  # AutoModel: CLIPModel / SiglipModel, attention implementation auto-set
        model = transformers.AutoModel.from_config(cfg)
        vision, text = cfg.vision_config, cfg.text_config
        size, channels = int(vision.image_size), int(getattr(vision, "num_channels", 3))
        length, vocab = _seq_len(text, seq_len), int(text.vocab_size)

        def batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
            g = _generator(0)
            return {"pixel_values": torch.randn(n, channels, size, size, generator=g).to(device),
                    "input_ids": torch.randint(1, vocab, (n, length), generator=g).to(device)}

        return Workload(model, batch, lambda m, b: m(**b, return_loss=True).loss)
    if hasattr(cfg, "image_size"):
        model = transformers.AutoModelForImageClassification.from_config(cfg)
        size, channels = int(cfg.image_size), int(getattr(cfg, "num_channels", 3))
        classes = int(getattr(cfg, "num_labels", 2))

        def image_batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
            g = _generator(0)
            return {"pixel_values": torch.randn(n, channels, size, size, generator=g).to(device),
                    "labels": torch.randint(0, classes, (n,), generator=g).to(device)}

        return Workload(model, image_batch, lambda m, b: m(**b).loss)
    try:
        model = transformers.AutoModelForMaskedLM.from_config(cfg)
    except ValueError:  # no masked-LM head for this type: a decoder
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    length, vocab = _seq_len(cfg, seq_len), int(cfg.vocab_size)

    def text_batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, vocab, (n, length), generator=_generator(0)).to(device)
        return {"input_ids": ids, "labels": ids}

    return Workload(model, text_batch, lambda m, b: m(**b).loss, unit="tokens", per_sample=length)


def open_clip_kwargs(open_clip: Any, spec: ModelSpec) -> dict[str, Any]:
    """``create_model`` keyword arguments for ``spec``: ``vision.*`` / ``text.*`` options merged into the named
    model's ``vision_cfg`` / ``text_cfg``, ``create_model``'s own parameters passed as they are, any other key as a
    top-level config key (``embed_dim``, ``quick_gelu``...)."""
    import inspect

    cfg = open_clip.get_model_config(spec.name)
    if cfg is None:
        raise ValueError(f"--model {spec}: open_clip knows no model {spec.name!r} (see open_clip.list_models(), e.g. "
                         "ViT-B-32 or ViT-H-14)")
    params = inspect.signature(open_clip.create_model).parameters
    kwargs: dict[str, Any] = {}
    towers = {"vision": dict(cfg.get("vision_cfg") or {}), "text": dict(cfg.get("text_cfg") or {})}
    changed: set[str] = set()
    for key, value in spec.options.items():
        prefix, dot, attr = key.partition(".")
        if dot and prefix in towers:
            towers[prefix][attr] = value
            changed.add(prefix)
        elif dot:
            raise ValueError(f"--model {spec}: {key!r}: only vision.<key> and text.<key> are nested options")
        else:
            kwargs[key] = value
    kwargs.update({f"{t}_cfg": towers[t] for t in changed})
    unknown = [k for k in kwargs if k not in params and k not in cfg and not k.endswith("_cfg")]
    if unknown:
        raise ValueError(f"--model {spec}: {', '.join(map(repr, unknown))} is neither a create_model argument nor a "
                         f"key of {spec.name}'s config ({', '.join(cfg)})")
    return kwargs


def open_clip_workload(spec: ModelSpec) -> Workload:
    open_clip = require("open_clip")
    kwargs = open_clip_kwargs(open_clip, spec)
    model = open_clip.create_model(spec.name, pretrained=None, output_dict=True, pretrained_text=False, **kwargs)
    size = getattr(getattr(model, "visual", None), "image_size", None) or 224
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    length, vocab = int(model.context_length), int(model.vocab_size)
    siglip = getattr(model, "logit_bias", None) is not None
    loss_fn = open_clip.SigLipLoss() if siglip else open_clip.ClipLoss()

    def batch(n: int, device: torch.device) -> dict[str, torch.Tensor]:
        g = _generator(0)
        return {"image": torch.randn(n, 3, h, w, generator=g).to(device),
                "text": torch.randint(0, vocab, (n, length), generator=g).to(device)}

    def loss(m: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        out = m(image=b["image"], text=b["text"])
        keys = ("image_features", "text_features", "logit_scale") + (("logit_bias",) if siglip else ())
        return loss_fn(*(out[k] for k in keys))

    return Workload(model, batch, loss)


def build_workload(spec: ModelSpec, seq_len: int = 0) -> Workload:
    """The model of ``spec`` (random weights, train mode) and its inputs and loss."""
    if spec.source == "open_clip":
        w = open_clip_workload(spec)
    else:
        w = timm_workload(spec) if spec.source == "timm" else hf_workload(spec, seq_len)
    w.model.train()
    return w


