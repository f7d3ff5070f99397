"""train_one_epoch / evaluate: what the functions themselves set up (the loops are tested through the trainer)."""

import torch

from cnnlab.data.tensors import Normalizer
from cnnlab.training import epoch


def test_evaluation_keeps_the_memory_it_frees(toy, make_model, cpu_engine, monkeypatch):
    """Each batch's activations are freed and reallocated: evaluation sets glibc's thresholds as training does
    (bf16 inference of the tutorial CNN ran at less than half its speed without them, docs/benchmarks.md)."""
    calls = []
    monkeypatch.setattr(epoch, "keep_freed_memory", lambda: calls.append(1) or True)
    result = epoch.evaluate(make_model(), toy, normalizer=Normalizer(), engine=cpu_engine, batch_size=64)
    assert calls and result.confusion.sum() == len(toy) and torch.isfinite(torch.tensor(result.loss))
