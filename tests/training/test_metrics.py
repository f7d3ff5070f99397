"""Confusion matrix, per-class accuracy, the most confused pairs and the text table, on hand-made numbers."""

import math

import pytest
import torch

from cnnlab.training.metrics import Evaluation, confusion_matrix, format_accuracy, format_confusion


def _evaluation() -> Evaluation:
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 1, 2, 0, 2, 2])
    return Evaluation(0.5, 6 / 9, confusion_matrix(targets, preds, 3), ("cat", "dog", "horse"))


def test_confusion_rows_are_true_columns_predicted():
    assert _evaluation().confusion.tolist() == [[1, 2, 0], [0, 2, 0], [1, 0, 3]]
    assert confusion_matrix(torch.tensor([1]), torch.tensor([1]), 3).tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_per_class_accuracy_and_most_confused():
    ev = _evaluation()
    assert ev.per_class == pytest.approx({"cat": 1 / 3, "dog": 1.0, "horse": 0.75})
    assert ev.most_confused(5) == [("cat", "dog", 2), ("horse", "cat", 1)]  # zero cells are left out
    assert ev.most_confused(1) == [("cat", "dog", 2)]
    partly = Evaluation(0.0, 1.0, torch.tensor([[2, 0], [0, 0]]), ("a", "b"))
    per_class = partly.per_class  # "b" has no test image: n/a (NaN, as torchmetrics), not a made-up 0
    assert per_class["a"] == 1.0 and math.isnan(per_class["b"])
    assert partly.to_dict()["per_class"] == {"a": 1.0, "b": None}  # valid JSON: no NaN token
    assert [format_accuracy(v) for v in per_class.values()] == ["1.0000", "n/a"]


def test_to_dict_and_the_text_table():
    ev = _evaluation()
    assert ev.to_dict() == {"test_loss": 0.5, "test_acc": 6 / 9, "per_class": ev.per_class,
                            "confusion": [[1, 2, 0], [0, 2, 0], [1, 0, 3]], "classes": ["cat", "dog", "horse"]}
    assert format_confusion(ev, width=3).splitlines() == [
        "      cat dog hor",
        "cat     1   2   0",
        "dog     0   2   0",
        "hor     1   0   3",
    ]


def test_defaults_show_five_pairs_and_six_letter_labels():
    conf = torch.tensor([[0, 1, 2, 3], [4, 0, 5, 6], [7, 8, 0, 9], [10, 11, 12, 0]])  # 12 distinct off-diagonal
    ev = Evaluation(0.0, 0.0, conf, ("airplane", "bird", "cat", "automobile"))
    assert ev.most_confused() == [("automobile", "cat", 12), ("automobile", "bird", 11),
                                  ("automobile", "airplane", 10), ("cat", "automobile", 9), ("cat", "bird", 8)]
    assert format_confusion(ev).splitlines()[:2] == [
        "         airpla   bird    cat automo",
        "airpla        0      1      2      3",  # 6 + 2 spaces, then 7 a column
    ]
