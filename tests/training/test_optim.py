"""Optimisers with Keras's constants, parameter groups for transfer learning, schedules, the L2 penalty."""

import contextlib
import math
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.training import optim
from cnnlab.training.optim import (
    SGD,
    Adam,
    AdamW,
    RMSprop,
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
    assert isinstance(opt, kind) and type(opt).__name__ == kind.__name__  # ours, a subclass of torch's (below)
    assert opt.param_groups[0]["lr"] == 0.05
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


# --- torch's optimisers without the torch._dynamo import (Adam, AdamW, SGD, RMSprop of cnnlab.training.optim) ---

CASES = [  # (ours, torch's, flags): cnnlab's flags (fused Adam/AdamW/SGD, eps 1e-7) and a few others
    (Adam, torch.optim.Adam, {"fused": True, "eps": 1e-7}),
    (Adam, torch.optim.Adam, {"fused": True, "eps": 1e-7, "weight_decay": 0.01}),
    (Adam, torch.optim.Adam, {"foreach": False, "amsgrad": True}),  # unfused: torch's body too
    (AdamW, torch.optim.AdamW, {"fused": True, "eps": 1e-7, "weight_decay": 0.01}),
    (AdamW, torch.optim.AdamW, {"fused": True, "weight_decay": 0.0}),
    (SGD, torch.optim.SGD, {"fused": True}),
    (SGD, torch.optim.SGD, {"fused": True, "momentum": 0.9}),
    (SGD, torch.optim.SGD, {"fused": True, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (RMSprop, torch.optim.RMSprop, {"alpha": 0.9, "eps": 1e-7, "momentum": 0.5}),
]
CASE_IDS = [f"{ours.__name__}-{'-'.join(f'{k}={v}' for k, v in flags.items())}" for ours, _, flags in CASES]


@pytest.fixture(params=[True, False], ids=["dynamo blocked", "dynamo loaded"])
def ours_context(request):
    """Runs a test twice: with ``import torch._dynamo`` made to fail inside ``with ours_context():`` (ours then
    takes the path of a process without dynamo, cnnlab's), and with dynamo loaded (ours then calls torch's
    wrapped methods). The stock optimisers these tests compare with import it, so they run outside the block.
    (torch's ``_disable_dynamo`` wrappers keep dynamo's function once called, so only a fresh process proves
    that building one never imports it: the subprocess test below.)"""
    import torch._dynamo  # noqa: F401

    @contextlib.contextmanager
    def context():
        if not request.param:
            yield
            return
        saved, sys.modules["torch._dynamo"] = sys.modules["torch._dynamo"], None
        try:
            yield
        finally:
            sys.modules["torch._dynamo"] = saved

    return context


def _params() -> list[nn.Parameter]:
    """A channels-last conv kernel, a bias, a dense kernel, a bf16 vector and one that never gets a gradient."""
    g = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(4, 3, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)),
            nn.Parameter(torch.randn(4, generator=g)), nn.Parameter(torch.randn(5, 4, generator=g)),
            nn.Parameter(torch.randn(6, generator=g).bfloat16()), nn.Parameter(torch.randn(3, generator=g))]


def _groups(params):
    return [{"params": params[:2], "lr": 0.01}, {"params": params[2:], "lr": 0.003, "name": "second"}]


def _steps(opt, params, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad()
        for p in params[:-1]:  # the last keeps grad None: no state, no update
            p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g))
        opt.step()


def _assert_identical(a, b) -> None:
    """Equal bit for bit, tensors with the same dtype, device and strides, at every depth of a state_dict."""
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.device, a.shape, a.stride()) == (b.dtype, b.device, b.shape, b.stride())
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_identical(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_identical(x, y)
    else:
        assert a == b


@pytest.mark.parametrize(("ours", "stock", "flags"), CASES, ids=CASE_IDS)
def test_steps_and_state_are_bit_identical_to_torchs_optimiser(ours, stock, flags, ours_context):
    ref = _params()
    ref_opt = stock(_groups(ref), **flags)
    _steps(ref_opt, ref, 4, seed=1)
    mine = _params()
    with ours_context():
        opt = ours(_groups(mine), **flags)
        _steps(opt, mine, 4, seed=1)
        state = opt.state_dict()
    assert isinstance(opt, stock)
    _assert_identical([p.detach() for p in mine], [p.detach() for p in ref])
    assert not torch.equal(mine[0], _params()[0])  # it did move
    assert mine[-1] not in opt.state  # no state for the parameter without a gradient (plain SGD keeps none)
    _assert_identical(state, ref_opt.state_dict())


@pytest.mark.parametrize(("ours", "stock", "flags"), CASES, ids=CASE_IDS)
def test_state_dicts_move_between_ours_and_torchs_both_ways(ours, stock, flags, ours_context):
    ref = _params()  # the uninterrupted run: 3 steps of one gradient stream, 3 of another
    ref_opt = stock(_groups(ref), **flags)
    _steps(ref_opt, ref, 3, seed=1)
    _steps(ref_opt, ref, 3, seed=2)

    params = _params()  # ours, then torch's
    with ours_context():
        first = ours(_groups(params), **flags)
        _steps(first, params, 3, seed=1)
        saved = first.state_dict()
    then = stock(_groups(params), **flags)
    then.load_state_dict(saved)
    _steps(then, params, 3, seed=2)
    _assert_identical([p.detach() for p in params], [p.detach() for p in ref])
    _assert_identical(then.state_dict(), ref_opt.state_dict())

    params = _params()  # torch's, then ours
    first = stock(_groups(params), **flags)
    _steps(first, params, 3, seed=1)
    saved = first.state_dict()
    with ours_context():
        then = ours(_groups(params), **flags)
        then.load_state_dict(saved)
        _steps(then, params, 3, seed=2)
        state = then.state_dict()
    _assert_identical([p.detach() for p in params], [p.detach() for p in ref])
    _assert_identical(state, ref_opt.state_dict())


def test_step_hooks_fire_once_and_the_profiler_names_the_step(ours_context):
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])  # a stock instance puts torch's hook wrapper on Adam.step
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre")),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post"))]
    try:
        with ours_context():
            w = nn.Parameter(torch.ones(3))
            opt = Adam([w], fused=True)
            handles += [opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
                        opt.register_step_post_hook(lambda o, a, k: calls.append("post"))]
            w.grad = torch.ones(3)
            opt.step()
    finally:
        for h in handles:
            h.remove()
    assert calls == ["global pre", "pre", "post", "global post"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.zero_grad()
        w.grad = torch.ones(3)
        opt.step()
    names = {e.name for e in prof.events()}
    assert {"Optimizer.step#Adam.step", "Optimizer.zero_grad#Adam.zero_grad"} <= names


def test_a_torch_lr_scheduler_drives_ours_as_torchs(ours_context):
    rates = {}
    for kind in (torch.optim.SGD, SGD):
        w = nn.Parameter(torch.ones(2))
        with ours_context() if kind is SGD else contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
            opt = kind([w], lr=0.1, momentum=0.9, fused=True)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=6)
            rates[kind] = []
            for _ in range(6):
                w.grad = torch.ones(2)
                opt.step()
                sched.step()
                rates[kind].append(opt.param_groups[0]["lr"])
        rates[kind].append(w.detach().clone())
    _assert_identical(rates[SGD], rates[torch.optim.SGD])
    assert rates[SGD][0] != rates[SGD][2]


def test_a_differentiable_optimiser_takes_torchs_own_step(monkeypatch):
    # torch's wrapper runs the step with grad mode on for differentiable=True (torch's own test recipe: a
    # non-leaf parameter whose gradient requires grad); under ours' no_grad the update would have no graph.
    # As in a process without dynamo (this one has it), where ours would otherwise take its own path:
    monkeypatch.setattr(optim, "_dynamo_loaded", lambda: False)
    p0, g = torch.ones(2, requires_grad=True), torch.full((2,), 2.0, requires_grad=True)
    p = p0.clone()
    p.grad = g
    SGD([p], lr=0.1, differentiable=True).step()
    p.sum().backward()
    assert p.detach().tolist() == [pytest.approx(0.8)] * 2 and g.grad.tolist() == [pytest.approx(-0.1)] * 2


def test_ours_call_torchs_own_functions_under_the_dynamo_wrappers():
    # what the subclasses rely on in torch 2.13; a torch that wraps differently fails here first
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        plain = getattr(Adam, name).__wrapped__
        assert plain is getattr(torch.optim.Optimizer, name).__wrapped__ and plain.__qualname__ == f"Optimizer.{name}"
    for stock, step in ((torch.optim.Adam, "Adam.step"), (torch.optim.AdamW, "Adam.step"),
                        (torch.optim.SGD, "SGD.step"), (torch.optim.RMSprop, "RMSprop.step")):
        stock([nn.Parameter(torch.zeros(1))])  # an instance puts torch's hook wrapper on the class's step
        with_no_grad, body = optim._torch_steps(stock.step)  # ours' super().step
        assert with_no_grad.__code__.co_name == "_use_grad" and body.__qualname__ == step


BUILD_AND_STEP = """
import sys, torch
from torch import nn
from cnnlab.config import TrainConfig
from cnnlab.training.optim import make_optimizer, make_param_groups
for name in ("adam", "adamw", "sgd", "rmsprop"):
    model = nn.Linear(3, 2)
    cfg = TrainConfig(optimizer=name, lr=0.01, weight_decay=0.01)
    opt = make_optimizer(make_param_groups(model, cfg), cfg, torch.device("cpu"))
    for _ in range(2):
        opt.zero_grad()
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
    opt.load_state_dict(opt.state_dict())
print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
"""


def test_building_and_stepping_each_optimiser_leaves_dynamo_unimported():
    out = subprocess.run([sys.executable, "-c", BUILD_AND_STEP], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
