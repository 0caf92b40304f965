"""The README's set-up commands and CI agree; the package's entry points work."""

import re
import subprocess
import sys
from pathlib import Path

import lowbit

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    found = {}
    for label in ("main-job", "tests"):
        m = re.search(rf"<!-- setup:{label} -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.S)
        assert m, f"README has no block marked setup:{label}"
        found[label] = m.group(1).strip()
    return found


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    cmd = _readme_commands()["tests"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert cmd in ci, f"README test command not found as a line of .ci/run:\n{cmd}"


def test_readme_commands_pin_cpu_torch_and_install_the_package() -> None:
    for label, cmd in _readme_commands().items():
        assert "torch==2.13.0" in cmd, label
        assert "pip install -e ." in cmd or 'pip install -e ".[dev]"' in cmd, label
    assert _readme_commands()["main-job"].endswith("lowbit train")


def test_cli_version_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "lowbit", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"lowbit {lowbit.__version__}"
    out = subprocess.run([sys.executable, "-m", "lowbit", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "bench", "plot", "data"):
        assert command in out.stdout


def test_layers_exist() -> None:
    for room in ("kernels", "functional", "nn", "models", "train", "data", "optim", "monitor", "cli", "bench"):
        assert (ROOT / "src" / "lowbit" / room / "__init__.py").is_file(), room


def test_readme_python_quick_start_runs() -> None:
    """The README's Python quick-start is executed as written."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s*```python\n(.+?)\n```", text, re.S)
    assert block, "README has no Python quick-start block"
    exec(compile(block.group(1), "README.md", "exec"), {})


def test_what_the_readme_writes_into_a_clone_is_ignored() -> None:
    """`lowbit data prepare ... --out data/fmnist` and `lowbit train` (runs/) leave no untracked folders; the
    code folders of the same names stay tracked."""
    if not (ROOT / ".git").exists():
        import pytest

        pytest.skip("not a git checkout")
    paths = ["data/fmnist/manifest.json", "runs/x/metrics.csv", "src/lowbit/data/__init__.py", "tests/data/x.py"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.split() == paths[:2], proc.stdout + proc.stderr


def test_readme_your_own_model_block_runs(third_party) -> None:
    """The README's "Your own model" block, executed as written with the real packages (skipped where open_clip,
    timm or transformers is not installed, as in CI): open_clip's ViT-H-14 converts its 1280-wide vision tower (128
    of 224 layers), the Hugging Face default config (768 wide) nothing."""
    for name in ("open_clip", "timm", "transformers"):
        third_party(name)
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Your own model.*?```python\n(.+?)\n```", text, re.S)
    assert block, "README has no Python block under 'Your own model'"
    code = block.group(1).replace("print(", "(lambda *a, **k: None)(")  # the report's table: 200 lines
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert not lowbit.convert_report(scope["model"]).converted  # the last line's model: HF at ViT-B/32 widths
    oc = scope["lowbit"].convert(scope["open_clip"].create_model("ViT-H-14"), "fp8-switchback")
    assert len(lowbit.convert_report(oc).converted) == 128
