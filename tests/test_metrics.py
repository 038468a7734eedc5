"""Validation metrics (utils/metrics.py): matching, AP, P/R at max F1, fitness, confusion matrix."""

import numpy as np
import pytest
import torch

from utils.metrics import ConfusionMatrix, ap_per_class, compute_ap, fitness, process_batch, smooth

IOUV = torch.linspace(0.5, 0.95, 10)


def test_perfect_predictions_give_yolov5_max_ap():
    # The (r=1, p=0) sentinel makes the last trapezoid (0.99..1) half-height: a perfect curve scores 0.995
    tp = np.ones((6, 10), dtype=bool)
    conf = np.linspace(0.9, 0.4, 6)
    tp_, fp, p, r, f1, ap, classes = ap_per_class(tp, conf, np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 0, 1, 1, 1]))
    np.testing.assert_allclose(ap, 0.995)
    np.testing.assert_allclose(p, 1.0)
    np.testing.assert_allclose(r, 1.0, atol=1e-9)
    assert classes.tolist() == [0, 1] and tp_.tolist() == [3, 3] and fp.tolist() == [0, 0]


def test_no_predictions_give_zero():
    tp, fp, p, r, f1, ap, classes = ap_per_class(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.array([0, 1]))
    assert ap.shape == (2, 10) and not ap.any()
    assert not p.any() and not r.any() and classes.tolist() == [0, 1]


def hand_ap() -> float:
    """AP of envelope f: 1 on [0, 1/3], 2/3 on (1/3, 2/3], 2(1-x) after, by trapezoid on x = 0:0.01:1."""
    return 0.33 + (1 + 2 / 3) / 200 + 32 * (2 / 3) / 100 + (2 / 3 + 0.66) / 200 + 0.33 ** 2


def test_hand_computed_pr_curve():
    # 3 labels; detections by conf: TP, FP, TP -> recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3
    ap, mpre, mrec = compute_ap(np.array([1 / 3, 1 / 3, 2 / 3]), np.array([1.0, 0.5, 2 / 3]))
    np.testing.assert_allclose(mpre, [1, 1, 2 / 3, 2 / 3, 0])
    assert ap == pytest.approx(hand_ap(), abs=1e-12)

    tp = np.array([[1], [1], [0]], dtype=bool)  # given out of order: ap_per_class sorts by conf first
    out = ap_per_class(tp, np.array([0.9, 0.6, 0.8]), np.zeros(3), np.zeros(3))
    assert out[5][0, 0] == pytest.approx(hand_ap(), abs=1e-12)


def test_class_without_predictions_counts_as_zero():
    tp = np.ones((2, 10), dtype=bool)
    out = ap_per_class(tp, np.array([0.9, 0.8]), np.array([0, 0]), np.array([0, 0, 3]))
    ap, classes = out[5], out[6]
    assert classes.tolist() == [0, 3]
    np.testing.assert_allclose(ap[:, 0], [0.995, 0.0])
    assert ap.mean(1).mean() == pytest.approx(0.995 / 2)


def test_predictions_of_classes_without_labels_are_ignored():
    tp = np.array([[1], [0]], dtype=bool)
    out = ap_per_class(tp, np.array([0.9, 0.95]), np.array([0, 5]), np.array([0]))
    assert out[6].tolist() == [0] and out[5][0, 0] == pytest.approx(0.995)


def test_p_r_at_max_smoothed_f1():
    # 2 labels; TP at 0.9, FP at 0.5, TP at 0.2: best mean F1 is past the second TP (r=1, p=2/3, F1=0.8)
    tp = np.array([[1], [0], [1]], dtype=bool)
    _, fp, p, r, f1, _, _ = ap_per_class(tp, np.array([0.9, 0.5, 0.2]), np.zeros(3), np.zeros(2))
    assert f1[0] == pytest.approx(0.8, abs=0.02)
    assert r[0] == pytest.approx(1.0) and p[0] == pytest.approx(2 / 3, abs=1e-6)
    assert fp.tolist() == [1.0]


def test_smooth_box_filter():
    y = np.zeros(1000)  # the curves are 1000 points; fraction 0.1 gives a 101-point window
    y[500] = 1.0
    s = smooth(y, 0.1)
    assert s.shape == y.shape
    assert s[450:551] == pytest.approx(np.full(101, 1 / 101)) and s[449] == 0 and s[551] == 0


def test_fitness_weights():
    x = np.array([[0.5, 0.6, 0.7, 0.4], [1, 1, 0, 0]])
    np.testing.assert_allclose(fitness(x), [0.1 * 0.7 + 0.9 * 0.4, 0.0])


def test_process_batch_greedy_matching():
    labels = torch.tensor([[0, 0, 0, 10, 10], [0, 0, 0, 10, 11]], dtype=torch.float32)
    dets = torch.tensor([[0, 0, 10, 6.2, 0.9, 0],   # IoU 0.62 with label 0, 0.564 with label 1
                         [0, 0, 10, 9.2, 0.8, 0],   # IoU 0.92 with label 0, 0.836 with label 1
                         [0, 0, 10, 10, 0.7, 1]])  # perfect box, wrong class
    correct = process_batch(dets, labels, IOUV)
    assert correct.dtype == torch.bool and correct.shape == (3, 10)
    # Each detection keeps its best label (label 0 for both); label 0 then goes to detection 0 (most confident)
    # while IoU 0.62 passes, leaving label 1 unmatched although detection 1 overlaps it at 0.836.
    assert correct[0].tolist() == [True] * 3 + [False] * 7
    assert correct[1].tolist() == [False] * 3 + [True] * 6 + [False]
    assert not correct[2].any()


def test_process_batch_empty_inputs():
    assert process_batch(torch.zeros(0, 6), torch.tensor([[0, 0, 0, 5, 5.0]]), IOUV).shape == (0, 10)
    assert not process_batch(torch.tensor([[0, 0, 5, 5, 0.9, 0.0]]), torch.zeros(0, 5), IOUV).any()


def test_confusion_matrix_counts():
    cm = ConfusionMatrix(nc=2)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 50, 50, 60, 60]], dtype=torch.float32)
    dets = torch.tensor([[0, 0, 10, 10, 0.9, 0],      # correct class 0
                         [20, 20, 30, 30, 0.8, 0],    # true class 1 predicted as 0
                         [80, 80, 90, 90, 0.7, 1],    # nothing there: background FP
                         [50, 50, 60, 60, 0.1, 1]])  # below conf 0.25: dropped, so label 2 is missed
    cm.process_batch(dets, labels)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 0, 1], [0, 1, 0]])
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0] and fp.tolist() == [1, 1]


def test_confusion_matrix_no_detections_and_no_matches():
    cm = ConfusionMatrix(nc=2)
    cm.process_batch(None, torch.tensor([0.0, 1.0, 1.0]))
    cm.process_batch(torch.tensor([[0, 0, 5, 5, 0.9, 1.0]]), torch.tensor([[0, 50, 50, 60, 60.0]]))
    np.testing.assert_array_equal(cm.matrix, [[0, 0, 0], [0, 0, 1], [2, 2, 0]])


def test_confusion_matrix_label_keeps_best_iou_detection():
    # Unlike process_batch (most confident wins), the confusion matrix gives a label its highest-IoU detection
    cm = ConfusionMatrix(nc=2)
    labels = torch.tensor([[1, 0, 0, 10, 10.0]])
    dets = torch.tensor([[0, 0, 10, 6.2, 0.9, 0],    # IoU 0.62, class 0, more confident
                         [0, 0, 10, 9.2, 0.8, 1]])  # IoU 0.92, class 1
    cm.process_batch(dets, labels)
    np.testing.assert_array_equal(cm.matrix, [[0, 0, 1], [0, 1, 0], [0, 0, 0]])
