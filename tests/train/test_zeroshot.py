"""Zero-shot evaluation: template averaging and top-1 against a hand-built model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from train_fakes import ZeroShotTask

from lowbit.models import get_tokenizer
from lowbit.train.zeroshot import class_embeddings, evaluate_zeroshot


class _Oracle(torch.nn.Module):
    """Text embedding = one-hot of the first byte after "x " (the class letter); image = one-hot of its label."""

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        letter = tokens[:, 3] - (3 + ord("a"))  # [sot, 'x', ' ', letter, ...]
        return F.one_hot(letter, 4).float() + 0.1

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return F.normalize(images.flatten(1)[:, :4], dim=-1)


def test_class_embeddings_average_templates() -> None:
    tok = get_tokenizer("bytes", 16)
    emb = class_embeddings(_Oracle(), tok, ["a", "b", "c"], ["x {}", "x {}!"], torch.device("cpu"), batch_size=4)
    assert emb.shape == (3, 4)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert emb.argmax(dim=-1).tolist() == [0, 1, 2]


def test_evaluate_zeroshot_top1_and_chance() -> None:
    images = torch.zeros(8, 4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    images[torch.arange(8), labels] = 1.0
    images[7] = torch.tensor([1.0, 0, 0, 0])  # one wrong: looks like class 0, labelled 3
    data = list(zip(images, labels.tolist()))
    task = ZeroShotTask("letters", ["a", "b", "c", "d"], ["x {}"])
    model = _Oracle().train()
    res = evaluate_zeroshot(model, [(task, data)], get_tokenizer("bytes", 16), torch.device("cpu"))
    assert res == [{"task": "letters", "top1": 7 / 8, "chance": 0.25, "n": 8}]
    assert model.training
