"""lowbit.data: image–caption training streams, zero-shot tasks and ``lowbit data prepare``.

Contract used by the trainer::

    build_train_data(spec, *, image_size, seed, start=0, rank=0, world_size=1, batch_size=1, uint8=False) -> IterableDataset
        yields (image float32 [3, S, S] normalised with CLIP_MEAN/CLIP_STD, caption str), forever (uint8=True:
        stored images as uint8 pixels, normalised by the consumer with normalize_uint8: the same values);
        deterministic in (spec, seed, start, rank, world_size); dataset.stats = {"skipped_images", "skipped_captions", "missing_files"}
        (counts), dataset.damage = {"damaged_shards": {path: why}, "incomplete_samples": n} (what indexing lost)
    build_zeroshot(spec, *, image_size, seed=0, limit=None) -> list[(ZeroShotTask, Dataset of (image, label))]
    describe(spec) -> dict

Spec strings are documented in ``lowbit.data.spec``; positions, resume, ranks and workers in
``lowbit.data.stream``; shuffling and corrupt-sample handling in ``lowbit.data.sources``; the synthetic data in
``lowbit.data.synthetic``; the prepared-directory format in ``lowbit.data.prepare``.
"""

from lowbit.data.image import CLIP_MEAN, CLIP_STD, decode_image, denormalize, normalize_uint8
from lowbit.data.spec import build_train_data, build_zeroshot, describe
from lowbit.data.stream import STAT_KEYS, SampleStream
from lowbit.data.zeroshot import DEFAULT_TEMPLATES, ZeroShotTask

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_TEMPLATES",
    "STAT_KEYS",
    "SampleStream",
    "ZeroShotTask",
    "build_train_data",
    "build_zeroshot",
    "decode_image",
    "denormalize",
    "describe",
    "normalize_uint8",
]
