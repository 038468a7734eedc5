"""AutoAnchor: BPR check keeps good anchors, k-means + evolution replaces bad ones, anchor order follows strides."""

import numpy as np
import torch
import torch.nn as nn

from utils.autoanchor import check_anchor_order, check_anchors, kmean_anchors

ANCHORS_PX = np.array([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
                      dtype=np.float32).reshape(3, 3, 2)
STRIDES = torch.tensor([8.0, 16.0, 32.0])


class FakeDataset:
    """What AutoAnchor reads: .shapes (N, 2) image (w, h) and .labels [(n, 5) cls, x, y, w, h normalised]."""

    def __init__(self, wh_px: np.ndarray, n_img: int = 40, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.shapes = np.full((n_img, 2), 640)
        self.labels = []
        for i in range(n_img):
            k = wh_px[rng.integers(0, len(wh_px), 4)] * rng.uniform(0.85, 1.15, (4, 2)) / 640
            self.labels.append(np.concatenate((np.zeros((4, 1)), rng.random((4, 2)), k), 1).astype(np.float32))


class FakeDetect(nn.Module):
    def __init__(self, anchors_px):
        super().__init__()
        self.stride = STRIDES.clone()
        self.register_buffer("anchors", torch.tensor(anchors_px).float().view(3, 3, 2) / STRIDES.view(-1, 1, 1))


class FakeModel(nn.Module):
    def __init__(self, anchors_px):
        super().__init__()
        self.model = nn.Sequential(FakeDetect(anchors_px))


def bpr(anchors_px, dataset, thr=4.0):
    wh = np.concatenate([lb[:, 3:5] * 640 for lb in dataset.labels])
    r = wh[:, None] / np.asarray(anchors_px).reshape(1, -1, 2)
    best = np.minimum(r, 1 / r).min(2).max(1)
    return float((best > 1 / thr).mean())


def test_good_anchors_are_kept():
    ds = FakeDataset(ANCHORS_PX.reshape(-1, 2))
    model = FakeModel(ANCHORS_PX)
    before = model.model[-1].anchors.clone()
    check_anchors(ds, model, thr=4.0, imgsz=640, seed=0)
    assert torch.equal(model.model[-1].anchors, before)


def test_unseeded_check_draws_the_size_jitter_from_numpys_global_stream():
    """As in YOLOv5, the unseeded check takes exactly one uniform(0.9, 1.1) draw per image from numpy's global
    state, so the augmentations after it in train.py get the random numbers they get in YOLOv5 at that seed."""
    ds = FakeDataset(ANCHORS_PX.reshape(-1, 2))
    np.random.seed(5)
    np.random.uniform(0.9, 1.1, size=(len(ds.labels), 1))
    expected_next = np.random.uniform(-1, 1, 3)
    np.random.seed(5)
    check_anchors(ds, FakeModel(ANCHORS_PX), thr=4.0, imgsz=640)
    assert np.array_equal(np.random.uniform(-1, 1, 3), expected_next)


def test_bad_anchors_are_replaced_by_better_ones():
    ds = FakeDataset(ANCHORS_PX.reshape(-1, 2))
    tiny = np.full((3, 3, 2), 1.5, dtype=np.float32)
    model = FakeModel(tiny)
    check_anchors(ds, model, thr=4.0, imgsz=640, seed=0)
    m = model.model[-1]
    new_px = (m.anchors * m.stride.view(-1, 1, 1)).numpy()
    assert bpr(tiny, ds) == 0.0 and bpr(new_px, ds) > 0.98
    area = new_px.prod(-1).mean(-1)
    assert area[0] < area[1] < area[2]  # small anchors on the small stride; stored in grid units


def test_kmean_anchors_improves_fitness_and_is_seeded():
    ds = FakeDataset(ANCHORS_PX.reshape(-1, 2) * np.array([1.7, 0.6], dtype=np.float32))
    k = kmean_anchors(ds, n=9, img_size=640, thr=4.0, gen=50, verbose=False, seed=3)
    assert k.shape == (9, 2) and k.dtype == np.float32
    assert (k >= 2.0).all() and (np.diff(k.prod(1)) >= 0).all()  # sorted by area
    assert bpr(k, ds) > 0.98
    assert np.array_equal(k, kmean_anchors(ds, n=9, img_size=640, thr=4.0, gen=50, verbose=False, seed=3))


def test_kmean_anchors_random_fallback_with_few_boxes():
    ds = FakeDataset(np.array([[40.0, 60.0]]), n_img=1)  # 4 boxes for 9 anchors: k-means cannot run
    k = kmean_anchors(ds, n=9, img_size=640, gen=20, verbose=False, seed=0)
    assert k.shape == (9, 2) and np.isfinite(k).all()


def test_no_labels_keeps_anchors():
    ds = FakeDataset(ANCHORS_PX.reshape(-1, 2), n_img=3)
    ds.labels = [np.zeros((0, 5), np.float32) for _ in ds.labels]
    model = FakeModel(np.full((3, 3, 2), 1.5, dtype=np.float32))
    before = model.model[-1].anchors.clone()
    check_anchors(ds, model, seed=0)
    assert torch.equal(model.model[-1].anchors, before)


def test_check_anchor_order_flips_reversed_levels():
    m = FakeDetect(ANCHORS_PX[::-1].copy())  # largest anchors on the smallest stride
    expected = m.anchors.flip(0).clone()
    check_anchor_order(m)
    assert torch.equal(m.anchors, expected)
    check_anchor_order(m)  # already in order: unchanged
    assert torch.equal(m.anchors, expected)
