"""smart_optimizer parameter groups, LR lambdas, EarlyStopping and ModelEMA."""

import logging
import math
import pickle

import pytest
import torch
import torch.nn as nn

from utils.ema import ModelEMA, ema_decay
from utils.logger import LOGGER
from utils.optim import EarlyStopping, LinearLR, lr_lambda, one_cycle, smart_optimizer


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                         nn.GroupNorm(2, 4))


def test_param_group_order_counts_and_decay():
    net = tiny_net()
    opt = smart_optimizer(net, "SGD", lr=0.01, momentum=0.937, decay=5e-4)
    groups = [[id(p) for p in g["params"]] for g in opt.param_groups]
    assert groups[0] == [id(net[1].bias), id(net[3].bias), id(net[4].bias)]  # biases first (warmup_bias_lr)
    assert groups[1] == [id(net[0].weight), id(net[3].weight)]  # conv weights, decayed
    assert groups[2] == [id(net[1].weight), id(net[4].weight)]  # norm weights
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert all(g["nesterov"] and g["momentum"] == 0.937 and g["lr"] == 0.01 for g in opt.param_groups)
    assert sum(len(g) for g in groups) == len(list(net.parameters()))


@pytest.mark.parametrize("name,cls", [("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW),
                                      ("RMSProp", torch.optim.RMSprop)])
def test_other_optimizers(name, cls):
    opt = smart_optimizer(tiny_net(), name, lr=0.001, momentum=0.9, decay=1e-4)
    assert isinstance(opt, cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-4, 0.0]
    if name != "RMSProp":
        assert opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_unknown_optimizer_lists_choices():
    with pytest.raises(ValueError, match="SGD, Adam, AdamW, RMSProp"):
        smart_optimizer(tiny_net(), "Lion")


def test_lr_lambdas_endpoints_and_pickle():
    epochs, lrf = 30, 0.01
    for lf in (lr_lambda(False, lrf, epochs), lr_lambda(True, lrf, epochs), one_cycle(1, lrf, epochs)):
        assert lf(0) == pytest.approx(1.0) and lf(epochs) == pytest.approx(lrf)
        assert pickle.loads(pickle.dumps(lf))(7) == lf(7)
    assert LinearLR(lrf, epochs)(15) == pytest.approx(0.5 * (1 - lrf) + lrf)
    assert lr_lambda(True, lrf, epochs)(15) == pytest.approx((1 - lrf) / 2 + lrf)  # cosine midpoint
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lr_lambda(False, lrf, epochs))
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * LinearLR(lrf, epochs)(1))


def test_early_stopping_counts_ties_as_improvement(caplog):
    LOGGER.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER.name):
            es = EarlyStopping(patience=3)
            decisions = [es(e, f) for e, f in enumerate([0.1, 0.2, 0.2, 0.15, 0.19, 0.2, 0.1, 0.1, 0.1])]
    finally:
        LOGGER.removeHandler(caplog.handler)
    assert es.best_epoch == 5  # the tie at epoch 5 moved the best epoch
    assert decisions == [False] * 8 + [True]
    assert "Stopping training early" in caplog.text and "epoch 5" in caplog.text


def test_early_stopping_patience_zero_never_stops():
    es = EarlyStopping(patience=0)
    assert not any(es(e, 0.0 if e else 1.0) for e in range(500))


def test_ema_decay_formula_and_bn_buffers():
    net = tiny_net()
    ema = ModelEMA(net, updates=10)
    assert not ema.ema.training and not any(p.requires_grad for p in ema.ema.parameters())
    start = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    net.train()
    net(torch.randn(4, 3, 8, 8))  # moves BN running statistics
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    d = 0.9999 * (1 - math.exp(-11 / 2000))
    assert ema.updates == 11 and ema.decay(11) == pytest.approx(d) == ema_decay(11)
    msd = net.state_dict()
    for k, v in ema.ema.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, d * start[k] + (1 - d) * msd[k], atol=1e-6), k
    assert not torch.equal(ema.ema[1].running_mean, start["1.running_mean"])  # BN buffers averaged too
    assert torch.equal(ema.ema[1].num_batches_tracked, start["1.num_batches_tracked"])  # integers are not


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSProp"])
def test_optimizers_take_list_ops_with_the_same_bits(name):
    """smart_optimizer asks for the list ('foreach') form of each update, which torch only picks by itself on CUDA:
    after three steps the weights are bit for bit those of the per-tensor form."""
    nets = [tiny_net(), tiny_net()]
    opts = [smart_optimizer(net, name, lr=0.01, momentum=0.9, decay=5e-4) for net in nets]
    assert all(g["foreach"] for g in opts[0].param_groups)
    for g in opts[1].param_groups:
        g["foreach"] = False
    torch.manual_seed(1)
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        for net, opt in zip(nets, opts):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    pairs = list(zip(nets[0].parameters(), nets[1].parameters()))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), tiny_net().parameters()))  # it moved


def test_ema_update_is_the_per_tensor_formula_bit_for_bit():
    """ModelEMA.update works on lists of tensors, 64 at a time; the result is what `v *= d; v += (1 - d) * m` per
    tensor (YOLOv5's loop) gives, to the bit, also past the first chunk (30 BatchNorms: 120 float tensors)."""
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.BatchNorm2d(3) for _ in range(30)])
    ema = ModelEMA(net, updates=5)
    expected = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    net.train()
    net(torch.randn(4, 3, 5, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    ema.update(net)
    d = ema_decay(6)
    for k, v in net.state_dict().items():
        if v.dtype.is_floating_point:
            expected[k] *= d
            expected[k] += (1 - d) * v
    got = ema.ema.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert not torch.equal(got["29.running_var"], torch.ones(3))  # the last chunk was updated


def test_ema_parallel_wrapper_update_attr_and_pickle():
    net = tiny_net()
    net.names, net.nc = {0: "a"}, 1
    ema = ModelEMA(nn.DataParallel(net))
    assert isinstance(ema.ema, nn.Sequential)  # unwrapped
    net.nc, net.names, net.secret = 2, {0: "a", 1: "b"}, "not in include"
    ema.update(nn.DataParallel(net))
    ema.update_attr(nn.DataParallel(net))
    assert ema.ema.nc == 2 and ema.ema.names == {0: "a", 1: "b"} and not hasattr(ema.ema, "secret")
    ema.update_attr(net, include=("nc",))
    assert pickle.loads(pickle.dumps(ema)).updates == 1
