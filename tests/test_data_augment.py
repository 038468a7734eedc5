"""Augmentations: letterbox geometry, perspective/box candidate properties, HSV, mixup, copy-paste, hyp files."""

import random

import numpy as np
import pytest
import yaml

from utils.augmentations import (augment_hsv, box_candidates, copy_paste, letterbox, mixup, random_perspective)
from utils.files import ROOT


def _im(h, w):
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ letterbox
def test_letterbox_square_target_pads_evenly():
    out, ratio, pad = letterbox(_im(480, 640), 640, auto=False)
    assert out.shape == (640, 640, 3) and ratio == (1.0, 1.0) and pad == (0.0, 80.0)
    assert (out[:80] == 114).all() and (out[560:] == 114).all()


def test_letterbox_auto_pads_to_stride_multiple():
    out, ratio, pad = letterbox(_im(300, 400), 416, auto=True, stride=32)
    assert ratio == (1.04, 1.04) and out.shape == (320, 416, 3) and pad == (0.0, 4.0)
    for h, w in [(123, 457), (640, 17), (333, 333), (720, 1280)]:
        out = letterbox(_im(h, w), 640, auto=True, stride=32)[0]
        assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0 and max(out.shape[:2]) == 640


def test_letterbox_odd_padding_goes_bottom_right():
    out, _, (dw, dh) = letterbox(_im(100, 95), (100, 100), auto=False)  # 5 px of width padding
    assert dw == 2.5 and out.shape == (100, 100, 3)
    assert (out[:, :2] == 114).all() and (out[:, -3:] == 114).all() and not (out[:, 2] == 114).all()


def test_letterbox_scaleup_false_never_enlarges():
    out, ratio, pad = letterbox(_im(100, 200), 640, auto=False, scaleup=False)
    assert ratio == (1.0, 1.0) and out.shape == (640, 640, 3) and pad == (220.0, 270.0)


def test_letterbox_scalefill_stretches():
    out, ratio, pad = letterbox(_im(100, 200), (320, 320), auto=False, scaleFill=True)
    assert out.shape == (320, 320, 3) and ratio == (1.6, 3.2) and pad == (0.0, 0.0)


def test_letterbox_rectangular_target_and_rounding():
    out, ratio, pad = letterbox(_im(720, 1280), (384, 640), auto=False)
    assert out.shape == (384, 640, 3) and ratio == (0.5, 0.5) and pad == (0.0, 12.0)
    out, ratio, _ = letterbox(_im(333, 500), 640, auto=False)
    assert ratio[0] == 1.28 and out.shape == (640, 640, 3)  # unpadded 640 x round(426.24) = 426


# ------------------------------------------------------------------ geometry
def test_box_candidates_rules():
    before = np.array([[0, 0, 100, 100]] * 4, float).T
    after = np.array([[0, 0, 50, 50], [0, 0, 2, 50], [0, 0, 30, 30], [0, 0, 99, 0.5]], float).T
    assert box_candidates(before, after).tolist() == [True, False, False, False]  # area 0.09 < 0.1 drops #3


@pytest.mark.parametrize("seed", range(5))
def test_random_perspective_keeps_boxes_inside_with_positive_size(seed):
    random.seed(seed)
    rng = np.random.default_rng(seed)
    im = _im(256, 256)
    n = 40
    xy = rng.uniform(-20, 250, (n, 2))
    wh = rng.uniform(1, 120, (n, 2))
    targets = np.concatenate((rng.integers(0, 5, (n, 1)), xy, xy + wh), 1)
    out, t = random_perspective(im, targets, degrees=30, translate=0.2, scale=0.6, shear=10, perspective=0.001,
                                border=(-64, -64))
    assert out.shape == (128, 128, 3)
    assert len(t) <= n
    if len(t):
        assert (t[:, [1, 3]] >= 0).all() and (t[:, [1, 3]] <= 128).all()
        assert (t[:, [2, 4]] >= 0).all() and (t[:, [2, 4]] <= 128).all()
        assert (t[:, 3] - t[:, 1] > 2).all() and (t[:, 4] - t[:, 2] > 2).all()


def test_random_perspective_identity_is_a_no_op():
    random.seed(0)
    im = _im(64, 64)
    t = np.array([[1, 10, 10, 30, 40]], float)
    out, t2 = random_perspective(im, t.copy(), degrees=0, translate=0, scale=0, shear=0, perspective=0)
    assert (out == im).all()
    np.testing.assert_allclose(t2, t)


def test_random_perspective_uses_polygons_when_given():
    random.seed(1)
    tri = np.array([[10.0, 10], [60, 10], [10, 60]])
    t = np.array([[0, 10, 10, 60, 60]], float)
    _, t2 = random_perspective(_im(64, 64), t.copy(), segments=[tri], degrees=45, translate=0, scale=0, shear=0)
    assert len(t2) == 1 and (t2[0, 1:] >= 0).all() and (t2[0, 1:] <= 64).all()


# ------------------------------------------------------------------ pixels
def test_augment_hsv_in_place_and_zero_gain_no_op():
    np.random.seed(0)
    im = _im(32, 32)
    same = im.copy()
    augment_hsv(same, 0, 0, 0)
    assert (same == im).all()
    changed = im.copy()
    augment_hsv(changed, 0.5, 0.7, 0.4)
    assert changed.dtype == np.uint8 and changed.shape == im.shape and not (changed == im).all()


def test_mixup_blends_and_concatenates():
    np.random.seed(0)
    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 200, np.uint8)
    out, labels = mixup(a, np.ones((2, 5)), b, np.zeros((3, 5)))
    assert out.dtype == np.uint8 and 60 < out.mean() < 140 and labels.shape == (5, 5)


def test_copy_paste_adds_mirrored_object():
    random.seed(0)
    im = np.zeros((64, 64, 3), np.uint8)
    im[10:20, 5:15] = 255
    seg = np.array([[5.0, 10], [15, 10], [15, 20], [5, 20]])
    labels = np.array([[3, 5, 10, 15, 20]], float)
    out, labels2, segs = copy_paste(im, labels, [seg], p=1.0)
    assert len(labels2) == 2 and len(segs) == 2 and labels2[1, 0] == 3
    np.testing.assert_allclose(labels2[1, 1:], [49, 10, 59, 20])
    assert out[15, 50:58].min() == 255  # the mirrored copy is painted


# ------------------------------------------------------------------ hyp files
def test_hyp_files_have_yolov5_keys_and_values():
    low = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())
    med = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-med.yaml").read_text())
    high = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-high.yaml").read_text())
    keys = ("lr0 lrf momentum weight_decay warmup_epochs warmup_momentum warmup_bias_lr box cls cls_pw obj obj_pw "
            "iou_t anchor_t fl_gamma hsv_h hsv_s hsv_v degrees translate scale shear perspective flipud fliplr "
            "mosaic mixup copy_paste").split()
    assert list(low) == list(med) == list(high) == keys
    got = (low["lrf"], low["cls"], low["obj"], low["scale"], low["mixup"], low["iou_t"])
    assert got == (0.01, 0.5, 1.0, 0.5, 0.0, 0.2)
    diff = {k: (med[k], high[k]) for k in keys if med[k] != low[k] or high[k] != low[k]}
    assert diff == {"lrf": (0.1, 0.1), "cls": (0.3, 0.3), "obj": (0.7, 0.7), "scale": (0.9, 0.9),
                    "mixup": (0.1, 0.1), "copy_paste": (0.0, 0.1)}
    for f in ROOT.glob("data/hyps/hyp.scratch-*.yaml"):
        rows = [x for x in f.read_text().splitlines() if x and not x.startswith("#")]
        assert all("# " in x for x in rows), f  # one comment per key
