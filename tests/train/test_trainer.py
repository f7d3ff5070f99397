import math

import pytest
import torch

from cnnlab.config import TrainConfig
from cnnlab.data.tensors import Normalizer, split
from cnnlab.models.spec import build_spec
from cnnlab.training.callbacks import Callback, EarlyStopping, ModelCheckpoint, NanGuard, StopAtTarget
from cnnlab.training.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.training.engine import Engine, make_engine
from cnnlab.training.optim import lr_factor
from cnnlab.training.trainer import Trainer, evaluate

LAYERS = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"}, {"type": "MaxPooling2D"},
          {"type": "Flatten"}, {"type": "Dropout", "rate": 0.1}, {"type": "Dense", "units": "num_classes"}]
CPU = Engine(torch.device("cpu"), None, False)


def _model(seed=0):
    torch.manual_seed(seed)
    return build_spec(LAYERS, input_shape=(1, 12, 12), num_classes=3)


def _trainer(toy, tmp_path=None, callbacks=(), **cfg):
    train, val = split(toy, 0.25, seed=0)
    c = TrainConfig(**{"epochs": 3, "batch_size": 16, "lr": 0.01, **cfg})
    return Trainer(_model(), c, train_data=train, val_data=val, normalizer=Normalizer(), engine=CPU,
                   callbacks=list(callbacks), checkpoint_dir=tmp_path)


def test_training_learns_the_toy_task(toy):
    t = _trainer(toy)
    hist = t.fit()
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_acc"] > 0.9
    assert set(hist[0]) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "lr"}


def test_same_seed_same_result(toy):
    a = _trainer(toy).fit()
    b = _trainer(toy).fit()
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in b]


def test_resume_continues_exactly(toy, tmp_path):
    full = _trainer(toy, tmp_path / "a", [ModelCheckpoint("val_loss", "min")]).fit()
    first = _trainer(toy, tmp_path / "b", [ModelCheckpoint("val_loss", "min")], epochs=1)
    first.fit()
    second = _trainer(toy, tmp_path / "b", [ModelCheckpoint("val_loss", "min")])
    second.resume("last")
    assert second.epoch == 1
    resumed = second.fit()
    assert len(resumed) == 3
    assert [h["train_loss"] for h in resumed] == pytest.approx([h["train_loss"] for h in full], rel=1e-6)


def test_stop_at_target_and_early_stopping(toy):
    t = _trainer(toy, callbacks=[StopAtTarget.parse("val_acc=0.5")], epochs=10)
    t.fit()
    assert t.epoch < 10 and "reached val_acc" in t.stop_reason
    t = _trainer(toy, callbacks=[StopAtTarget.parse("loss=100")], epochs=10)  # loss = training loss
    t.fit()
    assert t.epoch == 1
    t = _trainer(toy, callbacks=[EarlyStopping("val_acc", "max", patience=1, min_delta=1.0)], epochs=10)
    t.fit()
    assert t.epoch == 2 and "early stopping" in t.stop_reason


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(toy, tmp_path):
    class Poison(Callback):  # from epoch 2 on, break the weights so the loss is NaN
        def on_train_epoch_start(self, trainer):
            if trainer.epoch == 1:
                with torch.no_grad():
                    trainer.model.conv2d.weight.fill_(float("nan"))

    t = _trainer(toy, tmp_path, [ModelCheckpoint("val_loss", "min"), Poison(), NanGuard()], epochs=4)
    t.fit()
    assert t.failure and "became nan" in t.failure and "kept the checkpoint of epoch 1" in t.failure
    assert len(t.history) == 1
    state = load_checkpoint(tmp_path / "last")
    assert state["epoch"] == 1 and all(math.isfinite(h["train_loss"]) for h in state["history"])


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1, 12, 12)).sum().backward()
    opt.step()
    state = {"epoch": 3, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "nested": {"a": [1, 2.5, None]}}
    save_checkpoint(tmp_path / "ck", model, state)
    fresh = _model(seed=1)
    back = load_checkpoint(tmp_path / "ck", fresh)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert back["epoch"] == 3 and back["nested"] == {"a": [1, 2.5, None]}
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert not list(tmp_path.glob(".ck*"))  # no temp folders left


def test_interrupted_swap_recovers_the_old_checkpoint(tmp_path):
    model = _model()
    save_checkpoint(tmp_path / "last", model, {"epoch": 1})
    (tmp_path / "last").rename(tmp_path / ".last.old")  # a crash between the two renames
    assert load_checkpoint(tmp_path / "last")["epoch"] == 1


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_schedules(schedule):
    cfg = TrainConfig(schedule=schedule, warmup_epochs=1 if schedule != "onecycle" else 0)
    f = [lr_factor(cfg, s, 100, 10) for s in range(101)]
    assert max(f) == pytest.approx(1.0, abs=0.02)
    if schedule == "constant":
        assert f[0] == pytest.approx(0.1) and f[50] == 1.0
    else:
        assert f[0] < 0.2 and f[100] < 1e-3 and f.index(max(f)) < 30


def test_evaluate_reports_confusion(toy):
    model = _model()
    ev = evaluate(model, toy, normalizer=Normalizer(), engine=CPU, batch_size=50, keep_probs=True)
    assert ev.confusion.sum() == len(toy)
    assert ev.acc == pytest.approx(float(ev.confusion.diag().sum()) / len(toy))
    assert ev.probs.shape == (len(toy), 3)
    assert torch.allclose(ev.probs.sum(1), torch.ones(len(toy)))


def test_hflip_tta_averages_the_mirrored_prediction(toy):
    model = _model().eval()
    ev = evaluate(model, toy, normalizer=Normalizer(), engine=CPU, batch_size=50, tta="hflip", keep_probs=True)
    x = toy.images.float() / 255
    with torch.no_grad():
        want = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2
    assert torch.allclose(ev.probs, want, atol=1e-5)
    assert ev.acc == pytest.approx(float((want.argmax(1) == toy.labels).float().mean()))


def test_engine_respects_precision_flags():
    assert make_engine(TrainConfig(precision="fp32")).amp_dtype is None
    e = make_engine(TrainConfig(precision="auto"))
    assert e.precision in ("bf16", "fp32") and e.device.type in ("cpu", "cuda")
