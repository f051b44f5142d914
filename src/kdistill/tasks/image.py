"""Image classification: one image tensor per row, one label per row; models are plain `torch.nn.Module`s that take
`pixel_values` and return `{"logits": ...}` (the demo's digits CNN and MLP)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Task


class ImageRows(torch.utils.data.Dataset):
    """Rows of an image tensor as dicts {pixel_values, labels, idx}; `idx` is the row's index into `images`
    (where its soft labels are), and `hide_labels` makes them unlabelled transfer rows (label -100)."""

    def __init__(self, images: Tensor, labels: Tensor, rows: Sequence[int], hide_labels: bool = False):
        # Python lists of per-row views and ints: indexing a tensor once per item cost a fifth of a small
        # student's training time (its forward pass is that cheap).
        self.images = images.unbind(0)
        self.rows = [int(r) for r in rows]
        self.labels = [-100] * len(self.rows) if hide_labels else labels[self.rows].tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[self.rows[i]], "labels": self.labels[i], "idx": self.rows[i]}


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Move each image by up to `max_shift` pixels in x and y, filling with background (0)."""
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    ys = offsets[:, :1] + torch.arange(h)  # [B, H]
    xs = offsets[:, 1:] + torch.arange(w)  # [B, W]
    batch = torch.arange(b)[:, None, None]
    return padded[batch, 0, ys[:, :, None], xs[:, None, :]].unsqueeze(1)


class ImageClassification(Task):
    name = "image_classification"
    item = "row"
    auto_model = None
    export_inputs = ("pixel_values",)

    def pad_inputs(self, tokenizer: Any = None, max_shift: int = 0, seed: int = 0) -> Callable[[list[dict]], dict]:
        """Stack the rows' images; with `max_shift`, shift each by up to that many pixels (seeded augmentation)."""
        generator = torch.Generator().manual_seed(seed)

        def pad(rows: list[dict]) -> dict:
            pixels = torch.stack([r["pixel_values"] for r in rows])
            return {"pixel_values": random_shift(pixels, max_shift, generator) if max_shift else pixels}

        return pad

    def collator(self, tokenizer: Any = None, teacher_logits: Any = None, max_shift: int = 0, seed: int = 0,
                 **kwargs: Any):
        from .base import ItemCollator

        return ItemCollator(self.pad_inputs(tokenizer, max_shift, seed), teacher_logits, **kwargs)

    def predict(self, model: torch.nn.Module, images: Tensor) -> Tensor:
        """Logits for a stack of images, in eval mode (dropout off)."""
        model.eval()
        with torch.inference_mode():
            return model(pixel_values=images)["logits"].float()
