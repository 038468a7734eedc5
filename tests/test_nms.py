"""non_max_suppression (utils/nms.py): thresholds, class handling, limits, input forms."""

import logging

import pytest
import torch

import utils.nms as nms_module
from utils.nms import non_max_suppression


def rows(*boxes, nc=3):
    """Prediction (1, n, 5 + nc) from tuples (x, y, w, h, obj, cls, cls_score)."""
    out = torch.zeros(1, len(boxes), 5 + nc)
    for i, (x, y, w, h, obj, c, s) in enumerate(boxes):
        out[0, i, :5] = torch.tensor([x, y, w, h, obj])
        out[0, i, 5 + c] = s
    return out


def test_zero_boxes():
    out = non_max_suppression(torch.zeros(2, 0, 8))
    assert len(out) == 2 and all(o.shape == (0, 6) for o in out)


def test_all_below_threshold():
    pred = rows((10, 10, 4, 4, 0.2, 0, 1.0), (20, 20, 4, 4, 0.9, 1, 0.1))  # obj too low / obj*cls = 0.09 too low
    assert non_max_suppression(pred, conf_thres=0.25)[0].shape == (0, 6)


def test_output_format_and_conf_is_obj_times_cls():
    pred = rows((10, 20, 4, 6, 0.8, 2, 0.5))
    out = non_max_suppression(pred, conf_thres=0.25)[0]
    torch.testing.assert_close(out, torch.tensor([[8.0, 17.0, 12.0, 23.0, 0.4, 2.0]]))


def test_obj_gate_applies_before_conf():
    # obj 0.3 passes conf_thres 0.25 but obj*cls = 0.3 * 0.9 = 0.27 also passes; obj 0.2 is dropped even with cls 1
    pred = rows((10, 10, 4, 4, 0.3, 0, 0.9), (40, 40, 4, 4, 0.2, 0, 1.0))
    out = non_max_suppression(pred, conf_thres=0.25)[0]
    assert out.shape[0] == 1 and out[0, 4].item() == pytest.approx(0.27)


def test_overlapping_boxes_of_different_classes_survive_unless_agnostic():
    pred = rows((10, 10, 8, 8, 0.9, 0, 0.9), (10.5, 10, 8, 8, 0.9, 1, 0.8))
    assert non_max_suppression(pred)[0].shape[0] == 2
    out = non_max_suppression(pred, agnostic=True)[0]
    assert out.shape[0] == 1 and out[0, 5].item() == 0


def test_same_class_overlap_suppressed_and_sorted():
    pred = rows((10, 10, 8, 8, 0.9, 0, 0.6), (10.5, 10, 8, 8, 0.9, 0, 0.9), (40, 40, 8, 8, 0.9, 0, 0.7))
    out = non_max_suppression(pred)[0]
    assert out[:, 4].tolist() == pytest.approx([0.81, 0.63])


def test_max_det_truncation():
    pred = rows(*[(10 + 20 * i, 10, 8, 8, 0.9, 0, 0.5 + 0.01 * i) for i in range(10)])
    out = non_max_suppression(pred, max_det=3)[0]
    assert out.shape[0] == 3
    assert out[0, 4].item() == pytest.approx(0.9 * 0.59)  # the most confident are kept


def test_multi_label():
    pred = rows((10, 10, 8, 8, 1.0, 0, 0.9))
    pred[0, 0, 6] = 0.6  # class 1 also above threshold
    assert non_max_suppression(pred)[0].shape[0] == 1
    out = non_max_suppression(pred, multi_label=True)[0]
    assert sorted(out[:, 5].tolist()) == [0.0, 1.0]


def test_multi_label_ignored_for_single_class():
    pred = rows((10, 10, 8, 8, 1.0, 0, 0.9), nc=1)
    assert non_max_suppression(pred, multi_label=True)[0].shape[0] == 1


def test_classes_filter():
    pred = rows((10, 10, 8, 8, 0.9, 0, 0.9), (40, 40, 8, 8, 0.9, 2, 0.9))
    out = non_max_suppression(pred, classes=[2])[0]
    assert out[:, 5].tolist() == [2.0]


def test_eval_tuple_input_and_batch():
    pred = torch.cat((rows((10, 10, 8, 8, 0.9, 0, 0.9)), rows((30, 30, 8, 8, 0.9, 1, 0.9))), 0)
    out = non_max_suppression((pred, [torch.zeros(1)]))
    assert [o[:, 5].tolist() for o in out] == [[0.0], [1.0]]


def test_apriori_labels_are_added():
    pred = torch.zeros(1, 0, 8)
    labels = [torch.tensor([[1.0, 20.0, 20.0, 10.0, 10.0]])]  # cls, xywh pixels
    out = non_max_suppression(pred, labels=labels)[0]
    torch.testing.assert_close(out, torch.tensor([[15.0, 15.0, 25.0, 25.0, 1.0, 1.0]]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    pred = rows((10, 10, 8, 8, 0.9, 0, 0.9), (10.5, 10, 8, 8, 0.9, 0, 0.8)).to(dtype)
    out = non_max_suppression(pred)[0]
    assert out.shape == (1, 6) and out.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_predictions_keep_what_float32_keeps(dtype):
    """NMS separates classes by offsetting boxes by class * MAX_WH (53,760 px for class 7), where fp16 steps by
    32 px and bf16 by 256: offset in those dtypes, overlapping boxes of the high classes survive as duplicates (on
    CUDA, val.py --half lost 0.06 mAP50 that way). Every value here is exact in all three dtypes, so the kept boxes
    must be the same."""
    g = torch.Generator().manual_seed(0)
    n, nc = 100, 8
    pred = torch.zeros(1, n, 5 + nc)
    pred[0, :, :2] = torch.randint(100, 160, (n, 2), generator=g).float()  # a crowd of small boxes
    pred[0, :, 2:4] = torch.randint(5, 15, (n, 2), generator=g).float() * 2
    pred[0, :, 4] = 1.0
    cls = torch.randint(0, nc, (n,), generator=g)
    pred[0, torch.arange(n), 5 + cls] = 0.5 + torch.randperm(n, generator=g).float() / 256  # distinct scores
    ref = non_max_suppression(pred, 0.25, 0.45)[0]
    low = non_max_suppression(pred.to(dtype), 0.25, 0.45)[0]
    assert 5 < len(ref) < n and (ref[:, 5] >= 5).any()  # suppression happened, also among the high classes
    assert low.dtype == dtype and torch.equal(low.float(), ref)


@pytest.mark.gpu
def test_cuda():
    pred = rows((10, 10, 8, 8, 0.9, 0, 0.9), (10.5, 10, 8, 8, 0.9, 1, 0.8)).cuda().half()
    out = non_max_suppression(pred)[0]
    assert out.is_cuda and out.shape == (2, 6)


def test_time_limit_warns_and_returns(monkeypatch, caplog):
    clock = iter(range(0, 1000, 10))  # every call to time.time() advances 10 s
    monkeypatch.setattr(nms_module.time, "time", lambda: float(next(clock)))
    pred = torch.cat([rows((10, 10, 8, 8, 0.9, 0, 0.9))] * 3, 0)
    monkeypatch.setattr(logging.getLogger("yolov5"), "propagate", True)  # let caplog see it
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        out = non_max_suppression(pred)
    assert "time limit" in caplog.text
    assert [o.shape[0] for o in out] == [1, 0, 0]


@pytest.mark.parametrize("kwargs", [{"conf_thres": 1.5}, {"iou_thres": -0.1}])
def test_bad_thresholds_raise(kwargs):
    with pytest.raises(ValueError, match="thres"):
        non_max_suppression(torch.zeros(1, 0, 8), **kwargs)


def crowded(n=6300, nc=8, bs=2, seed=0, levels=0):
    """Untrained-detector-like output at 320 px: n boxes all over the image with scores spread down to ~0.
    levels > 0 rounds obj and cls scores to that many steps, so that many candidates tie."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(bs, n, 5 + nc, generator=g)
    p[..., :2] *= 320
    p[..., 2:4] = p[..., 2:4] * 60 + 4
    if levels:
        p[..., 4:] = (p[..., 4:] * levels).round() / levels
    return p


@pytest.mark.parametrize("max_det,levels,iou", [(300, 0, 0.6), (300, 8, 0.6), (5, 0, 0.45), (4000, 0, 0.6),
                                                (300, 0, 0.05)])
def test_prefix_nms_equals_full_nms(monkeypatch, max_det, levels, iou):
    """The prefix search returns what torchvision NMS over every candidate returns, cut at max_det: many or few
    kept boxes, tied scores, a max_det above what survives, and a threshold so low that few boxes survive."""
    monkeypatch.setattr(nms_module.time, "time", lambda: 0.0)  # no time limit: the full run is slow
    pred = crowded(levels=levels)
    fast = non_max_suppression(pred.clone(), 0.001, iou, multi_label=True, max_det=max_det)
    monkeypatch.setattr(nms_module, "_first_kept", lambda b, s, t, m: nms_module._nms_indices(b, s, t)[:m])
    full = non_max_suppression(pred.clone(), 0.001, iou, multi_label=True, max_det=max_det)
    for a, b in zip(fast, full):
        assert a.shape[0] > 0 and torch.equal(a, b)


def test_prefix_nms_looks_at_few_candidates(monkeypatch):
    """With thousands of candidates and 300 kept, NMS runs on a prefix, not on all of them."""
    sizes = []
    real = nms_module._nms_indices
    monkeypatch.setattr(nms_module, "_nms_indices", lambda b, s, t: sizes.append(len(b)) or real(b, s, t))
    pred = crowded(bs=1)
    candidates = (pred[0, :, 5:] * pred[0, :, 4:5] > 0.001).sum()
    out = non_max_suppression(pred, 0.001, 0.6, multi_label=True, max_det=300)[0]
    assert out.shape[0] == 300
    assert max(sizes) < 10000 < candidates
