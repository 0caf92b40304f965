"""Zero-shot tasks from image folders, and the task type itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lowbit.data import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_TEMPLATES,
    ZeroShotTask,
    build_train_data,
    build_zeroshot,
    describe,
)


def _red(img) -> float:
    return float(np.median(img.numpy()[0] * CLIP_STD[0] + CLIP_MEAN[0]) * 255)


def test_image_folder_task(tmp_path: Path, png, jpeg) -> None:
    root = tmp_path / "pets"
    for cls, red, n in (("tabby_cat", 40, 3), ("golden_retriever", 200, 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(png((red, 0, 0)))
    (root / "tabby_cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (root / "tabby_cat" / "notes.txt").write_text("ignored")
    (root / "empty_class").mkdir()
    (root / "golden_retriever" / "x.jpg").write_bytes(jpeg((200, 0, 0)))

    ((task, ds),) = build_zeroshot(str(root), image_size=16)
    assert task.name == "pets" and task.classnames == ["golden retriever", "tabby cat"]
    assert task.templates == DEFAULT_TEMPLATES and task.prompts("tabby cat")[0] == "a photo of a tabby cat."
    assert len(ds) == 7 and list(ds.labels()) == [0, 0, 0, 1, 1, 1, 1]
    reds = {0: 200, 1: 40}
    for i in range(len(ds)):
        img, label = ds[i]
        assert abs(_red(img) - reds[label]) < 4
    assert ds.stats["skipped_images"] == 1  # broken.jpg replaced by its neighbour, counted
    d = describe(str(root))
    assert (d["kind"], d["classes"], d["images"]) == ("imagefolder", 2, 7)

    ((_, sub),) = build_zeroshot(str(root), image_size=16, limit=4, seed=3)
    ((_, sub2),) = build_zeroshot(str(root), image_size=16, limit=4, seed=3)
    assert len(sub) == 4 and list(sub.labels()) == list(sub2.labels())
    with pytest.raises(ValueError, match="image folder"):
        build_train_data(str(root), image_size=16, seed=0)


def test_zeroshot_task_validation() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        ZeroShotTask("t", ["a"], ["no placeholder"])
    with pytest.raises(ValueError, match="class names"):
        ZeroShotTask("t", [], ["a {}"])
    t = ZeroShotTask("t", ["x", "y"], ["a {}.", "the {}"])
    assert t.prompts("y") == ["a y.", "the y"] and t.to_dict()["classnames"] == ["x", "y"]
