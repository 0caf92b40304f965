"""``lowbit.atomic_io.atomic_open``: the old file or the new one, never half of one; its ``before_replace`` hook
(``save_checkpoint`` keeps the previous checkpoint there) and its full-disk line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from lowbit.atomic_io import atomic_open, atomic_write_text


def test_before_replace_sees_the_finished_temporary_file_and_the_old_target(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")
    seen: list[tuple[str, list[str]]] = []

    def hook(p: Path) -> None:
        (tmp,) = tmp_path.glob(".f.txt.*.tmp")  # complete (flushed and fsynced) before the hook runs
        seen.append((p.read_text(), [tmp.read_text()]))
        p.rename(p.with_name("f.prev.txt"))

    with atomic_open(path, before_replace=hook) as f:
        f.write("new")
    assert seen == [("old", ["new"])]
    assert path.read_text() == "new" and (tmp_path / "f.prev.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.prev.txt", "f.txt"]


def test_a_failing_hook_or_body_leaves_the_target_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def hook(p: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError), atomic_open(path, before_replace=hook) as f:
        f.write("new")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(path) as f:
        f.write("new")
        raise RuntimeError("boom")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_full_disk_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    with pytest.raises(OSError, match=r"could not write '.*f\.bin' \(the previous version, if any, is kept\)") as e, \
            atomic_open(path, "wb") as f:
        raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC
    # a writer whose own error hides the full disk says which errors are one, and what the file is
    with pytest.raises(OSError, match=r"could not write checkpoint '.*' \(the previous checkpoint, if any, is kept\)"), \
            atomic_open(path, "wb", what="checkpoint", disk_full=lambda exc: "unexpected pos" in str(exc)) as f:
        f.write(b"x")
        raise RuntimeError("unexpected pos 64 vs 0")
    assert not list(tmp_path.iterdir())
