"""Image augmentations for detection: letterbox, random perspective, HSV jitter, mixup, copy-paste.

Boxes here are pixel xyxy in (n, 5) arrays [cls, x1, y1, x2, y2]; images are HWC uint8 BGR. The random draws
follow YOLOv5 v7.0 (python `random` for geometry, `np.random` for HSV and mixup) so seeded runs are comparable.
"""

from __future__ import annotations

import math
import random
from typing import Sequence, Union

import cv2
import numpy as np

from utils.logger import LOGGER, colorstr

PAD_COLOR = (114, 114, 114)  # grey used for letterbox borders, mosaic canvas and warped-in areas


def letterbox(im: np.ndarray, new_shape: Union[int, Sequence[int]] = (640, 640), color=PAD_COLOR, auto: bool = True,
              scaleFill: bool = False, scaleup: bool = True, stride: int = 32):
    """Resize `im` (h, w, c) keeping its aspect ratio and pad it to `new_shape` (h, w).

    auto: pad only up to the next multiple of `stride` (minimum rectangle); scaleFill: stretch to new_shape
    with no padding; scaleup=False never enlarges. Returns (image, (rw, rh) gains, (dw, dh) per-side padding).
    """
    h, w = im.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / h, new_shape[1] / w)
    if not scaleup:  # only shrink: keeps val mAP honest for small images
        r = min(r, 1.0)
    ratio = r, r
    new_w, new_h = int(round(w * r)), int(round(h * r))
    dw, dh = new_shape[1] - new_w, new_shape[0] - new_h
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scaleFill:
        dw, dh = 0.0, 0.0
        new_w, new_h = new_shape[1], new_shape[0]
        ratio = new_shape[1] / w, new_shape[0] / h
    dw, dh = dw / 2, dh / 2  # split between the two sides
    if (w, h) != (new_w, new_h):
        im = cv2.resize(im, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    # +-0.1 sends an odd pixel of padding to the bottom/right side
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, (dw, dh)


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Boolean mask of boxes worth keeping after augmentation. box1 (4, n) before, box2 (4, n) after, xyxy.

    Kept: width and height > wh_thr px, area after / area before > area_thr, aspect ratio < ar_thr.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _perspective_matrix(shape: Sequence[int], out_w: int, out_h: int, degrees: float, translate: float,
                        scale: float, shear: float, perspective: float) -> tuple[np.ndarray, float]:
    """Random 3x3 transform M = T @ S @ R @ P @ C for an image of `shape`, and the scale factor drawn."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -shape[1] / 2, -shape[0] / 2  # image centre to the origin
    P = np.eye(3)
    P[2, 0] = random.uniform(-perspective, perspective)
    P[2, 1] = random.uniform(-perspective, perspective)
    R = np.eye(3)
    a = random.uniform(-degrees, degrees)
    s = random.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_w
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_h
    return T @ S @ R @ P @ C, s  # applied right to left


def _warp_points(xy: np.ndarray, M: np.ndarray, perspective: bool) -> np.ndarray:
    """Apply the 3x3 transform M to (k, 2) points."""
    xy = np.concatenate((xy, np.ones((len(xy), 1))), 1) @ M.T
    return xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]


def resample_segments(segments: list, n: int = 1000) -> list:
    """Resample each closed polygon (k, 2) to n points evenly spaced in vertex index, returns list of (n, 2)."""
    out = []
    for s in segments:
        s = np.concatenate((s, s[:1]), 0)
        t = np.linspace(0, len(s) - 1, n)
        idx = np.arange(len(s))
        out.append(np.stack([np.interp(t, idx, s[:, j]) for j in range(2)], 1))
    return out


def _segment_box(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """xyxy box of the polygon points that lie inside a width x height image (zeros when none do)."""
    x, y = xy.T
    inside = (x >= 0) & (y >= 0) & (x <= width) & (y <= height)
    x, y = x[inside], y[inside]
    return np.array([x.min(), y.min(), x.max(), y.max()]) if any(x) else np.zeros(4)


def random_perspective(im: np.ndarray, targets: np.ndarray = (), segments: Sequence = (), degrees: float = 10,
                       translate: float = 0.1, scale: float = 0.1, shear: float = 10, perspective: float = 0.0,
                       border: Sequence[int] = (0, 0)):
    """Random rotation/scale/shear/translation/perspective of `im` and its (n, 5) [cls, xyxy] pixel targets.

    A negative `border` crops (mosaic passes -s/2 to go from 2s x 2s to s x s). Warped-in areas are grey 114.
    Boxes are re-fitted around the warped corners (or polygon points, when `segments` match the targets),
    clipped, and dropped unless box_candidates keeps them. Returns (image, targets).
    """
    height, width = im.shape[0] + border[0] * 2, im.shape[1] + border[1] * 2
    M, s = _perspective_matrix(im.shape, width, height, degrees, translate, scale, shear, perspective)
    if border[0] or border[1] or (M != np.eye(3)).any():
        if perspective:
            im = cv2.warpPerspective(im, M, dsize=(width, height), borderValue=PAD_COLOR)
        else:  # affine is faster
            im = cv2.warpAffine(im, M[:2], dsize=(width, height), borderValue=PAD_COLOR)

    n = len(targets)
    if not n:
        return im, targets
    use_segments = len(segments) == n and any(x.any() for x in segments)
    if use_segments:  # polygons give tighter boxes after rotation
        new = np.stack([_segment_box(_warp_points(seg, M, bool(perspective)), width, height)
                        for seg in resample_segments(segments)])
    else:
        corners = targets[:, [1, 2, 3, 4, 3, 2, 1, 4]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
        xy = _warp_points(corners, M, bool(perspective)).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
    keep = box_candidates(targets[:, 1:5].T * s, new.T, area_thr=0.01 if use_segments else 0.10)
    targets = targets[keep]
    targets[:, 1:5] = new[keep]
    return im, targets


def augment_hsv(im: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5) -> None:
    """Jitter hue, saturation and value of a BGR uint8 image in place; gains are U(-1, 1) * gain + 1."""
    if not (hgain or sgain or vgain):
        return
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(im.dtype)  # OpenCV hue lives in 0..179
    lut_sat = np.clip(x * r[1], 0, 255).astype(im.dtype)
    lut_val = np.clip(x * r[2], 0, 255).astype(im.dtype)
    im_hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(im_hsv, cv2.COLOR_HSV2BGR, dst=im)


def mixup(im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray):
    """Blend two same-size images with a Beta(32, 32) ratio and keep both label sets. Returns (image, labels)."""
    r = np.random.beta(32.0, 32.0)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)


def _ioa(box: np.ndarray, boxes: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of one xyxy box with each of (n, 4) boxes, over the area of each of those boxes."""
    iw = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return iw * ih / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + eps)


def copy_paste(im: np.ndarray, labels: np.ndarray, segments: list, p: float = 0.5):
    """Paste mirrored copies of polygon-labelled objects (round(p * n) of them) where they hide < 30% of others.

    Works only with polygon labels (segments in pixels, one per label row); labels are (n, 5) [cls, xyxy].
    Returns (image, labels, segments), the image modified in place.
    """
    n = len(segments)
    if not (p and n) or n != len(labels):
        return im, labels, segments
    h, w = im.shape[:2]
    pasted = np.zeros(im.shape, np.uint8)
    for j in random.sample(range(n), k=round(p * n)):
        cls, s = labels[j, 0], segments[j]
        box = w - labels[j, 3], labels[j, 2], w - labels[j, 1], labels[j, 4]  # left-right mirror
        if (_ioa(np.array(box), labels[:, 1:5]) < 0.30).all():
            labels = np.concatenate((labels, [[cls, *box]]), 0)
            segments.append(np.concatenate((w - s[:, 0:1], s[:, 1:2]), 1))
            cv2.drawContours(pasted, [s.astype(np.int32)], -1, (1, 1, 1), cv2.FILLED)
    mirrored = cv2.flip(im, 1)
    mask = cv2.flip(pasted, 1).astype(bool)
    im[mask] = mirrored[mask]
    return im, labels, segments


class Albumentations:
    """Optional extra pixel noise (blur, median blur, grey, CLAHE at p=0.01 each) when albumentations is installed.

    None of these move pixels, so boxes pass through untouched. Without the package this is a no-op.
    """

    def __init__(self, size: int = 640):
        self.transform = None
        try:
            import albumentations as A
        except ImportError:
            return
        try:
            self.transform = A.Compose([A.Blur(p=0.01), A.MedianBlur(p=0.01), A.ToGray(p=0.01), A.CLAHE(p=0.01)])
            LOGGER.info(f"{colorstr('albumentations: ')}Blur, MedianBlur, ToGray, CLAHE (p=0.01 each)")
        except Exception as e:  # an incompatible albumentations version must not stop training
            LOGGER.warning(f"{colorstr('albumentations: ')}not used: {e}")

    def __call__(self, im: np.ndarray, labels: np.ndarray, p: float = 1.0):
        """Return (image, labels) with the transforms applied with probability p."""
        if self.transform is not None and random.random() < p:
            im = self.transform(image=im)["image"]
        return im, labels
