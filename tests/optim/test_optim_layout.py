"""lowbit.optim's modules import each other only at the top, through one leaf (``_common``) and the fused path's
host tables (``_fused_plan``): no circle."""

from __future__ import annotations

import ast
from pathlib import Path

OPTIM = Path(__file__).resolve().parents[2] / "src" / "lowbit" / "optim"


def _optim_imports(path: Path) -> tuple[set[str], set[str]]:
    """(lowbit.optim modules imported at module level, those imported inside functions)."""
    tree = ast.parse(path.read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("lowbit.optim")}
    nested = {
        n.module
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for n in ast.walk(f)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("lowbit.optim")
    }
    return top, nested


def test_one_leaf_module_and_no_hidden_imports() -> None:
    imports = {p.stem: _optim_imports(p) for p in OPTIM.glob("_*.py") if p.stem != "__init__"}
    assert set(imports) == {"_common", "_foreach", "_fused", "_fused_plan", "_sharded", "_stable_adamw"}
    assert imports["_common"] == (set(), set())  # the leaf
    assert imports["_fused_plan"] == (set(), set())  # host-side tables: no optimizer arithmetic
    for name in ("_foreach", "_sharded"):
        assert imports[name] == ({"lowbit.optim._common"}, set()), name
    assert imports["_fused"] == ({"lowbit.optim._common", "lowbit.optim._fused_plan"}, set())
    assert imports["_stable_adamw"] == (
        {"lowbit.optim._common", "lowbit.optim._foreach", "lowbit.optim._fused", "lowbit.optim._sharded"}, set()
    )


def test_the_sharded_path_reuses_the_foreach_arithmetic() -> None:
    source = (OPTIM / "_sharded.py").read_text()
    for shared in ("_foreach_moments_", "_foreach_update_", "_working"):
        assert f"{shared}(" in source, shared
    for copied in ("_foreach_lerp_", "_foreach_addcmul_", "def working"):  # moments and update: not re-done here
        assert copied not in source, copied
