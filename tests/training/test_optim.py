"""Optimisers with Keras's constants, parameter groups for transfer learning, schedules, the L2 penalty."""

import math

import pytest
import torch
from torch import nn

from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.training.optim import (
    l2_penalty,
    l2_targets,
    lr_factor,
    make_optimizer,
    make_param_groups,
    set_lr,
)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_schedules(schedule):
    cfg = TrainConfig(schedule=schedule, warmup_epochs=1 if schedule != "onecycle" else 0)
    f = [lr_factor(cfg, s, 100, 10) for s in range(101)]
    assert max(f) == pytest.approx(1.0, abs=0.02)
    if schedule == "constant":
        assert f[0] == pytest.approx(0.1) and f[50] == 1.0
    else:
        assert f[0] < 0.2 and f[100] < 1e-3 and f.index(max(f)) < 30


def test_schedule_values():
    constant = TrainConfig()
    assert [lr_factor(constant, s, 100, 10) for s in (0, 99)] == [1.0, 1.0]
    warm = TrainConfig(warmup_epochs=0.5)  # 5 steps of linear warm-up
    assert [lr_factor(warm, s, 100, 10) for s in range(6)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    cosine = TrainConfig(schedule="cosine")
    assert lr_factor(cosine, 0, 100, 10) == 1.0 and lr_factor(cosine, 50, 100, 10) == pytest.approx(0.5)
    assert lr_factor(cosine, 100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    onecycle = TrainConfig(schedule="onecycle")  # warm-up over the first 25 of 100 steps, from peak / 25
    assert lr_factor(onecycle, 0, 100, 10) == pytest.approx(0.04)
    assert lr_factor(onecycle, 25, 100, 10) == pytest.approx(1.0)
    assert lr_factor(onecycle, 100, 100, 10) == pytest.approx(1e-4)


def test_param_groups_for_a_head_and_a_backbone():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    cfg = TrainConfig(lr=0.01)
    (everything,) = make_param_groups(model, cfg)
    assert everything["name"] == "all" and len(everything["params"]) == 4 and everything["lr"] == 0.01
    model[0].weight.requires_grad_(False)
    assert len(make_param_groups(model, cfg)[0]["params"]) == 3  # without a head: trainable ones only
    head, body = make_param_groups(model, cfg, head={"1.weight", "1.bias"}, backbone_lr=0.1)
    assert (head["name"], head["lr"], head["lr_scale"], len(head["params"])) == ("head", 0.01, 1.0, 2)
    assert (body["name"], body["lr"], body["lr_scale"], len(body["params"])) == ("backbone", pytest.approx(0.001),
                                                                                  0.1, 2)  # frozen ones included
    assert len(make_param_groups(model, cfg, head={"0.weight", "0.bias", "1.weight", "1.bias"})) == 1


@pytest.mark.parametrize(("name", "kind"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                            ("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop)])
def test_optimizers_use_keras_constants(name, kind):
    model = nn.Linear(2, 2)
    cfg = TrainConfig(optimizer=name, lr=0.05, momentum=0.5, nesterov=True)
    opt = make_optimizer(make_param_groups(model, cfg), cfg, torch.device("cpu"))
    assert type(opt) is kind and opt.param_groups[0]["lr"] == 0.05
    if name in ("adam", "adamw", "rmsprop"):
        assert opt.defaults["eps"] == 1e-7
    if name == "rmsprop":
        assert opt.defaults["alpha"] == 0.9 and opt.defaults["momentum"] == 0.5
    if name == "sgd":
        assert opt.defaults["momentum"] == 0.5 and opt.defaults["nesterov"]


def test_unknown_optimizer_is_a_one_line_error():
    cfg = TrainConfig()
    object.__setattr__(cfg, "optimizer", "adagrad")
    with pytest.raises(CnnlabError, match="unknown optimizer 'adagrad'; valid: adam, adamw, rmsprop, sgd"):
        make_optimizer([{"params": [nn.Parameter(torch.zeros(1))]}], cfg, torch.device("cpu"))


def test_set_lr_scales_each_group():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    cfg = TrainConfig(lr=0.1)
    opt = make_optimizer(make_param_groups(model, cfg, head={"1.weight", "1.bias"}, backbone_lr=0.5), cfg,
                         torch.device("cpu"))
    assert set_lr(opt, 0.1, 0.2) == pytest.approx(0.02)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.02), pytest.approx(0.01)]


def test_l2_penalty_covers_kernels_only():
    model = nn.Sequential(nn.Conv2d(1, 1, 2), nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(1, 1))
    with torch.no_grad():
        model[0].weight.fill_(2.0)  # 4 values of 2: 16
        model[3].weight.fill_(3.0)  # 1 value of 3: 9
    targets = l2_targets(model)
    assert [t.shape for t in targets] == [(1, 1, 2, 2), (1, 1)]  # no biases, no BatchNorm scale
    assert l2_penalty(targets).item() == 25.0
    assert l2_penalty([]).item() == 0.0
    model[3].weight.requires_grad_(False)
    assert len(l2_targets(model)) == 1


def test_schedules_at_exact_steps_from_the_formulas():
    """Independent values: PyTorch's OneCycleLR shape (warm-up from peak/25 over 25%, cosine to peak/1e4) and
    cosine decay after a linear warm-up, each written out by hand at the steps that matter."""
    import math

    one = TrainConfig(schedule="onecycle")
    total, spe = 200, 20
    assert lr_factor(one, 10, total, spe) == pytest.approx(1 / 25 + (1 - 1 / 25) * 10 / 50, abs=1e-15)
    t = (125 - 50) / 150  # half-way through the annealing: factor halfway between 1 and 1e-4
    assert lr_factor(one, 125, total, spe) == pytest.approx(1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t)))
    assert lr_factor(one, 125, total, spe) == pytest.approx((1 + 1e-4) / 2)
    warm = TrainConfig(schedule="cosine", warmup_epochs=1)  # 20 warm-up steps, then cosine over the other 180
    assert [lr_factor(warm, s, total, spe) for s in (0, 9, 19)] == [pytest.approx(v) for v in (1 / 20, 10 / 20, 1.0)]
    assert lr_factor(warm, 20, total, spe) == 1.0  # the decay starts after the warm-up, not at step 0
    assert lr_factor(warm, 110, total, spe) == pytest.approx(0.5)
    assert lr_factor(warm, 200, total, spe) == pytest.approx(0.0, abs=1e-15)
    # continuity where the pieces meet
    assert abs(lr_factor(one, 50, total, spe) - lr_factor(one, 49, total, spe)) < 0.02


def test_one_sgd_step_with_l2_moves_weights_by_lr_times_grad_plus_2_l2_w():
    """Keras's kernel_regularizer l2(c) adds c * sum(w**2) to the loss: its gradient is 2 c w."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    lr, c = 0.1, 0.01
    data_loss = nn.functional.cross_entropy(model(x), y)
    g_w, g_b = torch.autograd.grad(data_loss, [model.weight, model.bias])
    cfg = TrainConfig(optimizer="sgd", lr=lr, momentum=0.0, l2=c)
    opt = make_optimizer(make_param_groups(model, cfg), cfg, torch.device("cpu"))
    loss = nn.functional.cross_entropy(model(x), y) + c * l2_penalty(l2_targets(model))
    loss.backward()
    opt.step()
    torch.testing.assert_close(model.weight.detach(), w0 - lr * (g_w + 2 * c * w0))
    torch.testing.assert_close(model.bias.detach(), b0 - lr * g_b)  # no penalty on biases


def test_onecycle_of_a_short_run_warms_up_for_one_step():
    # 25% of 4 steps is 1 step of warm-up (from peak / 25), then cosine from the peak: step 1 is the peak
    one = TrainConfig(schedule="onecycle")
    assert lr_factor(one, 0, 4, 4) == pytest.approx(1 / 25)
    assert lr_factor(one, 1, 4, 4) == pytest.approx(1.0)
    assert lr_factor(one, 2, 4, 4) == pytest.approx(1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi / 3)))


def test_set_lr_sets_plain_groups_and_tensor_rates_in_place():
    w = nn.Parameter(torch.zeros(2))
    sgd = torch.optim.SGD([w], lr=1.0)  # a group without lr_scale: scale 1
    assert set_lr(sgd, 0.1, 0.5) == pytest.approx(0.05) and sgd.param_groups[0]["lr"] == pytest.approx(0.05)
    rate = torch.tensor(0.01)
    adam = torch.optim.Adam([w], lr=rate)  # PyTorch keeps a tensor lr as given (for capturable/compiled steps)
    set_lr(adam, 0.1, 0.5)
    assert adam.param_groups[0]["lr"] is rate and float(rate) == pytest.approx(0.05)


def test_groups_carry_their_scale_and_the_backbone_defaults_to_the_head_rate():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    cfg = TrainConfig(lr=0.01)
    assert make_param_groups(model, cfg)[0]["lr_scale"] == 1.0  # schedules multiply every group's rate by it
    head, body = make_param_groups(model, cfg, head={"1.weight", "1.bias"})
    assert (body["lr"], body["lr_scale"]) == (0.01, 1.0)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_kernels_on_cpu_and_cuda_only(name):
    from cnnlab.training.optim import _fused_ok

    model = nn.Linear(2, 2)
    cfg = TrainConfig(optimizer=name, lr=0.05)
    assert make_optimizer(make_param_groups(model, cfg), cfg, torch.device("cpu")).defaults["fused"] is True
    # building a CUDA optimiser needs a GPU; which devices get the fused kernels does not
    assert _fused_ok(torch.device("cuda")) == {"fused": True} and _fused_ok(torch.device("meta")) == {}
