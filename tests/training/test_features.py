"""The frozen backbone's feature cache: where the cut goes, when it is refused, and that training the head on the
cached features is the same training as running the whole model every epoch."""

import pytest
import torch
from torch import nn

from cnnlab.config import TrainConfig
from cnnlab.data.tensors import Normalizer, split
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.spec import build_spec
from cnnlab.training.engine import Engine
from cnnlab.training.features import FeatureCache, find_cut, refusal
from cnnlab.training.trainer import Trainer
from cnnlab.training.transfer import BackboneFreeze

CPU = Engine(torch.device("cpu"), None, False)
LAYERS = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"}, {"type": "BatchNormalization"},
          {"type": "MaxPooling2D"},
          {"type": "Flatten"}, {"type": "Dense", "units": 8, "activation": "relu"}, {"type": "Dropout", "rate": 0.5},
          {"type": "Dense", "units": "num_classes"}]
HEAD = {"dense_1.weight", "dense_1.bias"}


def _model(layers=LAYERS):
    torch.manual_seed(0)
    return build_spec(layers, input_shape=(1, 12, 12), num_classes=3)


def _fit(toy, cache: FeatureCache | None, epochs: int = 2, layers=LAYERS, head=HEAD, **cfg):
    """A trainer of the small CNN with its backbone frozen, trained ``epochs`` epochs from the same seeds."""
    train, val = split(toy, 0.25, seed=0)
    c = TrainConfig(**{"epochs": epochs, "batch_size": 20, "lr": 0.01, **cfg})
    trainer = Trainer(_model(layers), c, train_data=train, val_data=val, normalizer=Normalizer(), engine=CPU,
                      callbacks=[BackboneFreeze(head, 0, print)], features=cache)
    torch.manual_seed(1)  # the head's dropout draws from the global stream
    trainer.fit()
    return trainer


def test_cut_includes_the_dropout_before_the_head_so_it_still_draws_masks():
    model = _model()
    cut = find_cut(model, "dense_1")
    assert cut.name == "dropout" and list(cut.tail._modules) == ["dropout", "dense_1"]
    assert cut.names == ("dropout", "dense_1")
    mobilenet = create_model("mobilenet_v2", num_classes=3, input_shape=(3, 32, 32))
    cut = find_cut(mobilenet, "classifier.1")
    assert (cut.parent, cut.name) == (mobilenet.classifier, "0") and len(cut.tail) == 2
    assert cut.names == ("classifier.0", "classifier.1")
    resnet = create_model("resnet18", num_classes=3, input_shape=(3, 32, 32))
    cut = find_cut(resnet, "fc")
    assert cut.tail is resnet.fc and cut.parent is resnet and cut.names == ("fc",)


def test_training_on_cached_features_gives_the_same_weights_and_metrics(toy):
    lines = []
    cached = _fit(toy, FeatureCache("dense_1", required=True, log=lines.append))
    plain = _fit(toy, None)
    assert cached.features.train is not None and "Cached the frozen backbone's features once" in lines[1]
    assert lines[0] == "Caching the frozen backbone's features of 240 images (0.0 MB), once for every epoch..."
    assert len(cached.features.train) == 180 and cached.features.train.images.shape == (180, 8)
    # fp32 on CPU: the backbone computes each image alone of the others in its batch, and the head gets the same
    # tensors, steps and dropout masks, so the results are identical, not merely close
    for k, v in plain.model.state_dict().items():
        assert torch.equal(cached.model.state_dict()[k], v), k
    for a, b in zip(cached.history, plain.history, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert torch.equal(cached.last_eval.confusion, plain.last_eval.confusion)


def test_a_short_last_batch_changes_only_the_last_bits(toy):
    cached = _fit(toy, FeatureCache("dense_1", required=True, log=lambda s: None), batch_size=16)
    plain = _fit(toy, None, batch_size=16)
    # 180 % 16 = 4: without the cache the epoch's last 4 images go through the backbone's GEMM as a batch of 4,
    # whose rounding can differ in the last bit from a batch of 16 (the cache computes every image in one of
    # 16); a few float32 ulps after 24 Adam steps, hence the tolerance
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(cached.model.state_dict()[k], v, rtol=1e-5, atol=1e-7)
    assert [h["val_acc"] for h in cached.history] == [h["val_acc"] for h in plain.history]


def test_the_backbone_is_left_untouched_and_the_model_whole(toy):
    before = _model().state_dict()
    trainer = _fit(toy, FeatureCache("dense_1", required=True, log=lambda s: None))
    after = trainer.model.state_dict()
    for k in ("conv2d.weight", "batch_normalization.running_mean", "batch_normalization.running_var"):
        assert torch.equal(after[k], before[k]), k  # frozen BatchNorm: its statistics did not move either
    assert not torch.equal(after["dense_1.weight"], before["dense_1.weight"])
    assert type(trainer.model.dropout).__name__ == "Dropout"  # the tap was put back


def test_dropout_in_the_backbone_refuses_the_cache(toy):
    layers = [*LAYERS[:4], {"type": "Dropout", "rate": 0.5}, *LAYERS[4:5], {"type": "Dense", "units": "num_classes"}]
    lines = []
    trainer = _fit(toy, FeatureCache("dense_1", required=False, log=lines.append), epochs=1, layers=layers)
    assert trainer.features.train is None and "dropout (dropout)" in trainer.features.refused
    assert lines == ["note: the backbone's features are recomputed every epoch: the backbone has dropout (dropout) "
                     "that draws new masks every epoch (`train.cache_features`: off hides this)"]
    with pytest.raises(CnnlabError, match=r"`train.cache_features` is on .* dropout"):
        _fit(toy, FeatureCache("dense_1", required=True, log=lines.append), epochs=1, layers=layers)


def test_trainable_layers_outside_the_head_refuse_the_cache(toy):
    cache = FeatureCache("dense_1", required=False, log=lambda s: None)
    _fit(toy, cache, epochs=1, head=HEAD | {"dense.weight"})
    assert cache.train is None and cache.refused == "layers outside the head train (dense.weight)"


class _Scaled(nn.Module):
    """A backbone, a head ``fc``, and something after it (the output is not the head's)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.fc = nn.Sequential(nn.Flatten(), nn.Linear(144, 8)), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(x)) * 2


def test_layers_after_the_head_in_its_sequential_join_the_tail():
    model = _model([*LAYERS, {"type": "Activation", "activation": "softmax"}])
    assert list(find_cut(model, "dense_1").tail._modules) == ["dropout", "dense_1", "activation"]


def test_a_model_whose_output_is_not_the_heads_refuses_the_cache(toy):
    train, val = split(toy, 0.25, seed=0)
    cache = FeatureCache("fc", required=False, log=lambda s: None)
    trainer = Trainer(_Scaled(), TrainConfig(epochs=1, batch_size=20, lr=0.01), train_data=train, val_data=val,
                      normalizer=Normalizer(), engine=CPU, callbacks=[BackboneFreeze({"fc.weight", "fc.bias"}, 0, print)],
                      features=cache)
    trainer.fit()
    assert cache.refused == "the model's output is not its head's (fc) output" and trainer.history


def test_features_over_the_memory_limit_fall_back(toy):
    lines = []
    cache = FeatureCache("dense_1", required=False, log=lines.append, limit_bytes=1000)
    _fit(toy, cache, epochs=1)
    # 240 images x 8 fp32 values = 7,680 bytes > 1,000
    assert cache.train is None and "would take 0.0 MB, over the 0.0 MB allowed" in cache.refused


def test_an_interrupt_while_caching_saves_and_stops(toy, tmp_path):
    from cnnlab.training.trainer import TrainingInterrupted

    train, val = split(toy, 0.25, seed=0)
    trainer = Trainer(_model(), TrainConfig(epochs=1, batch_size=16, lr=0.01), train_data=train, val_data=val,
                      normalizer=Normalizer(), engine=CPU, callbacks=[BackboneFreeze(HEAD, 0, print)],
                      checkpoint_dir=tmp_path, features=FeatureCache("dense_1", required=True, log=print))
    trainer.interrupt = 15
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    assert (tmp_path / "last").is_dir() and trainer.features.train is None


def test_refusal_names_nothing_for_a_frozen_deterministic_backbone():
    model = _model()
    for n, p in model.named_parameters():
        p.requires_grad_(n in HEAD)
    assert refusal(model, find_cut(model, "dense_1")) is None
    model.eval()  # dropout outside the tail only matters in training mode
    layers = nn.Sequential(nn.Dropout(), nn.Linear(2, 2))
    assert refusal(layers.eval(), find_cut(layers, "1")) is None
