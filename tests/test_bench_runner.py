"""bench/run.py: every committed H100 result file has the one command that reproduces it, and the README says so."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_run", None)


def test_every_result_file_has_a_command_and_the_readme_is_current(runner) -> None:
    assert runner.check() == []
    readme = runner.README.read_text()
    for name, job in runner.BY_FILE.items():
        assert f"`{name}`" in readme and (f"`{job.commit}`" if job.commit else "*not measured yet*") in readme
        if job.invalid:  # marked at its top, and the README table says so
            assert f"**invalid until re-measured**: {job.invalid}" in readme
            if name.endswith(".md"):
                assert runner.INVALID_MARK in (runner.RESULTS / name).read_text()[:2000].lower()


def test_check_flags_an_unmarked_invalid_file_and_allows_a_job_not_measured_yet(runner, monkeypatch) -> None:
    invalid = next(j for j in runner.JOBS if j.invalid and any(f.endswith(".md") for f in j.files))
    md = next(f for f in invalid.files if f.endswith(".md"))
    real = runner.Path.read_text

    def unmarked(path, *a, **k):
        text = real(path, *a, **k)
        return text.lower().replace(runner.INVALID_MARK, "") if path.name == md else text

    monkeypatch.setattr(runner.Path, "read_text", unmarked)
    assert any(p.startswith(f"{md}: job {invalid.name} is invalid") for p in runner.check())
    monkeypatch.undo()
    pending = [j for j in runner.JOBS if not j.commit]
    assert {"train-vit-l-14.md", "step-vit-h-14-row-flow.md"} <= {f for j in pending for f in j.files}
    assert not any(f in p for j in pending for f in j.files for p in runner.check())


def test_a_superseded_job_runs_its_successor_not_its_gone_script(runner, capsys, tmp_path: Path) -> None:
    assert runner.main(["run", "train-compile-vit-h-14.md", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "its script is gone; run train-vit-h-14 instead" in out and "train_compile.py" not in out


def test_no_letter_named_device_scripts_remain() -> None:
    assert not (ROOT / "bench" / "scripts").exists()
    probes = ROOT / "bench" / "probes"
    listed = (probes / "README.md").read_text()
    for script in probes.glob("*.py"):
        assert f"`{script.name}" in listed, f"bench/probes/README.md has no line for {script.name}"


def test_dry_run_prints_the_commands(runner, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert runner.main(["run", "step-vit-b-32-cudagraphs.md", "memory.json", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lowbit bench step --compile --steps 8 --no-anchors --cudagraphs --warmup 3 --preset vit-b-32" in out
    assert runner.main(["run", "train-vit-b-32.md", "--dry-run", "--out", str(tmp_path)]) == 0
    assert "lowbit bench train --workers 14 --preset vit-b-32 --batch-size 256" in capsys.readouterr().out
    assert "lowbit bench memory --shapes vit-h-14" in out and not any(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        runner.main(["run", "no-such-result.md"])


def test_run_job_copies_outputs_under_the_committed_names(runner, tmp_path: Path) -> None:
    job = runner.Job("demo", "a demo", "echo hello; mkdir -p $DIR/sub; echo '| a |' > $DIR/sub/step.md",
                     {"demo.log": "log", "demo.md": "sub/step.md"}, "", 30, "test")
    assert runner.run_job(job, tmp_path) == 0
    assert (tmp_path / "demo.log").read_text().strip() == "hello"
    assert (tmp_path / "demo.md").read_text().strip() == "| a |"
    slow = runner.Job("slow", "too slow", "sleep 5", {}, "", 1, "test")
    assert runner.run_job(slow, tmp_path) == 124


def test_join_steps(runner, tmp_path: Path) -> None:
    for stage in ("vit-h-14", "vit-b-32"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "step.md").write_text(f"## lowbit bench step\n\nenv\n\n| preset |\n| {stage} |\n")
    text = runner.join_steps(str(tmp_path), ["vit-h-14", "missing", "vit-b-32"])
    assert "### vit-h-14\n| preset |\n| vit-h-14 |" in text and "### missing" not in text


def test_env_txt_names_the_code_that_ran_not_only_the_commit(runner, tmp_path, monkeypatch) -> None:
    """A device copy's HEAD can be older than its working tree: env.txt's hash of src/ changes with the code."""
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    code = tmp_path / "src" / "pkg" / "a.py"
    code.write_text("x = 1\n")
    monkeypatch.setattr(runner, "ROOT", tmp_path)
    first = runner._tree_line()
    assert first.startswith("src sha256 ") and first.endswith("differing from that commit: unknown\n")  # no git
    assert runner._tree_line() == first
    code.write_text("x = 2\n")
    assert runner._tree_line() != first
