"""Box conversions, clipping, letterbox rescaling and the IoU family (utils/boxes.py)."""

import math

import numpy as np
import pytest
import torch

from utils.boxes import (bbox_iou, box_iou, clip_boxes, scale_boxes, xyn2xy, xywh2xyxy, xywhn2xyxy, xyxy2xywh,
                         xyxy2xywhn)


@pytest.fixture
def xyxy():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 50
    return torch.cat((xy, xy + 1 + torch.rand(20, 2, generator=g) * 30), 1)


@pytest.mark.parametrize("lib", ["torch", "numpy"])
def test_xyxy_xywh_round_trip(xyxy, lib):
    b = xyxy if lib == "torch" else xyxy.numpy()
    back = xywh2xyxy(xyxy2xywh(b))
    assert type(back) is type(b)
    np.testing.assert_allclose(np.asarray(back), np.asarray(b), atol=1e-5)


def test_known_conversion_values():
    b = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert xyxy2xywh(b).tolist() == [[20.0, 40.0, 20.0, 40.0]]
    n = np.array([[0.5, 0.5, 0.5, 0.25]])
    np.testing.assert_allclose(xywhn2xyxy(n, w=100, h=200, padw=3, padh=4), [[28.0, 79.0, 78.0, 129.0]])
    np.testing.assert_allclose(xyn2xy(np.array([[0.5, 0.25]]), w=100, h=200, padw=1, padh=2), [[51.0, 52.0]])


@pytest.mark.parametrize("lib", ["torch", "numpy"])
def test_normalised_round_trip(xyxy, lib):
    b = xyxy if lib == "torch" else xyxy.numpy()
    n = xyxy2xywhn(b, w=100, h=90)
    back = xywhn2xyxy(n, w=100, h=90)
    np.testing.assert_allclose(np.asarray(back), np.asarray(b), atol=1e-4)


def test_xyxy2xywhn_clip():
    b = np.array([[-5.0, 10.0, 120.0, 50.0]])
    n = xyxy2xywhn(b, w=100, h=100, clip=True)
    np.testing.assert_allclose(n, [[0.5, 0.3, 1.0, 0.4]])


@pytest.mark.parametrize("lib", ["torch", "numpy"])
def test_clip_boxes_in_place(lib):
    b = torch.tensor([[-3.0, -1.0, 70.0, 40.0]])
    b = b if lib == "torch" else b.numpy()
    out = clip_boxes(b, (32, 64))
    assert out is b
    np.testing.assert_allclose(np.asarray(b), [[0.0, 0.0, 64.0, 32.0]])


def test_scale_boxes_with_ratio_pad():
    # original 100x200 (h, w) letterboxed to 64x64: gain 0.32, padh (64 - 32) / 2 = 16
    ratio_pad = ((0.32, 0.32), (0.0, 16.0))
    b = torch.tensor([[0.0, 16.0, 32.0, 48.0], [-5.0, 0.0, 70.0, 64.0]])
    scale_boxes((64, 64), b, (100, 200), ratio_pad)
    np.testing.assert_allclose(b.numpy(), [[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 200.0, 100.0]], atol=1e-4)


def test_scale_boxes_recomputes_gain_and_pad():
    b = np.array([[0.0, 16.0, 32.0, 48.0]])
    scale_boxes((64, 64), b, (100, 200))
    np.testing.assert_allclose(b, [[0.0, 0.0, 100.0, 100.0]], atol=1e-4)


def test_scale_boxes_uses_first_gain_only():
    # YOLOv5 convention: ratio_pad[0][0] is the gain even if the second one differs
    b = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    scale_boxes((64, 64), b, (640, 640), ((0.1, 0.5), (0.0, 0.0)))
    np.testing.assert_allclose(b.numpy(), [[100.0, 100.0, 200.0, 200.0]])


def test_box_iou_matrix():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0], [30.0, 30.0, 40.0, 40.0]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou.numpy(), [[1, 25 / 175, 0], [0.25, 0.25, 0]], atol=1e-6)


def test_bbox_iou_known_values_xyxy():
    a = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    b = torch.tensor([[15.0, 15.0, 25.0, 25.0]])
    iou = 25 / 175
    assert bbox_iou(a, b, xywh=False).item() == pytest.approx(iou, abs=1e-6)
    assert bbox_iou(a, b, xywh=False, GIoU=True).item() == pytest.approx(iou - 50 / 225, abs=1e-6)
    # squares: equal aspect ratios, so v = 0 and CIoU == DIoU = IoU - rho^2 / c^2 = IoU - 50 / 450
    assert bbox_iou(a, b, xywh=False, DIoU=True).item() == pytest.approx(iou - 50 / 450, abs=1e-6)
    assert bbox_iou(a, b, xywh=False, CIoU=True).item() == pytest.approx(iou - 50 / 450, abs=1e-6)


def test_bbox_iou_ciou_aspect_term():
    # same centre: rho = 0. Box 1 is 4x2, box 2 is 2x2 (xywh): IoU = 4 / 8 = 0.5
    a = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    v = 4 / math.pi ** 2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    alpha = v / (v - 0.5 + 1)
    assert bbox_iou(a, b, CIoU=True).item() == pytest.approx(0.5 - alpha * v, abs=1e-6)
    assert bbox_iou(a, b).item() == pytest.approx(0.5, abs=1e-6)


def test_bbox_iou_ciou_alpha_has_no_gradient():
    a = torch.tensor([[0.0, 0.0, 4.0, 2.0]], requires_grad=True)
    b = torch.tensor([[0.3, 0.1, 2.0, 3.0]])
    bbox_iou(a, b, CIoU=True).sum().backward()
    # gradient through alpha would change this; compare against an explicit constant-alpha computation
    a2 = a.detach().clone().requires_grad_(True)
    iou = bbox_iou(a2, b)
    v = 4 / math.pi ** 2 * (torch.atan(b[:, 2:3] / b[:, 3:4]) - torch.atan(a2[:, 2:3] / a2[:, 3:4])) ** 2
    alpha = (v / (v - iou + 1 + 1e-7)).detach()
    rho_c = bbox_iou(a2, b, DIoU=True) - iou
    (iou + rho_c - alpha * v).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad)


def test_bbox_iou_broadcasts_and_identical_boxes():
    a = torch.tensor([[5.0, 5.0, 4.0, 4.0]])
    b = torch.tensor([[5.0, 5.0, 4.0, 4.0], [50.0, 50.0, 4.0, 4.0]])
    out = bbox_iou(a, b, CIoU=True)
    assert out.shape == (2, 1)
    assert out[0].item() == pytest.approx(1.0, abs=1e-6)
    assert out[1].item() < 0
