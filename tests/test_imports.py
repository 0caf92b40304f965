"""The house's import rules, read from the source with ``ast`` (nothing imported): no module imports one that
imports it back, directly or through others, and every room imports only from the rooms below it.

Imports are counted wherever they are written (module level, inside functions, under ``TYPE_CHECKING``): a
function-level import is a dependency all the same, only a later one. ``from lowbit.pkg import name`` depends on
``lowbit.pkg.name`` when that is a module, else on ``lowbit.pkg`` (its ``__init__``); a package's ``__init__``
running first is not counted as an edge (Python's own order, not the author's choice).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# kernels → functional → nn → models → train → cli, each room above importing from those below it;
# optim, monitor and data stand beside the stack (nothing above nn); bench beside cli (anything below cli).
STACK = ("kernels", "functional", "nn", "models", "train", "cli")
BESIDE = ("optim", "monitor", "data")
LEAVES = ("lowbit.hardware", "lowbit._version", "lowbit.atomic_io", "lowbit.messages")  # import nothing from lowbit; anyone may import them
ROOT = "lowbit"  # the package's front door re-exports functional, nn, monitor, optim


def allowed(room: str) -> set[str]:
    """The rooms ``room`` may import from (its own included)."""
    below_nn = {"kernels", "functional", "nn"}
    if room in STACK:
        ok = set(STACK[: STACK.index(room) + 1])
        if STACK.index(room) >= STACK.index("train"):
            ok |= set(BESIDE) | {ROOT}
        if room == "cli":
            ok |= {"bench"}
        return ok
    if room in BESIDE:
        return below_nn | {room}
    if room == "bench":
        return set(STACK[:-1]) | set(BESIDE) | {ROOT, "bench"}
    if room == ROOT:
        return below_nn | {"optim", "monitor", ROOT}
    if room == "__main__":
        return {"cli", "__main__"}
    raise AssertionError(f"module room {room!r} has no rule in tests/test_imports.py")


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package ``__init__``) for every module under src/lowbit."""
    found = {}
    for path in sorted((SRC / "lowbit").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return found


def import_graph(mods: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the lowbit modules it imports (anywhere in its file)."""

    def known(name: str) -> str:
        while name not in mods:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                deps |= {known(a.name) for a in node.names if a.name.split(".")[0] == "lowbit"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                if base.split(".")[0] != "lowbit":
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    deps.add(sub if sub in mods else known(base))
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one cycle through them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(_one_cycle(graph, set(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _one_cycle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest import path from the component's first module back to itself (what a reader can follow)."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected component without a cycle")  # pragma: no cover


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in sorted(graph.items()):
        if module in LEAVES:
            bad += [f"{module} is a leaf but imports {d}" for d in sorted(deps)]
            continue
        ok = allowed(room(module))
        bad += [f"{module} ({room(module)}) imports {d} ({room(d)})" for d in sorted(deps)
                if d not in LEAVES and room(d) not in ok]
    return bad


def test_the_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The reader itself: a function-level import and a relative one are edges, and a circle is found."""
    pkg = tmp_path / "lowbit" / "kernels"
    pkg.mkdir(parents=True)
    (tmp_path / "lowbit" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from lowbit.kernels.a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "b.py").write_text("from lowbit.kernels import a\n\ndef g():\n    return a\n")
    global SRC
    saved, SRC = SRC, tmp_path
    try:
        graph = import_graph(modules())
    finally:
        SRC = saved
    assert graph["lowbit.kernels.a"] == {"lowbit.kernels.b"}
    assert graph["lowbit.kernels.b"] == {"lowbit.kernels.a"}
    assert cycles(graph) == [["lowbit.kernels.a", "lowbit.kernels.b", "lowbit.kernels.a"]]
    assert layer_violations({"lowbit.kernels.a": {"lowbit.nn.linear"}}) == [
        "lowbit.kernels.a (kernels) imports lowbit.nn.linear (nn)"]


def test_no_import_cycles() -> None:
    found = cycles(import_graph(modules()))
    assert not found, "import circles (each module imports the next; the last imports the first):\n" + "\n".join(
        " → ".join(c) for c in found)


def test_rooms_import_only_downward() -> None:
    bad = layer_violations(import_graph(modules()))
    assert not bad, "imports against the house's layering (see DEVELOPERS.md):\n" + "\n".join(bad)


def test_every_room_has_a_rule() -> None:
    for module in modules():
        if module not in LEAVES:
            allowed(room(module))
