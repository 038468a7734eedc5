"""Non-maximum suppression of decoded detector output, matching YOLOv5 v7.0 (conf = obj * cls, class offsets)."""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch
import torchvision

from utils.boxes import xywh2xyxy
from utils.checks import check_thresholds
from utils.logger import LOGGER

MAX_WH = 7680  # per-class box offset in pixels: boxes of different classes can never overlap
MAX_NMS = 30000  # most candidates handed to torchvision.ops.nms per image


def _append_apriori(x: torch.Tensor, lb: torch.Tensor, nc: int, nm: int) -> torch.Tensor:
    """Append labels lb (n, 5) [cls, x, y, w, h] pixels as obj=1, cls=1 candidates (val --save-hybrid)."""
    v = torch.zeros((len(lb), nc + nm + 5), device=x.device, dtype=x.dtype)
    v[:, :4] = lb[:, 1:5]
    v[:, 4] = 1.0
    v[torch.arange(len(lb), device=x.device), lb[:, 0].long() + 5] = 1.0
    return torch.cat((x, v), 0)


def _candidates(x: torch.Tensor, nc: int, conf_thres: float, multi_label: bool) -> torch.Tensor:
    """Turn rows (n, 5+nc+nm) [xywh, obj, cls..., masks...] into (k, 6+nm) [xyxy, conf, cls, masks...]."""
    mi = 5 + nc  # first mask column
    x[:, 5:] *= x[:, 4:5]  # conf = obj * cls (mask coefficients are scaled too, as upstream does)
    box = xywh2xyxy(x[:, :4])
    mask = x[:, mi:]
    if multi_label:  # one row per (box, class) pair above threshold
        i, j = (x[:, 5:mi] > conf_thres).nonzero(as_tuple=False).T
        return torch.cat((box[i], x[i, 5 + j, None], j[:, None].to(x.dtype), mask[i]), 1)
    conf, j = x[:, 5:mi].max(1, keepdim=True)
    return torch.cat((box, conf, j.to(x.dtype), mask), 1)[conf.view(-1) > conf_thres]


def _nms_indices(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """torchvision NMS of float32 or float64 boxes (non_max_suppression widens fp16 and bf16 before the offset)."""
    return torchvision.ops.nms(boxes, scores, iou_thres)


def _first_kept(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, max_det: int) -> torch.Tensor:
    """The first max_det indices that NMS over all of boxes keeps, with boxes sorted by descending score.

    Greedy NMS decides each box by the higher-scored boxes alone, so running it on a prefix of the sorted list
    gives exactly the full run's decisions for that prefix. Start with a prefix a few times max_det long and grow
    it only while it keeps fewer than max_det boxes: an untrained model's thousands of low-confidence candidates
    (validation runs at conf 0.001) then cost a fraction of the pairwise IoUs, and the time limit is rarely hit.
    A prefix never ends inside a run of equal scores, so ties are ordered as in the full run."""
    n = boxes.shape[0]
    k = min(n, max(1, 4 * max_det))
    while True:
        if k < n:  # extend over scores equal to the last one taken
            k = int((scores >= scores[k - 1]).sum())
        keep = _nms_indices(boxes[:k], scores[:k], iou_thres)
        if len(keep) >= max_det or k >= n:
            return keep[:max_det]
        k = min(n, 4 * k)


def non_max_suppression(prediction, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        classes: Optional[Sequence[int]] = None, agnostic: bool = False,
                        multi_label: bool = False, labels=(), max_det: int = 300, nm: int = 0) -> list:
    """Suppress overlapping detections per image.

    prediction: (bs, n, 5 + nc + nm) rows [x, y, w, h (pixels), obj, cls_0..cls_nc-1, mask coefs], or the
    (pred, feature_list) tuple of an eval forward. labels: optional per-image (k, 5) [cls, x, y, w, h] pixels
    added as certain candidates. Returns a list of bs tensors (n_i, 6 + nm) [x1, y1, x2, y2, conf, cls, masks].
    """
    check_thresholds(conf_thres, iou_thres)
    if isinstance(prediction, (list, tuple)):  # eval forward returns (pred, per-level outputs)
        prediction = prediction[0]
    device = prediction.device
    if device.type == "mps":  # torchvision NMS is incomplete on MPS
        prediction = prediction.cpu()
    bs = prediction.shape[0]
    nc = prediction.shape[2] - nm - 5
    multi_label &= nc > 1
    xc = prediction[..., 4] > conf_thres  # objectness gate, applied before conf = obj * cls
    time_limit = 0.5 + 0.05 * bs
    t = time.time()
    output = [torch.zeros((0, 6 + nm), device=device, dtype=prediction.dtype)] * bs
    for xi, x in enumerate(prediction):
        x = x[xc[xi]]
        if labels is not None and len(labels) and len(labels[xi]):
            x = _append_apriori(x, labels[xi].to(x.device), nc, nm)
        if not x.shape[0]:
            continue
        x = _candidates(x, nc, conf_thres, multi_label)
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
        if not x.shape[0]:
            continue
        x = x[x[:, 4].argsort(descending=True)[:MAX_NMS]]
        # The class offset reaches nc * MAX_WH, where fp16 steps by 32 px and bf16 by 256: offset in float32 (or
        # float64), or overlapping boxes of the high classes would both survive.
        wide = torch.promote_types(x.dtype, torch.float32)
        offset = x[:, 5:6].to(wide) * (0 if agnostic else MAX_WH)
        keep = _first_kept(x[:, :4].to(wide) + offset, x[:, 4].to(wide), iou_thres, max_det)
        output[xi] = x[keep].to(device)
        if (time.time() - t) > time_limit:
            LOGGER.warning(f"WARNING: NMS time limit {time_limit:.3f}s exceeded; "
                           f"{bs - xi - 1} remaining image(s) of this batch get no detections")
            break
    return output
