"""Classification metrics computed from predictions: accuracy, confusion matrix, per-class accuracy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(classes, classes) int64 counts; rows = true class, columns = predicted class."""
    idx = targets.long().cpu() * num_classes + preds.long().cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class Evaluation:
    """Test-set results.

    Attributes:
        loss: mean cross-entropy (no label smoothing, no L2 term).
        acc: fraction correct.
        confusion: (classes, classes) counts, rows true, columns predicted.
        classes: class names.
        probs: (N, classes) softmax probabilities, kept for the views (predictions, mistakes).
    """

    loss: float
    acc: float
    confusion: torch.Tensor
    classes: tuple[str, ...]
    probs: torch.Tensor | None = None

    @property
    def per_class(self) -> dict[str, float]:
        """Accuracy (recall: correct / images) of each class; NaN for a class without test images (as
        torchmetrics gives), never a made-up 0."""
        totals = self.confusion.sum(dim=1)
        return {c: float(self.confusion[i, i] / totals[i]) if totals[i] else math.nan
                for i, c in enumerate(self.classes)}

    def most_confused(self, k: int = 5) -> list[tuple[str, str, int]]:
        """The ``k`` largest off-diagonal cells as (true, predicted, count), fastai-style."""
        off = self.confusion.clone()
        off.fill_diagonal_(0)
        vals, idx = off.flatten().topk(min(k, off.numel()))
        n = len(self.classes)
        return [(self.classes[i // n], self.classes[i % n], int(v)) for v, i in zip(vals.tolist(), idx.tolist(), strict=True) if v > 0]

    def to_dict(self) -> dict:
        return {
            "test_loss": self.loss, "test_acc": self.acc,
            "per_class": {c: None if math.isnan(a) else a for c, a in self.per_class.items()},  # JSON has no NaN
            "confusion": self.confusion.tolist(), "classes": list(self.classes),
        }


def format_accuracy(value: float) -> str:
    """``0.9123``, or ``n/a`` for a class without test images."""
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def format_confusion(ev: Evaluation, width: int = 6) -> str:
    """A text table of the confusion matrix with short class labels (rows true, columns predicted)."""
    labels = [c[:width] for c in ev.classes]
    head = " " * (width + 2) + "".join(f"{lab:>{width + 1}}" for lab in labels)
    rows = [head]
    for i, lab in enumerate(labels):
        rows.append(f"{lab:>{width}}  " + "".join(f"{int(v):>{width + 1}}" for v in ev.confusion[i].tolist()))
    return "\n".join(rows)
