"""What a user reads: after an aborted run the refusal names what works; one message style (lowbit's line on
stderr, a library's text only with --debug); config typos answered with the nearest name."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_fakes import SMALL, FakeTrain

from lowbit.cli.main import main
from lowbit.messages import routed_warnings, warning_line
from lowbit.train import TrainConfig, train
from lowbit.train.checkpoint import CheckpointError


def _cfg(tmp_path: Path, name: str = "run", **kw: object) -> TrainConfig:
    return TrainConfig.from_dict({**SMALL, "out": str(tmp_path / name), "zeroshot": "none", **kw})


# ------------------------------------------------------------------- papercut 2: an aborted run has no checkpoint
class _AbortAfter(FakeTrain):
    """The second Ctrl-C: ``KeyboardInterrupt`` from inside the loop (here: while fetching step 3's batch)."""

    def __iter__(self):  # type: ignore[override]
        for i, item in enumerate(super().__iter__()):
            if i == 2 * 16:
                raise KeyboardInterrupt("second SIGINT: aborted without saving")
            yield item


def test_after_an_abort_the_refusal_names_overwrite_not_resume(
    tmp_path: Path, fake_data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    plain = fake_data.build_train_data
    monkeypatch.setattr(fake_data, "build_train_data", lambda spec, **kw: _AbortAfter(
        kw["image_size"], kw["seed"], kw.get("start", 0), kw.get("rank", 0), kw.get("world_size", 1), None))
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, save_every=0))
    monkeypatch.setattr(fake_data, "build_train_data", plain)
    assert (run / "config.yaml").is_file() and not list(run.glob("checkpoint*"))
    capsys.readouterr()
    # the same command again: refused, pointing to --overwrite (not to --resume, which cannot work)
    assert main(["train", "--out", str(run), "--data", "fake", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "without a checkpoint" in err and "--overwrite" in err, err
    assert "--resume" not in err, err
    # --resume itself says what works instead of only "no checkpoint"
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"lowbit train --config {run / 'config.yaml'} --overwrite" in err, err
    # ... and what it says works: the same options, from the start
    assert main(["train", "--config", str(run / "config.yaml"), "--overwrite"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == SMALL["steps"]


# ------------------------------------------------------------------- papercut 4: one message style
def test_a_corrupt_checkpoint_is_one_whole_lowbit_sentence(
    tmp_path: Path, fake_data: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    train(_cfg(tmp_path, steps=2, save_every=0))
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith("lowbit train: error: checkpoint ")
    assert "truncated or corrupt: torch.load cannot read it" in err and err.endswith("--debug shows PyTorch's message)")
    assert "PytorchStreamReader" not in err and "central directory" not in err, err  # PyTorch's text: not cut, not here
    # with --debug the whole PyTorch error comes along (the chained cause)
    with pytest.raises(CheckpointError) as e:
        main(["train", "--debug", "--resume", str(run), "--no-progress"])
    assert "PytorchStreamReader" in str(e.value.__cause__)


def _torch_file() -> str:
    return os.path.join(os.path.dirname(torch.__file__), "distributed", "checkpoint", "utils.py")


def test_warnings_are_routed_one_lowbit_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    text = "torch.distributed is disabled, unavailable or uninitialized, assuming the intent is to load in a single"
    assert warning_line(text, UserWarning, _torch_file(), 485, "train") == (
        "lowbit train: warning: torch issued a UserWarning (torch/distributed/checkpoint/utils.py:485); "
        "`lowbit train --debug` shows its text")
    own = str(Path(__file__).resolve().parents[2] / "src" / "lowbit" / "train" / "checkpoint.py")
    assert warning_line("checkpoint x is empty\nmore", UserWarning, own, 1, "train") == (
        "lowbit train: warning: checkpoint x is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with routed_warnings("train", debug=False):
            warnings.warn_explicit(text, UserWarning, _torch_file(), 485)
        err = capsys.readouterr().err
        assert err.strip().splitlines() == ["lowbit train: warning: torch issued a UserWarning "
                                            "(torch/distributed/checkpoint/utils.py:485); `lowbit train --debug` shows its text"]
    # --debug: Python's own path (the library's text and source line; pytest records it here)
    with pytest.warns(UserWarning, match="torch.distributed is disabled"), routed_warnings("train", debug=True):
        warnings.warn_explicit(text, UserWarning, _torch_file(), 485)
    assert capsys.readouterr().err == ""


def test_the_cli_puts_warnings_on_stderr_in_lowbit_words(
    tmp_path: Path, fake_data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def check(spec: str) -> None:  # a library warns while the run is set up
        warnings.warn_explicit("something PyTorch says", UserWarning, _torch_file(), 7)

    monkeypatch.setattr("lowbit.train.loop.check_prepared_data", check)
    rc = main(["train", "--out", str(tmp_path / "run"), "--data", "fake", "--zeroshot", "none", "--steps", "1",
               "--warmup", "5", "--batch-size", "4", "--set", "model.vision.layers=1", "--set", "model.text.layers=1",
               "--no-progress", "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "warning:" not in out  # stdout: the run's own report only
    lines = err.strip().splitlines()
    assert "lowbit train: warning: steps 1 < warmup 5: the learning rate never reaches lr 0.001 (set --warmup below --steps)" in lines
    assert ("lowbit train: warning: torch issued a UserWarning (torch/distributed/checkpoint/utils.py:7); "
            "`lowbit train --debug` shows its text") in lines
    assert "something PyTorch says" not in err


def test_lowbit_log_warnings_take_the_same_style(
    tmp_path: Path, fake_data: SimpleNamespace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """lowbit.nn.convert's "nothing converted" warning (a log record) used to reach stderr as bare text."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a plain `lowbit` process (pytest adds its own)
    rc = main(["train", "--out", str(tmp_path / "run"), "--data", "fake", "--zeroshot", "none", "--steps", "1",
               "--warmup", "0", "--batch-size", "4", "--layers", "auto", "--recipe", "switchback-sim",
               "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0 and err and all(line.startswith("lowbit train: warning: ") for line in err), err
    assert any("lowbit.convert: 0 of" in line for line in err), err


def test_a_one_process_resume_of_a_dcp_checkpoint_does_not_leak_torch_s_warning(tmp_path: Path) -> None:
    """The FSDP -> 1-process resume: DCP's 'assuming the intent is to load in a single process' is the intent."""
    import torch.distributed.checkpoint as dcp

    from lowbit.train.distributed import load_dcp

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    from torch.distributed.checkpoint.state_dict import get_state_dict

    m, o = get_state_dict(model, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": m, "optimizer": o}, checkpoint_id=str(tmp_path / "ckpt"))
    fresh = torch.nn.Linear(4, 3)
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_dcp(tmp_path / "ckpt", fresh, fresh_opt)
    assert not caught, [str(w.message) for w in caught]
    assert torch.equal(fresh.weight, model.weight)


# ------------------------------------------------------------------- papercut 5: typos
def test_typos_get_the_nearest_name(tmp_path: Path, fake_data: SimpleNamespace) -> None:
    with pytest.raises(ValueError, match=r"unknown training option\(s\) 'batchsize' \(did you mean batch_size\?\)"):
        TrainConfig.from_dict({"batchsize": 3})
    with pytest.raises(ValueError, match=r"unknown model option model\.vision\.widht \(did you mean model\.vision\.width\?\)"):
        train(_cfg(tmp_path, "a", model={"vision": {"widht": 64}}))
    with pytest.raises(ValueError, match=r"unknown model option model\.widht "
                                         r"\(did you mean model\.vision\.width or model\.text\.width\?\)"):
        train(_cfg(tmp_path, "b", model={"widht": 64}))
    with pytest.raises(ValueError, match=r"unknown recipe 'fp8-swichback' \(did you mean fp8-switchback\?\); "
                                         r"choose one of: none, bf16, switchback, "):
        train(_cfg(tmp_path, "c", recipe="fp8-swichback"))
    with pytest.raises(ValueError, match=r"unknown model preset 'vit-b32' \(did you mean vit-b-32\?\)"):
        train(_cfg(tmp_path, "d", preset="vit-b32"))
    with pytest.raises(ValueError) as e:  # nothing close: no guess
        TrainConfig.from_dict({"zzzzzz": 1})
    assert "did you mean" not in str(e.value)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_yaml_typos_are_named_as_the_file_names_them(
    tmp_path: Path, fake_data: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text("model:\n  text:\n    layres: 2\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("lowbit train: error: unknown model option model.text.layres (did you mean model.text.layers?); "
                   "known: context_length, heads, layers, mlp_ratio, vocab_size, width"), err
