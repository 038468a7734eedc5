"""Detection metrics as YOLOv5 v7.0 computes them: TP matching, per-class AP, P/R at max F1, fitness, confusion."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from utils.boxes import box_iou
from utils.logger import LOGGER

FITNESS_WEIGHTS = np.array([0.0, 0.0, 0.1, 0.9])  # applied to [P, R, mAP50, mAP50-95]


def fitness(x: np.ndarray) -> np.ndarray:
    """Model fitness (n,) from metric rows (n, >=4) [P, R, mAP50, mAP50-95, ...]: 0.1*mAP50 + 0.9*mAP50-95."""
    return (np.asarray(x)[:, :4] * FITNESS_WEIGHTS).sum(1)


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter y (n,) with a window of about f*n*2 points (odd), padding the ends with the edge values."""
    nf = round(len(y) * f * 2) // 2 + 1
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def _greedy_matches(iou: np.ndarray, hit: np.ndarray, label_best_iou: bool = False) -> np.ndarray:
    """Rows [label, detection, iou] where hit (m, n) is True, one per detection then one per label.

    Among pairs sorted by IoU descending, each detection keeps its best label. Each label then keeps the lowest
    detection index (detections arrive sorted by confidence, so the most confident), or with label_best_iou its
    highest-IoU detection (the confusion matrix rule).
    """
    li, di = np.nonzero(hit)
    matches = np.stack((li, di, iou[li, di]), 1).astype(np.float32)  # float32 like upstream: same tie order
    if len(matches) > 1:
        matches = matches[matches[:, 2].argsort()[::-1]]
        matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
        if label_best_iou:
            matches = matches[matches[:, 2].argsort()[::-1]]
        matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
    return matches


def process_batch(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Mark each detection correct or not at each IoU threshold.

    detections (n, 6) [x1, y1, x2, y2, conf, cls]; labels (m, 5) [cls, x1, y1, x2, y2], same pixel space;
    iouv (t,) thresholds. Returns bool (n, t) on iouv's device. Each threshold is matched independently.
    """
    correct = np.zeros((detections.shape[0], iouv.shape[0]), dtype=bool)
    if len(detections) and len(labels):
        iou = box_iou(labels[:, 1:], detections[:, :4]).cpu().numpy()  # (m, n)
        same_class = (labels[:, 0:1] == detections[:, 5]).cpu().numpy()
        for i, t in enumerate(iouv.cpu().numpy()):
            matches = _greedy_matches(iou, (iou >= t) & same_class)
            correct[matches[:, 1].astype(int), i] = True
    return torch.tensor(correct, dtype=torch.bool, device=iouv.device)


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple:
    """Average precision of one PR curve (recall (n,) increasing, precision (n,)).

    Adds sentinels (r=0, p=1) and (r=1, p=0), takes the monotone precision envelope, samples it at 101 recall
    points 0:0.01:1 and integrates with the trapezoid rule. Returns (ap, envelope precision, recall) curves.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    y = np.interp(x, mrec, mpre)
    ap = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))  # trapezoid rule (np.trapezoid is numpy >= 2 only)
    return ap, mpre, mrec


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                 eps: float = 1e-16, curves: Optional[dict] = None) -> tuple:
    """Per-class AP at each IoU threshold and P/R/F1 at the confidence maximising the smoothed mean F1.

    tp (n, t) bool per detection and threshold; conf (n,); pred_cls (n,); target_cls (m,) label classes.
    Classes are the unique target classes; one without detections keeps AP 0. Returns (tp, fp, p, r, f1 (k,),
    ap (k, t), classes (k,) int). A `curves` dict receives what utils.plots.plot_ap_curves draws: the confidence
    grid px (1000,), PR curves py (k, 1000) at IoU 0.5, p/r/f1 (k, 1000) per confidence, ap and classes.
    """
    i = np.argsort(-conf)
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]
    unique_classes, nt = np.unique(target_cls, return_counts=True)
    nc = unique_classes.shape[0]
    px, py = np.linspace(0, 1, 1000), []  # py: per-class PR curves at mAP50 for the plot
    ap, p, r = np.zeros((nc, tp.shape[1])), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(unique_classes):
        i = pred_cls == c
        n_l, n_p = nt[ci], i.sum()
        if n_p == 0 or n_l == 0:
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_l + eps)
        precision = tpc / (tpc + fpc)
        r[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)  # -x because conf decreases
        p[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if curves is not None and j == 0:
                py.append(np.interp(px, mrec, mpre))

    f1 = 2 * p * r / (p + r + eps)
    if curves is not None:
        curves.update(px=px, py=np.array(py).reshape(-1, len(px)), p=p, r=r, f1=f1, ap=ap, classes=unique_classes)
    i = smooth(f1.mean(0), 0.1).argmax() if nc else 0
    p, r, f1 = p[:, i], r[:, i], f1[:, i]
    tp = (r * nt).round()
    fp = (tp / (p + eps) - tp).round()
    return tp, fp, p, r, f1, ap, unique_classes.astype(int)


class ConfusionMatrix:
    """Counts of (predicted class, true class) pairs; row/column nc is background.

    matrix[p, t]: detections of class p matched to a label of class t. Column nc holds unmatched detections
    (false positives); row nc holds missed labels (false negatives).
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc = nc
        self.conf = conf
        self.iou_thres = iou_thres

    def process_batch(self, detections, labels) -> None:
        """Add one image: detections (n, 6) [x1, y1, x2, y2, conf, cls] or None; labels (m, 5) [cls, xyxy].

        With detections None, labels may be just the (m,) classes: every label counts as missed.
        """
        if detections is None:
            for gc in labels.int().reshape(-1).tolist():
                self.matrix[self.nc, gc] += 1
            return
        detections = detections[detections[:, 4] > self.conf]
        gt_classes = labels[:, 0].int().tolist()
        det_classes = detections[:, 5].int().tolist()
        iou = box_iou(labels[:, 1:], detections[:, :4]).cpu().numpy() if len(labels) and len(detections) else \
            np.zeros((len(labels), len(detections)), dtype=np.float32)
        # Ignore class here: a class mix-up is an off-diagonal count, not a miss
        matches = _greedy_matches(iou, iou > self.iou_thres, label_best_iou=True)
        m0, m1 = matches[:, 0].astype(int), matches[:, 1].astype(int)
        for i, gc in enumerate(gt_classes):
            j = m0 == i
            if j.sum() == 1:
                self.matrix[det_classes[m1[j][0]], gc] += 1
            else:
                self.matrix[self.nc, gc] += 1
        for i, dc in enumerate(det_classes):
            if not (m1 == i).any():  # counted even when nothing in the image matched (upstream skips those)
                self.matrix[dc, self.nc] += 1

    def tp_fp(self) -> tuple:
        """True and false positives per class (nc,), from the diagonal and the row sums."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]

    def print(self) -> None:
        """Log the raw counts, one matrix row per line."""
        for row in self.matrix:
            LOGGER.info(" ".join(f"{v:g}" for v in row))
