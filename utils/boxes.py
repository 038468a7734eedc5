"""Box format conversions, clipping, letterbox rescaling and IoU variants.

Formats: xyxy = (x1, y1, x2, y2) corners; xywh = (x_center, y_center, width, height); a trailing `n` means
normalised to [0, 1] by the image width/height. Every function takes a torch tensor or a numpy array (..., 4).
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch
import torchvision

Boxes = Union[torch.Tensor, np.ndarray]


def _empty_like(x: Boxes) -> Boxes:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x: Boxes) -> Boxes:
    """Convert (..., 4) xyxy corners to xywh (centre, size)."""
    y = _empty_like(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywh2xyxy(x: Boxes) -> Boxes:
    """Convert (..., 4) xywh (centre, size) to xyxy corners."""
    y = _empty_like(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xywhn2xyxy(x: Boxes, w: int = 640, h: int = 640, padw: float = 0, padh: float = 0) -> Boxes:
    """Convert (..., 4) normalised xywh to pixel xyxy in a w x h image, shifted by the padding (padw, padh)."""
    y = _empty_like(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: Boxes, w: int = 640, h: int = 640, clip: bool = False, eps: float = 0.0) -> Boxes:
    """Convert (..., 4) pixel xyxy in a w x h image to normalised xywh; `clip` first clips to (h - eps, w - eps).

    Clipping happens in place on `x`, as labels are cleaned up by it anyway.
    """
    if clip:
        clip_boxes(x, (h - eps, w - eps))
    y = _empty_like(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def xyn2xy(x: Boxes, w: int = 640, h: int = 640, padw: float = 0, padh: float = 0) -> Boxes:
    """Convert (..., 2) normalised points (e.g. segment vertices) to pixels, shifted by the padding."""
    y = _empty_like(x)
    y[..., 0] = w * x[..., 0] + padw
    y[..., 1] = h * x[..., 1] + padh
    return y


def clip_boxes(boxes: Boxes, shape: Sequence[float]) -> Boxes:
    """Clip (..., 4) xyxy boxes in place to an image of shape (h, w); returns `boxes`."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):  # per-column clamp_ is faster than a grouped clip for tensors
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(img1_shape: Sequence[int], boxes: Boxes, img0_shape: Sequence[int], ratio_pad=None) -> Boxes:
    """Map (n, 4) xyxy boxes from a letterboxed image (h1, w1) back to the original (h0, w0), in place.

    ratio_pad is ((gain_h, gain_w), (padw, padh)) as stored by the dataloader; the gain used is ratio_pad[0][0].
    Without it the gain and the centred padding are recomputed from the two shapes. Boxes are clipped to img0.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad = ratio_pad[1]
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., :4] /= gain
    clip_boxes(boxes, img0_shape)
    return boxes


def box_iou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: box1 (N, 4), box2 (M, 4) -> (N, M). `eps` is kept for call compatibility."""
    return torchvision.ops.box_iou(box1, box2)


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, xywh: bool = True, GIoU: bool = False, DIoU: bool = False,
             CIoU: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise IoU (or GIoU/DIoU/CIoU) of broadcastable boxes (..., 4) -> (..., 1); xywh or xyxy input.

    CIoU = IoU - rho^2/c^2 - alpha*v with v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2 and alpha = v/(v - IoU + 1 + eps)
    computed without gradient (the loss treats alpha as a constant weight).
    """
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
        w1, h1 = b1_x2 - b1_x1, (b1_y2 - b1_y1).clamp(eps)
        w2, h2 = b2_x2 - b2_x1, (b2_y2 - b2_y1).clamp(eps)

    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
            (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (CIoU or DIoU or GIoU):
        return iou

    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)  # enclosing box width
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)  # enclosing box height
    if not (CIoU or DIoU):  # GIoU; CIoU and DIoU take precedence when several flags are set
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw ** 2 + ch ** 2 + eps  # squared enclosing diagonal
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4  # squared centre gap
    if not CIoU:
        return iou - rho2 / c2
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)
