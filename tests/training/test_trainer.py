"""The fit loop: learning, repeatability, exact resume, callback order; evaluation with and without TTA."""

import pytest
import torch

from cnnlab.config import TrainConfig
from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.training.callbacks import Callback, ModelCheckpoint
from cnnlab.training.trainer import Trainer, evaluate


def test_training_learns_the_toy_task(toy, make_trainer):
    t = make_trainer(toy)
    hist = t.fit()
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    # fp32 on the CPU is deterministic: pinned, up to the float noise of another thread count (rel 2e-3).
    # The toy is solved in epoch 1 (val_acc 1.0), so accuracy alone could not catch a regression; the losses
    # of each epoch can.
    assert [h["train_loss"] for h in hist] == pytest.approx([0.49366, 0.014731, 0.00088957], rel=2e-3)
    assert hist[0]["train_acc"] == 155 / 180 and [h["val_acc"] for h in hist] == [1.0, 1.0, 1.0]
    assert set(hist[0]) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "lr"}


def test_same_seed_same_result(toy, make_trainer):
    a = make_trainer(toy).fit()
    b = make_trainer(toy).fit()
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in b]


def test_resume_continues_exactly(toy, tmp_path, make_trainer):
    full = make_trainer(toy, tmp_path / "a", [ModelCheckpoint("val_loss", "min")]).fit()
    first = make_trainer(toy, tmp_path / "b", [ModelCheckpoint("val_loss", "min")], epochs=1)
    first.fit()
    second = make_trainer(toy, tmp_path / "b", [ModelCheckpoint("val_loss", "min")])
    second.resume("last")
    assert second.epoch == 1
    resumed = second.fit()
    assert len(resumed) == 3
    assert [h["train_loss"] for h in resumed] == pytest.approx([h["train_loss"] for h in full], rel=1e-6)


def test_an_epoch_end_checkpoint_of_an_older_cnnlab_without_an_augmentation_stream_resumes(toy, tmp_path, make_trainer):
    """cnnlab before part-way checkpoints saved one ``generator`` and no ``aug_generator``; each epoch reseeds the
    augmentation stream from (seed, epoch), so an epoch-end checkpoint continues exactly without it."""
    from cnnlab.training.checkpoint import load_checkpoint, save_checkpoint

    full = make_trainer(toy, tmp_path / "a", [ModelCheckpoint("val_loss", "min")])
    full.fit()
    first = make_trainer(toy, tmp_path / "b", [ModelCheckpoint("val_loss", "min")], epochs=1)
    first.fit()
    old = load_checkpoint(tmp_path / "b" / "last", first.model)
    old["generator"] = old.pop("aug_generator")
    del old["progress"], old["world_size"]
    save_checkpoint(tmp_path / "b" / "last", first.model, old)
    second = make_trainer(toy, tmp_path / "b", [ModelCheckpoint("val_loss", "min")])
    second.resume("last")
    second.fit()
    assert [h["train_loss"] for h in second.history] == [h["train_loss"] for h in full.history]


def test_callbacks_run_in_order_and_need_unique_state_keys(toy, make_trainer):
    calls: list[str] = []

    class Named(Callback):
        def __init__(self, name, order):
            self.name, self.order = name, order

        @property
        def state_key(self):
            return self.name

        def on_train_epoch_end(self, trainer, logs):
            calls.append(self.name)

    t = make_trainer(toy, callbacks=[Named("late", 50), Named("first", -10), Named("plain", 0),
                                     Named("plain2", 0)], epochs=1)
    assert [cb.name for cb in t.callbacks] == ["first", "plain", "plain2", "late"]  # stable among equal orders
    t.fit()
    assert calls == ["first", "plain", "plain2", "late"]
    with pytest.raises(CnnlabError, match="two callbacks share the state_key 'same'"):
        make_trainer(toy, callbacks=[Named("same", 0), Named("same", 1)])


def test_stop_requests_accumulate_and_the_first_reason_wins(toy, make_trainer):
    class Ask(Callback):
        def __init__(self, reason, order):
            self.reason, self.order = reason, order

        @property
        def state_key(self):
            return self.reason

        def on_train_epoch_end(self, trainer, logs):
            trainer.request_stop(self.reason)

    t = make_trainer(toy, callbacks=[Ask("b", 1), Ask("a", 0)], epochs=5)
    t.fit()
    assert t.epoch == 1 and t.should_stop and t.stop_reasons == ["a", "b"] and t.stop_reason == "a"


def test_resume_without_a_checkpoint_folder_is_an_error(toy, make_trainer):
    with pytest.raises(CnnlabError, match="no checkpoint folder to resume from"):
        make_trainer(toy).resume()


def test_evaluate_reports_confusion(toy, make_model, cpu_engine):
    model = make_model()
    ev = evaluate(model, toy, normalizer=Normalizer(), engine=cpu_engine, batch_size=50, keep_probs=True)
    assert ev.confusion.sum() == len(toy)
    assert ev.acc == pytest.approx(float(ev.confusion.diag().sum()) / len(toy))
    assert ev.probs.shape == (len(toy), 3)
    assert torch.allclose(ev.probs.sum(1), torch.ones(len(toy)))


def test_hflip_tta_averages_the_mirrored_prediction(toy, make_model, cpu_engine):
    model = make_model().eval()
    ev = evaluate(model, toy, normalizer=Normalizer(), engine=cpu_engine, batch_size=50, tta="hflip",
                  keep_probs=True)
    x = toy.images.float() / 255
    with torch.no_grad():
        want = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2
    assert torch.allclose(ev.probs, want, atol=1e-5)
    assert ev.acc == pytest.approx(float((want.argmax(1) == toy.labels).float().mean()))


def test_evaluate_keeps_the_models_mode(toy, make_model, cpu_engine):
    model = make_model().train()
    evaluate(model, toy, normalizer=Normalizer(), engine=cpu_engine)
    assert model.training


def test_steps_per_epoch_counts_a_last_partial_batch_but_not_a_single_image(toy, make_model, cpu_engine):
    def steps(n):
        return Trainer(make_model(), TrainConfig(batch_size=16), train_data=toy.subset(torch.arange(n)),
                       val_data=None, normalizer=Normalizer(), engine=cpu_engine).steps_per_epoch

    assert (steps(32), steps(33), steps(34)) == (2, 2, 3)  # one image alone would break BatchNorm: dropped


def test_an_epoch_without_a_single_step_is_an_error(toy, make_model, cpu_engine):
    from cnnlab.config import TrainConfig
    from cnnlab.data.tensors import Normalizer
    from cnnlab.errors import CnnlabError

    # one image: its batch would be the dropped last batch of one (BatchNorm), so no step would ever run
    with pytest.raises(CnnlabError, match="the training set has 1 image: no optimiser step can run"):
        Trainer(make_model(), TrainConfig(batch_size=4), train_data=toy.subset([0]), val_data=None,
                normalizer=Normalizer(), engine=cpu_engine)
    two = Trainer(make_model(), TrainConfig(batch_size=4), train_data=toy.subset([0, 1]), val_data=None,
                  normalizer=Normalizer(), engine=cpu_engine)
    assert two.steps_per_epoch == 1


def test_resume_restores_optimizer_state_in_each_parameters_layout(toy, tmp_path):
    """Fused Adam/SGD walk param, grad and state as flat memory: the moments of a channels-last conv weight
    must come back channels-last, or a resumed run pairs the wrong elements (it used to differ by 0.09)."""
    from cnnlab.config import TrainConfig
    from cnnlab.data.tensors import Normalizer, split
    from cnnlab.models.spec import build_spec
    from cnnlab.training.callbacks import ModelCheckpoint
    from cnnlab.training.engine import Engine

    rgb = toy.subset(torch.arange(len(toy)))
    rgb = type(toy)(rgb.images.repeat(1, 3, 1, 1), rgb.labels, rgb.classes)
    layers = [{"type": "Conv2D", "filters": 16, "kernel_size": 3, "activation": "relu"}, {"type": "MaxPooling2D"},
              {"type": "Conv2D", "filters": 16, "kernel_size": 3, "activation": "relu"}, {"type": "Flatten"},
              {"type": "Dense", "units": "num_classes"}]
    engine = Engine(torch.device("cpu"), None, True)  # fp32, channels-last: deterministic and exact

    def trainer(folder, epochs, optimizer):
        torch.manual_seed(0)
        train, val = split(rgb, 0.25, seed=0)
        model = build_spec(layers, input_shape=(3, 12, 12), num_classes=3)
        return Trainer(model, TrainConfig(epochs=epochs, batch_size=16, lr=0.01, optimizer=optimizer),
                       train_data=train, val_data=val, normalizer=Normalizer(), engine=engine,
                       callbacks=[ModelCheckpoint("val_loss", "min")], checkpoint_dir=folder)

    for optimizer in ("adam", "sgd"):
        full = trainer(tmp_path / optimizer / "a", 3, optimizer)
        full.fit()
        trainer(tmp_path / optimizer / "b", 1, optimizer).fit()
        resumed = trainer(tmp_path / optimizer / "b", 3, optimizer)
        resumed.resume("last")
        for p in resumed.model.parameters():
            for value in resumed.optimizer.state[p].values():
                if value.shape == p.shape:
                    assert value.stride() == p.stride()
        resumed.fit()
        for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
            assert torch.equal(a, b), (optimizer, k)
        assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_the_rate_each_step_uses_follows_the_schedule_and_survives_a_resume(toy, tmp_path, make_trainer):
    """Recorded through a callback before each step: step k uses lr * lr_factor(k), not a step late, and a
    resumed run uses exactly the rates of an uninterrupted one."""
    from cnnlab.training.callbacks import Callback, ModelCheckpoint
    from cnnlab.training.optim import lr_factor

    class Rates(Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, batch):
            self.seen.append(trainer.optimizer.param_groups[0]["lr"])

    full_rates = Rates()
    full = make_trainer(toy, tmp_path / "a", [full_rates, ModelCheckpoint("val_loss", "min")], epochs=3,
                        schedule="onecycle", lr=0.05)
    full.fit()
    spe, total = full.steps_per_epoch, 3 * full.steps_per_epoch
    assert full_rates.seen == [pytest.approx(0.05 * lr_factor(full.cfg, k, total, spe), rel=1e-12)
                               for k in range(total)]
    assert [h["lr"] for h in full.history] == [full_rates.seen[e * spe] for e in range(3)]
    first = make_trainer(toy, tmp_path / "b", [Rates(), ModelCheckpoint("val_loss", "min")], epochs=3,
                         schedule="onecycle", lr=0.05)
    first.epochs = 1  # stop after epoch 1 of a 3-epoch plan, as a crash would
    first.fit()
    rest = Rates()
    second = make_trainer(toy, tmp_path / "b", [rest, ModelCheckpoint("val_loss", "min")], epochs=3,
                          schedule="onecycle", lr=0.05)
    second.resume("last")
    second.fit()
    assert rest.seen == full_rates.seen[spe:]


def test_evaluation_loss_is_the_mean_cross_entropy_over_the_whole_set(toy, make_model, cpu_engine):
    import torch.nn.functional as F

    from cnnlab.data.tensors import Normalizer

    model = make_model().eval()
    ev = evaluate(model, toy, normalizer=Normalizer(), engine=cpu_engine, batch_size=7)  # uneven batches
    with torch.no_grad():
        logits = model(Normalizer()(toy.images))
    # the batched sum / N and one mean differ only by float32 summation order
    assert ev.loss == pytest.approx(F.cross_entropy(logits, toy.labels).item(), rel=1e-5)
    assert ev.confusion.sum(1).tolist() == toy.class_counts()  # rows are the true classes
    assert ev.acc == (logits.argmax(1) == toy.labels).sum().item() / len(toy)


# ------------------------------------------------------------------ part-way checkpoints and exact resume


class Crash(Callback):
    """Raises after global step ``at`` (a crash: nothing more is saved)."""

    order = 60

    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, batch, loss):
        if trainer.epoch * trainer.steps_per_epoch + batch + 1 == self.at:
            raise RuntimeError("killed")


def test_a_run_resumed_from_a_part_way_checkpoint_equals_an_uninterrupted_one(toy, tmp_path, make_trainer):
    from cnnlab.training.callbacks import CheckpointEvery
    from cnnlab.training.checkpoint import load_checkpoint

    def trainer(folder, *extra):
        return make_trainer(toy, folder, [ModelCheckpoint("val_loss", "min"), CheckpointEvery(steps=5), *extra],
                            schedule="onecycle")

    full = trainer(tmp_path / "a")
    full.fit()
    crashed = trainer(tmp_path / "b", Crash(at=19))  # 12 steps an epoch: saved at step 15 = epoch 2, batch 3
    with pytest.raises(RuntimeError, match="killed"):
        crashed.fit()
    state = load_checkpoint(tmp_path / "b" / "last")
    assert (state["epoch"], state["progress"]["step"], state["progress"]["seen"]) == (1, 3, 48)
    previous = load_checkpoint(tmp_path / "b" / "previous")  # the one it replaced: epoch 1's end
    assert (previous["epoch"], previous["progress"]) == (1, None)
    resumed = trainer(tmp_path / "b")
    resumed.resume("last")
    assert resumed.progress.step == 3 and resumed.epoch == 1
    resumed.fit()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # dropout draws, data order and Adam's moments continue exactly
    drop = ("seconds",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in full.history]  # lr: the epoch's first step's


def test_checkpoint_every_saves_by_steps_and_by_time_never_at_an_epochs_end(toy, tmp_path, make_trainer):
    from cnnlab.training.callbacks import CheckpointEvery

    steps = CheckpointEvery(steps=4)
    saved = []
    t = make_trainer(toy, tmp_path / "s", [steps], epochs=2)
    t.save_checkpoint = lambda kind: saved.append((kind, t.epoch, t.progress.step))
    t.fit()
    # global steps 4, 8, 16, 20 (12 and 24 end an epoch: ModelCheckpoint's)
    assert saved == [("last", 0, 4), ("last", 0, 8), ("last", 1, 4), ("last", 1, 8)] and steps.saved == 4

    now = [0.0]
    timed = CheckpointEvery(seconds=10, clock=lambda: now[0])

    class Tick(Callback):  # each step takes 3 s of the fake clock
        order = 40

        def on_train_batch_end(self, trainer, batch, loss):
            now[0] += 3

    saved.clear()
    t = make_trainer(toy, tmp_path / "t", [Tick(), timed], epochs=2)
    t.save_checkpoint = lambda kind: saved.append((t.epoch, t.progress.step))
    t.fit()
    # 12 s after the start: after step 4 and 8; the epoch's end resets the clock, then steps 4 and 8 again
    assert saved == [(0, 4), (0, 8), (1, 4), (1, 8)]
    with pytest.raises(CnnlabError, match="needs a positive number of steps or seconds"):
        CheckpointEvery()


def test_steps_per_epoch_makes_each_epoch_the_first_steps_of_its_own_order(toy, make_trainer):
    from cnnlab.data.tensors import epoch_order

    class Seen(Callback):
        def __init__(self):
            self.steps, self.first = [], []

        def on_train_batch_start(self, trainer, batch):
            if batch == 0:  # the first batch of the epoch is the start of that epoch's order
                self.first.append(epoch_order(len(trainer.train_data), trainer.cfg.seed, trainer.epoch)[:16])

        def on_train_batch_end(self, trainer, batch, loss):
            self.steps.append((trainer.epoch, batch, trainer.progress.seen))

    seen = Seen()
    trainer = make_trainer(toy, callbacks=[seen], steps_per_epoch=3, schedule="onecycle")
    assert trainer.steps_per_epoch == 3  # of the 12 a full pass over the 180 training images takes
    trainer.fit()
    assert seen.steps == [(e, b, 16 * (b + 1)) for e in range(3) for b in range(3)]
    assert not torch.equal(seen.first[0], seen.first[1])  # a fresh sample each epoch
    assert trainer.lr == pytest.approx(trainer.cfg.peak_lr * 1e-4)  # one-cycle planned over the 9 steps: at its floor
    assert len(trainer.history) == 3 and all(h["val_loss"] is not None for h in trainer.history)
    assert make_trainer(toy, steps_per_epoch=100).steps_per_epoch == 12  # never more than a pass


def test_validation_freq_validates_every_nth_epoch_and_the_last(toy, make_trainer):
    trainer = make_trainer(toy, epochs=5, validation_freq=2)
    trainer.fit()
    validated = [h["epoch"] for h in trainer.history if h["val_loss"] is not None]
    assert validated == [2, 4, 5]  # Keras's N, 2N, ..., and the last epoch, whose weights the run keeps
    assert all(h["val_acc"] is None for h in trainer.history if h["epoch"] in (1, 3))
    assert trainer.last_eval is not None and trainer.last_eval.loss == trainer.history[-1]["val_loss"]
    every = make_trainer(toy, epochs=5)
    every.fit()
    assert [h["train_loss"] for h in every.history] == [h["train_loss"] for h in trainer.history]  # training untouched


def test_validates_names_the_epochs_that_validate(toy, make_trainer):
    trainer = make_trainer(toy, epochs=7, validation_freq=3)
    assert [e for e in range(7) if trainer.validates(e)] == [2, 5, 6]  # 0-based: epochs 3, 6 and the last
    trainer.val_data = None
    assert not any(trainer.validates(e) for e in range(7))  # no validation data: never
