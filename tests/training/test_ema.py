from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.training.callbacks import CheckpointEvery, ModelCheckpoint
from cnnlab.training.checkpoint import load_checkpoint
from cnnlab.training.ema import WeightEMA
from cnnlab.training.trainer import evaluate

from .test_trainer import Crash


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def test_the_decay_warms_up_as_tensorflows_num_updates_then_caps():
    ema = WeightEMA(_net(), 0.9)
    # (1 + t) / (10 + t): 2/11, 3/12, ... reaches 0.9 at t = 80 (81/90)
    assert [ema.factor(t) for t in (1, 2, 80, 81, 1000)] == [2 / 11, 3 / 12, 0.9, 0.9, 0.9]


def test_each_update_is_the_weighted_average_of_the_old_average_and_the_new_weights():
    net = _net()
    ema = WeightEMA(net, 0.5)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[1].running_mean.fill_(4.0)
        net[1].num_batches_tracked.fill_(7)
    ema.update(net)  # d_1 = min(0.5, 2/11) = 2/11
    d = 2 / 11
    torch.testing.assert_close(ema.module[0].weight, d * w0 + (1 - d) * 1.0, rtol=0, atol=1e-7)  # fp32 lerp rounding
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((2,), (1 - d) * 4.0), rtol=0, atol=1e-7)
    assert int(ema.module[1].num_batches_tracked) == 7  # integer buffers are copied, not averaged
    with torch.no_grad():
        net[0].weight.fill_(3.0)
    before = ema.module[0].weight.detach().clone()
    ema.update(net)  # d_2 = 3/12
    torch.testing.assert_close(ema.module[0].weight, 0.25 * before + 0.75 * 3.0, rtol=0, atol=1e-7)
    assert ema.updates == 2
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_copy_to_writes_the_average_into_the_model():
    net = _net()
    ema = WeightEMA(net, 0.99)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.copy_to(net)
    for a, b in zip(net.state_dict().values(), ema.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_a_decay_outside_the_open_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(_net(), decay)


def test_the_trainer_validates_and_checkpoints_the_average(toy, tmp_path, make_trainer, make_model):
    trainer = make_trainer(toy, tmp_path, [ModelCheckpoint("val_loss", "min")], ema=0.9)
    trainer.fit()
    assert trainer.ema.updates == 3 * trainer.steps_per_epoch
    assert trainer.history[-1]["val_loss"] == trainer.evaluate(trainer.val_data).loss  # the average, validated
    assert trainer.history[-1]["val_loss"] != evaluate(
        trainer.model, trainer.val_data, normalizer=trainer.normalizer, engine=trainer.engine).loss
    loaded = make_model(seed=1)
    state = load_checkpoint(tmp_path / "last", loaded)
    for a, b in zip(loaded.state_dict().values(), trainer.ema.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the checkpoint's weights are the average
    for name, value in trainer.model.state_dict().items():  # its state keeps the weights that train
        assert torch.equal(state["train_weights"][name], value)
    assert state["ema"] == {"updates": 3 * trainer.steps_per_epoch, "decay": 0.9}


def test_a_run_with_ema_resumed_part_way_equals_an_uninterrupted_one(toy, tmp_path, make_trainer):
    def trainer(folder, *extra):
        return make_trainer(toy, folder, [ModelCheckpoint("val_loss", "min"), CheckpointEvery(steps=5), *extra],
                            schedule="onecycle", ema=0.95)

    full = trainer(tmp_path / "a")
    full.fit()
    crashed = trainer(tmp_path / "b", Crash(at=19))
    with pytest.raises(RuntimeError, match="killed"):
        crashed.fit()
    resumed = trainer(tmp_path / "b")
    resumed.resume("last")
    assert resumed.ema.updates == 15 and resumed.progress.step == 3
    resumed.fit()
    for module in ("model", "eval_model"):  # CPU fp32: the same operations in the same order, bit for bit
        for a, b in zip(getattr(full, module).state_dict().values(), getattr(resumed, module).state_dict().values(),
                        strict=True):
            assert torch.equal(a, b)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
