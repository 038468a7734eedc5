"""ComputeLoss, build_targets, smooth_BCE and FocalLoss on a tiny fake detector (64x64 input, strides 8/16/32)."""

import pytest
import torch
import torch.nn as nn

from utils.loss import ComputeLoss, FocalLoss, smooth_BCE

ANCHORS_PX = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
STRIDES = (8, 16, 32)
HYP = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0, label_smoothing=0.0)


class TinyDetect(nn.Module):
    """Only what ComputeLoss reads from Detect: nc, nl, na, anchors (grid units), stride."""

    def __init__(self, nc: int):
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, 3, 3
        self.stride = torch.tensor(STRIDES, dtype=torch.float32)
        anchors = torch.tensor(ANCHORS_PX, dtype=torch.float32).view(3, 3, 2)
        self.register_buffer("anchors", anchors / self.stride.view(-1, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(4, self.no * self.na, 1) for _ in STRIDES)


class TinyModel(nn.Module):
    def __init__(self, nc: int = 3, **hyp):
        super().__init__()
        self.model = nn.Sequential(TinyDetect(nc))
        self.hyp = dict(HYP, **hyp)


def predictions(nc: int, bs: int = 2, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, 3, size // s, size // s, nc + 5, generator=g).requires_grad_(True) for s in STRIDES]


ONE_TARGET = torch.tensor([[0, 1, 0.3, 0.7, 0.25, 0.25]])  # [img, cls, x, y, w, h] normalised


def test_smooth_bce():
    assert smooth_BCE(0.0) == (1.0, 0.0)
    assert smooth_BCE(0.1) == pytest.approx((0.95, 0.05))


def test_focal_loss_reduces_to_scaled_bce():
    pred, true = torch.randn(10, 4), (torch.rand(10, 4) > 0.5).float()
    bce = nn.BCEWithLogitsLoss()(pred, true)
    assert torch.allclose(FocalLoss(nn.BCEWithLogitsLoss(), gamma=0.0, alpha=0.5)(pred, true), 0.5 * bce)
    focal = FocalLoss(nn.BCEWithLogitsLoss(), gamma=1.5)(pred, true)
    assert 0 < focal < bce  # easy examples are down-weighted
    assert FocalLoss(nn.BCEWithLogitsLoss(reduction="sum"))(pred, true).shape == ()


def test_empty_targets_only_objectness():
    p = predictions(3)
    total, items = ComputeLoss(TinyModel(3))(p, torch.zeros(0, 6))
    lbox, lobj, lcls = items.tolist()
    assert lbox == 0.0 and lcls == 0.0 and lobj > 0
    assert total.item() == pytest.approx(lobj * 2)  # x batch size


def test_one_target_all_losses_positive():
    p = predictions(3)
    total, items = ComputeLoss(TinyModel(3))(p, ONE_TARGET)
    assert (items > 0).all()
    assert total.item() == pytest.approx(items.sum().item() * 2, rel=1e-6)
    assert not items.requires_grad


def test_single_class_has_no_cls_loss():
    total, items = ComputeLoss(TinyModel(1))(predictions(1), ONE_TARGET.clone().index_fill_(1, torch.tensor([1]), 0))
    assert items[0] > 0 and items[1] > 0 and items[2] == 0


def test_label_smoothing_changes_cls_only():
    p = predictions(3)
    plain = ComputeLoss(TinyModel(3))(p, ONE_TARGET)[1]
    smooth = ComputeLoss(TinyModel(3, label_smoothing=0.2))(p, ONE_TARGET)[1]
    assert smooth[2] != plain[2]
    assert torch.equal(smooth[:2], plain[:2])


def test_focal_gamma_wraps_both_bce():
    loss = ComputeLoss(TinyModel(3, fl_gamma=1.5))
    assert isinstance(loss.BCEcls, FocalLoss) and isinstance(loss.BCEobj, FocalLoss)
    assert (loss(predictions(3), ONE_TARGET)[1] > 0).all()


def test_gains_scale_items():
    p = predictions(3)
    base = ComputeLoss(TinyModel(3))(p, ONE_TARGET)[1]
    scaled = ComputeLoss(TinyModel(3, box=0.1, obj=3.0, cls=0.25))(p, ONE_TARGET)[1]
    assert torch.allclose(scaled, base * torch.tensor([2.0, 3.0, 0.5]))


def test_gradients_reach_predictions():
    p = predictions(3)
    total, _ = ComputeLoss(TinyModel(3))(p, ONE_TARGET)
    total.backward()
    for level in p:
        assert level.grad is not None and level.grad[..., 4].abs().sum() > 0  # objectness everywhere
    assert p[0].grad[..., :4].abs().sum() > 0 and p[0].grad[..., 5:].abs().sum() > 0  # matched on P3


def test_build_targets_neighbour_cells():
    loss = ComputeLoss(TinyModel(3))
    tcls, tbox, indices, anch = loss.build_targets(predictions(3), ONE_TARGET)
    # P3 is an 8x8 grid: centre (2.4, 5.6) -> own cell (2, 5), left (1, 5) as x%1 < 0.5, lower (2, 6) as
    # (8 - y)%1 < 0.5; size 2x2 cells is within anchor_t of all three P3 anchors: 3 anchors x 3 cells.
    b, a, gj, gi = indices[0]
    assert len(b) == 9 and set(a.tolist()) == {0, 1, 2} and (tcls[0] == 1).all() and (b == 0).all()
    for k in range(3):
        assert sorted(zip(gi[a == k].tolist(), gj[a == k].tolist())) == [(1, 5), (2, 5), (2, 6)]
    assert ((tbox[0][:, :2] >= -0.5) & (tbox[0][:, :2] <= 1.5)).all()
    assert torch.allclose(tbox[0][:, 2:], torch.full((9, 2), 2.0))
    assert torch.allclose(anch[0], loss.anchors[0][a])
    # On P5 (2x2 grid) the box is half a cell: too small for every P5 anchor at anchor_t = 4.
    assert len(indices[2][0]) == 0 and tbox[2].shape == (0, 4)


def test_build_targets_properties_random():
    g = torch.Generator().manual_seed(1)
    t = torch.cat((torch.randint(0, 2, (50, 1), generator=g).float(), torch.randint(0, 3, (50, 1), generator=g).float(),
                   torch.rand(50, 2, generator=g), torch.rand(50, 2, generator=g) * 0.5 + 0.01), 1)
    t[0, 2:4] = torch.tensor([1.0, 0.0])  # on the image border: cells are clamped into the grid
    loss = ComputeLoss(TinyModel(3))
    p = predictions(3)
    tcls, tbox, indices, _ = loss.build_targets(p, t)
    for i, (b, a, gj, gi) in enumerate(indices):
        ny, nx = p[i].shape[2:4]
        assert ((gi >= 0) & (gi < nx) & (gj >= 0) & (gj < ny)).all()
        assert ((tbox[i][:, :2] >= -0.5) & (tbox[i][:, :2] <= 1.5)).all()
        # at most 3 cells for each (target, anchor) pair that matched
        assert len(b) <= 3 * 3 * len(t)


def test_hopeless_aspect_ratio_matches_nothing():
    t = torch.tensor([[0, 0, 0.5, 0.5, 0.9, 0.002]])  # 450:1 box, beyond anchor_t of every anchor
    total, items = ComputeLoss(TinyModel(3))(predictions(3), t)
    assert items[0] == 0 and items[2] == 0 and items[1] > 0


def test_autobalance_and_parallel_wrapper():
    model = nn.DataParallel(TinyModel(3))  # hyp and Detect are found through the wrapper
    loss = ComputeLoss(model, autobalance=True)
    assert loss.ssi == 1
    for _ in range(3):
        assert (loss(predictions(3), ONE_TARGET)[1] > 0).all()
    assert loss.balance[1] == 1.0 and loss.balance != [4.0, 1.0, 0.4]


def test_missing_hyp_key_is_a_clear_error():
    model = TinyModel(3)
    del model.hyp["anchor_t"]
    with pytest.raises(ValueError, match="anchor_t"):
        ComputeLoss(model)


def test_gradients_reach_every_parameter_of_a_shuffle_model():
    yolo = pytest.importorskip("models.yolo")
    torch.manual_seed(0)
    model = yolo.DetectionModel("yolov5n_shuffle.yaml", nc=3).train()
    model.hyp = dict(HYP)
    targets = torch.tensor([[0, 0, 0.3, 0.6, 0.3, 0.4], [1, 2, 0.7, 0.3, 0.6, 0.5], [1, 1, 0.5, 0.5, 0.1, 0.1]])
    total, items = ComputeLoss(model)(model(torch.rand(2, 3, 64, 64)), targets)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing and (items > 0).all()
