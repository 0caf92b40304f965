"""Test set-up: on a machine without CUDA, Triton kernels run in the interpreter (TRITON_INTERPRET=1).

The variable must be set before Triton is imported, so it is set here, first.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Inductor's on-disk cache does not key its CPU code on ATEN_CPU_CAPABILITY: a run with another capability
# reused kernels compiled for the first one (a C++ compile error under `default`, a segfault under `avx2`).
# One cache per capability keeps `ATEN_CPU_CAPABILITY=... python -m pytest` meaningful.
if os.environ.get("ATEN_CPU_CAPABILITY") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import getpass
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{os.environ['ATEN_CPU_CAPABILITY']}"
    )

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=100, deadline=None)
# On the GPU host every new shape compiles/tunes kernels: fewer examples keep a run inside minutes.
settings.register_profile("gpu", max_examples=6, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_gloo(worker, world: int = 2) -> dict:
    """Run ``worker(rank, world, port, results)`` in ``world`` processes (each sets up its gloo group on
    ``port``); returns the ``results`` each rank stored, by rank."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(world, _free_port(), results), nprocs=world, join=True)
        return dict(results)


@pytest.fixture(scope="session")
def gloo_spawn():
    """``gloo_spawn(worker, world=2) -> {rank: result}``: a worker function in several gloo processes; skips where
    torch.distributed has no gloo."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    return _spawn_gloo


# ------------------------------------------------------------------ third-party model packages (timm, open_clip)
class _TorchvisionStub:
    """A stand-in ``torchvision`` for importing timm and open_clip where the real one cannot load: PyPI's
    torchvision is built against the CUDA torch (its ``_C.so`` needs ``libtorch_cuda.so``), and timm 1.0 /
    open_clip 3.3 import it at the top of modules their models never use it from (``FrozenBatchNorm2d``, image
    transforms). Every name is a placeholder class; instantiating one raises, so a test that really needs
    torchvision fails loudly instead of testing a stub."""

    def __init__(self) -> None:
        import importlib.abc
        import importlib.machinery
        import types

        def placeholder(name: str) -> type:
            def init(self, *args, **kwargs):
                raise RuntimeError(f"{name} is the test suite's torchvision stand-in (torchvision does not load here)")
            return Meta(name, (), {"__init__": init, "__module__": "torchvision"})

        class Meta(type):
            def __getattr__(cls, name: str):  # InterpolationMode.BICUBIC and the like
                if name.startswith("__"):
                    raise AttributeError(name)
                return placeholder(f"{cls.__name__}.{name}")

        class Module(types.ModuleType):
            def __getattr__(self, name: str):
                if name.startswith("__"):
                    raise AttributeError(name)
                setattr(self, name, value := placeholder(name))
                return value

        class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, fullname, path, target=None):
                if fullname == "torchvision" or fullname.startswith("torchvision."):
                    return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
                return None

            def create_module(self, spec):
                module = Module(spec.name)
                module.__path__ = []
                module.__version__ = "0+lowbit.tests.stub"
                return module

            def exec_module(self, module) -> None:
                pass

        self.finder = Finder()


_STUB: list[_TorchvisionStub] = []


def import_third_party(name: str):
    """The real package ``name`` (timm, open_clip, transformers), or a skip when it is not installed. Where
    ``torchvision`` itself cannot be imported, a placeholder stands in for it first (see ``_TorchvisionStub``)."""
    import importlib
    import importlib.util
    import sys

    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    if not _STUB and name in ("timm", "open_clip"):
        try:
            import torchvision  # noqa: F401
        except Exception:
            for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
                del sys.modules[key]  # a half-imported real one
            _STUB.append(_TorchvisionStub())
            sys.meta_path.insert(0, _STUB[0].finder)
    try:
        return importlib.import_module(name)
    except Exception as e:
        pytest.skip(f"{name} does not import here: {type(e).__name__}: {e}")


@pytest.fixture
def third_party():
    """``third_party("timm")``: the package, or a skip (see ``import_third_party``)."""
    return import_third_party
