"""Plots for train/val/detect: box annotation, batch mosaics, results/label/curve figures, feature maps.

Drawing uses OpenCV (text via cv2.putText, so no font file is ever needed); figures use matplotlib's
object-oriented API (no pyplot global state). Every plot function logs a warning instead of raising.
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from utils.boxes import xywh2xyxy, xyxy2xywh
from utils.logger import LOGGER
from utils.metrics import smooth
from utils.results import names_dict
from utils.train_utils import RESULT_KEYS


def _never_raise(fn):
    """Turn an exception in a plot function into a logged warning: a figure must never end a run."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            LOGGER.warning(f"WARNING: {fn.__name__} failed: {e}")
    return wrapper


def _figure(rows: int = 1, cols: int = 1, figsize=(9, 6)):
    """A pyplot-free figure; grids get fixed margins, since tight_layout costs a full extra draw per save."""
    from matplotlib.figure import Figure  # imported lazily: matplotlib is slow to import
    fig = Figure(figsize=figsize, layout="tight" if rows * cols == 1 else None)
    axes = fig.subplots(rows, cols)
    if rows * cols > 1:
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.95, wspace=0.3, hspace=0.3)
    return fig, axes


class Colors:
    """A fixed 20-colour palette, indexed modulo 20; RGB by default."""

    HEX = ("E6194B", "3CB44B", "FFB000", "4363D8", "F58231", "911EB4", "42D4F4", "F032E6", "BFEF45", "FA8072",
           "469990", "9A6324", "800000", "2E8B57", "000075", "FF6F91", "6A5ACD", "00A86B", "C71585", "708090")

    def __init__(self):
        self.palette = [tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) for h in self.HEX]
        self.n = len(self.palette)

    def __call__(self, i: int, bgr: bool = False) -> tuple:
        c = self.palette[int(i) % self.n]
        return (c[2], c[1], c[0]) if bgr else c


colors = Colors()  # colors(i, bgr=False) -> (r, g, b)


def _ascii(text: str) -> str:
    """cv2.putText only draws ASCII: other characters become '?'."""
    return text.encode("ascii", "replace").decode()


class Annotator:
    """Draw boxes and text on a uint8 HWC image (any channel order: colours are passed in that order)."""

    def __init__(self, im: np.ndarray, line_width: Optional[int] = None, font_size=None, font="", pil=False,
                 example: str = "abc"):
        # font_size/font/pil/example are accepted for call compatibility; text is always drawn with cv2
        if not isinstance(im, np.ndarray):
            raise TypeError(f"Annotator expects a numpy HWC uint8 image, got {type(im).__name__}")
        self.im = im if im.flags.writeable and im.flags.c_contiguous else np.ascontiguousarray(im)
        self.lw = line_width or max(round(sum(im.shape) / 2 * 0.003), 2)
        self.tf = max(self.lw - 1, 1)  # text thickness
        self.fs = self.lw / 3  # cv2 font scale

    def box_label(self, box, label: str = "", color=(128, 128, 128), txt_color=(255, 255, 255)) -> None:
        """Draw an xyxy box with an optional filled label tag above it (inside when there is no room)."""
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if not label:
            return
        label = _ascii(label)
        w, h = cv2.getTextSize(label, 0, fontScale=self.fs, thickness=self.tf)[0]
        outside = p1[1] - h >= 3
        q2 = (p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3)
        cv2.rectangle(self.im, p1, q2, color, -1, cv2.LINE_AA)
        org = (p1[0], p1[1] - 2 if outside else p1[1] + h + 2)
        cv2.putText(self.im, label, org, 0, self.fs, txt_color, thickness=self.tf, lineType=cv2.LINE_AA)

    def rectangle(self, xy, fill=None, outline=None, width: int = 1) -> None:
        """Draw an xyxy rectangle, filled when `fill` is given."""
        p1, p2 = (int(xy[0]), int(xy[1])), (int(xy[2]), int(xy[3]))
        if fill is not None:
            cv2.rectangle(self.im, p1, p2, fill, -1)
        if outline is not None:
            cv2.rectangle(self.im, p1, p2, outline, width)

    def text(self, xy, text: str, txt_color=(255, 255, 255), anchor: str = "top") -> None:
        """Write text with its top-left (anchor 'top') or bottom-left ('bottom') corner at xy."""
        text = _ascii(text)
        h = cv2.getTextSize(text, 0, fontScale=self.fs, thickness=self.tf)[0][1]
        y = int(xy[1]) + (h if anchor == "top" else 0)
        cv2.putText(self.im, text, (int(xy[0]), y), 0, self.fs, txt_color, thickness=self.tf,
                    lineType=cv2.LINE_AA)

    def result(self) -> np.ndarray:
        """The annotated image (HWC uint8)."""
        return self.im


def output_to_target(output: Sequence[torch.Tensor], max_det: int = 300) -> np.ndarray:
    """NMS output (list of (n, 6) [xyxy, conf, cls]) -> (N, 7) [img_idx, cls, x, y, w, h, conf] for plot_images."""
    rows = []
    for i, o in enumerate(output):
        o = o[:max_det, :6].detach().cpu().float()
        box, conf, cls = o[:, :4], o[:, 4:5], o[:, 5:6]
        idx = torch.full((o.shape[0], 1), float(i))
        rows.append(torch.cat((idx, cls, xyxy2xywh(box), conf), 1))
    return torch.cat(rows, 0).numpy() if rows else np.zeros((0, 7))


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _mosaic(images: np.ndarray, max_size: int, max_subplots: int):
    """Tile up to max_subplots CHW images (0-255) into one RGB canvas; returns (canvas, ns, h, w, scale)."""
    bs, _, h, w = images.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs ** 0.5)
    canvas = np.full((ns * h, ns * w, 3), 255, dtype=np.uint8)
    for i in range(bs):
        x, y = w * (i % ns), h * (i // ns)
        canvas[y:y + h, x:x + w] = images[i].transpose(1, 2, 0)
    scale = max_size / ns / max(h, w)
    if scale < 1:
        h, w = math.ceil(scale * h), math.ceil(scale * w)
        canvas = cv2.resize(canvas, (ns * w, ns * h))
    return canvas, bs, ns, h, w, scale


def _class_name(names, c: int) -> str:
    """names[c] from a dict or a sequence, else the index itself."""
    if isinstance(names, dict):
        return str(names.get(c, c))
    return str(names[c]) if names is not None and 0 <= c < len(names) else str(c)


def _draw_image_targets(annotator: Annotator, ti: np.ndarray, x: int, y: int, w: int, h: int, scale: float,
                        names) -> None:
    """Draw one tile's targets ti (k, 6|7) [idx, cls, x, y, w, h(, conf)]; predictions below 0.25 are skipped."""
    boxes = xywh2xyxy(ti[:, 2:6]).T
    classes = ti[:, 1].astype(int)
    has_conf = ti.shape[1] == 7
    conf = ti[:, 6] if has_conf else None
    if boxes.shape[1]:
        if boxes.max() <= 1.01:  # normalised coordinates
            boxes[[0, 2]] *= w
            boxes[[1, 3]] *= h
        elif scale < 1:  # pixels, and the tile was shrunk
            boxes *= scale
    boxes[[0, 2]] += x
    boxes[[1, 3]] += y
    for j, box in enumerate(boxes.T.tolist()):
        if has_conf and conf[j] <= 0.25:
            continue
        c = classes[j]
        name = _class_name(names, c)
        label = name if not has_conf else f"{name} {conf[j]:.1f}"
        annotator.box_label(box, label, color=colors(c))


@_never_raise
def plot_images(images, targets, paths=None, fname="images.jpg", names=None, max_size: int = 1920,
                max_subplots: int = 16) -> None:
    """Save a mosaic of a batch with its boxes.

    images (bs, 3, h, w) RGB, uint8 or float in [0, 1]; targets (n, 6) [img_idx, cls, x, y, w, h] labels or
    (n, 7) [..., conf] predictions, xywh normalised or in input pixels.
    """
    images, targets = _to_numpy(images).astype(np.float32), _to_numpy(targets)
    if targets.size == 0:
        targets = np.zeros((0, 6))
    if images.max() <= 1:
        images *= 255
    canvas, bs, ns, h, w, scale = _mosaic(images.astype(np.uint8), max_size, max_subplots)
    fs = int((h + w) * ns * 0.01)  # font/line size grows with the mosaic
    annotator = Annotator(canvas, line_width=max(round(fs / 10), 1))
    for i in range(bs):
        x, y = w * (i % ns), h * (i // ns)
        annotator.rectangle([x, y, x + w, y + h], outline=(255, 255, 255), width=2)
        if paths is not None and i < len(paths):
            annotator.text((x + 5, y + 5), Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        if len(targets):
            _draw_image_targets(annotator, targets[targets[:, 0] == i].copy(), x, y, w, h, scale, names)
    Path(fname).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(fname), cv2.cvtColor(annotator.result(), cv2.COLOR_RGB2BGR))


RESULTS_PANELS = RESULT_KEYS[1:6] + RESULT_KEYS[8:11] + RESULT_KEYS[6:8]  # results.png: losses and P/R, then mAPs


def _read_results_csv(file: Path) -> dict:
    """Columns of a results.csv as {stripped header: float array}."""
    with open(file, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    header = [h.strip() for h in rows[0]]
    data = np.array([[float(v) for v in r] for r in rows[1:]], dtype=float).reshape(-1, len(header))
    return {k: data[:, i] for i, k in enumerate(header)}


@_never_raise
def plot_results(file="results.csv", dir: str = "") -> None:
    """Plot results.csv (or every results*.csv in dir) as a 2x5 panel results.png next to it."""
    files = sorted(Path(dir).glob("results*.csv")) if dir else [Path(file)]
    if not files:
        raise FileNotFoundError(f"no results*.csv in {Path(dir).resolve()}")
    fig, ax = _figure(2, 5, figsize=(12, 6))
    ax = ax.ravel()
    for f in files:
        cols = _read_results_csv(f)
        x = cols.get("epoch", np.arange(len(next(iter(cols.values())))))
        for i, key in enumerate(RESULTS_PANELS):
            if key not in cols:
                continue
            y = cols[key]
            ax[i].plot(x, y, marker=".", label=f.stem, linewidth=2, markersize=8)
            if len(y) > 2:
                ax[i].plot(x, _gaussian_smooth(y), ":", label="smooth", linewidth=2)
            ax[i].set_title(key, fontsize=12)
    ax[1].legend()
    fig.savefig(files[0].with_name("results.png"), dpi=200)


def _gaussian_smooth(y: np.ndarray, sigma: float = 3) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d
    return gaussian_filter1d(y, sigma=sigma)


def _legend_names(names, n: int) -> Optional[list]:
    """Per-class legend labels when there are 1..20 classes, else None (a single grey bundle)."""
    names = list(names.values()) if isinstance(names, dict) else list(names)
    return names if 0 < len(names) < 21 and len(names) >= n else None


def plot_ap_curves(curves: dict, save_dir, names=(), prefix: str = "") -> None:
    """The four curve figures val.py writes (PR, F1, P, R) from the `curves` that metrics.ap_per_class filled."""
    save_dir = Path(save_dir)
    present = names_dict(names)
    legend = dict(enumerate(v for k, v in present.items() if k in curves["classes"]))  # classes with labels, 0..k-1
    px = curves["px"]
    plot_pr_curve(px, list(curves["py"]), curves["ap"], save_dir / f"{prefix}PR_curve.png", legend)
    for key, file, label in (("f1", "F1", "F1"), ("p", "P", "Precision"), ("r", "R", "Recall")):
        plot_mc_curve(px, curves[key], save_dir / f"{prefix}{file}_curve.png", legend, ylabel=label)


@_never_raise
def plot_pr_curve(px: np.ndarray, py: Sequence[np.ndarray], ap: np.ndarray, save_dir=Path("pr_curve.png"),
                  names=()) -> None:
    """Precision-recall curves: px (1000,) recall grid, py k curves (1000,) at IoU 0.5, ap (k, t)."""
    fig, ax = _figure()
    py = np.stack(py, axis=1) if len(py) else np.zeros((len(px), 0))
    labels = _legend_names(names, py.shape[1])
    if labels:
        for i, y in enumerate(py.T):
            ax.plot(px, y, linewidth=1, label=f"{labels[i]} {ap[i, 0]:.3f}")
    elif py.shape[1]:
        ax.plot(px, py, linewidth=1, color="grey")
    if py.shape[1]:
        ax.plot(px, py.mean(1), linewidth=3, color="blue", label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
    _finish_unit_axes(ax, "Recall", "Precision", "Precision-Recall Curve")
    fig.savefig(save_dir, dpi=250)


@_never_raise
def plot_mc_curve(px: np.ndarray, py: np.ndarray, save_dir=Path("mc_curve.png"), names=(),
                  xlabel: str = "Confidence", ylabel: str = "Metric") -> None:
    """Metric-vs-confidence curves: px (1000,) confidence grid, py (k, 1000) one row per class."""
    fig, ax = _figure()
    labels = _legend_names(names, len(py))
    if labels:
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=labels[i])
    elif len(py):
        ax.plot(px, py.T, linewidth=1, color="grey")
    if len(py):
        y = smooth(py.mean(0), 0.05)
        ax.plot(px, y, linewidth=3, color="blue", label=f"all classes {y.max():.2f} at {px[y.argmax()]:.3f}")
    _finish_unit_axes(ax, xlabel, ylabel, f"{ylabel}-Confidence Curve")
    fig.savefig(save_dir, dpi=250)


def _finish_unit_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")


@_never_raise
def plot_confusion_matrix(matrix: np.ndarray, fname, names=(), normalize: bool = True) -> None:
    """Heatmap of a (nc+1, nc+1) [predicted, true] matrix; normalize divides each true-class column by its sum."""
    nc = matrix.shape[0] - 1
    array = matrix / ((matrix.sum(0).reshape(1, -1) + 1e-9) if normalize else 1)
    array = np.where(array < 0.005, np.nan, array)  # blank near-zero cells instead of printing 0.00
    names = list(names.values()) if isinstance(names, dict) else list(names)
    ticks = names + ["background"] if 0 < nc < 99 and len(names) == nc else None
    fig, ax = _figure(figsize=(12, 9))
    im = ax.imshow(array, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax)
    if nc < 30:  # annotate cells only while they stay legible
        for (i, j), v in np.ndenumerate(array):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}" if normalize else f"{v:.0f}", ha="center", va="center",
                        fontsize=11 if nc < 10 else 8,
                        color="white" if normalize and v > 0.5 else "black")
    if ticks:
        ax.set_xticks(range(nc + 1), ticks, rotation=90, fontsize=8)
        ax.set_yticks(range(nc + 1), ticks, fontsize=8)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix")
    Path(fname).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(fname, dpi=250)


@_never_raise
def plot_labels(labels: np.ndarray, names=(), save_dir=Path("")) -> None:
    """Dataset label statistics: labels (n, 5) [cls, x, y, w, h] normalised -> labels.jpg, labels_correlogram.jpg."""
    labels = np.asarray(labels, dtype=float).reshape(-1, 5)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    LOGGER.info(f"Plotting labels to {save_dir / 'labels.jpg'}... ")
    c, b = labels[:, 0].astype(int), labels[:, 1:]
    nc = int(c.max() + 1) if len(c) else 0
    _plot_label_correlogram(b, save_dir / "labels_correlogram.jpg")

    fig, ax = _figure(2, 2, figsize=(8, 8))
    ax = ax.ravel()
    counts = np.bincount(c, minlength=nc)
    ax[0].bar(range(nc), counts, color=[np.array(colors(i)) / 255 for i in range(nc)])
    ax[0].set_ylabel("instances")
    names = list(names.values()) if isinstance(names, dict) else list(names)
    if 0 < len(names) < 30 and len(names) >= nc:
        ax[0].set_xticks(range(nc), names[:nc], rotation=90, fontsize=10)
    else:
        ax[0].set_xlabel("classes")
    ax[1].imshow(_box_shapes_image(c, b))
    ax[1].axis("off")
    for a, (i, j), (xl, yl) in zip(ax[2:], ((0, 1), (2, 3)), (("x", "y"), ("width", "height"))):
        _hist2d(a, b[:, i], b[:, j])
        a.set_xlabel(xl)
        a.set_ylabel(yl)
    fig.savefig(save_dir / "labels.jpg", dpi=200)


def _box_shapes_image(c: np.ndarray, b: np.ndarray, n: int = 1000) -> np.ndarray:
    """First n label boxes drawn centred on a white 1000x1000 canvas, to show their sizes and shapes."""
    im = np.full((1000, 1000, 3), 255, dtype=np.uint8)
    boxes = xywh2xyxy(np.concatenate((np.full((len(b), 2), 0.5), b[:, 2:4]), 1)) * 1000
    for cls, box in zip(c[:n], boxes[:n]):
        cv2.rectangle(im, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), colors(cls), 1)
    return im


def _hist2d(ax, x: np.ndarray, y: np.ndarray, bins: int = 50) -> None:
    """2-D histogram of points in [0, 1]^2 drawn as an image (much cheaper to render than Axes.hist2d's mesh)."""
    h = np.histogram2d(y, x, bins=bins, range=[[0, 1], [0, 1]])[0]  # rows follow y
    ax.imshow(h, cmap="Blues", origin="lower", extent=(0, 1, 0, 1), aspect="auto")


def _plot_label_correlogram(b: np.ndarray, fname: Path) -> None:
    """Pair plot of label x, y, width, height: histograms on the diagonal, 2-D histograms elsewhere."""
    keys = ("x", "y", "width", "height")
    fig, ax = _figure(4, 4, figsize=(8, 8))
    for i in range(4):
        for j in range(4):
            a = ax[i, j]
            if i == j:
                a.hist(b[:, i], bins=50, range=(0, 1), color="steelblue")
                a.set_yticks([])
            else:
                _hist2d(a, b[:, j], b[:, i])
                a.set_yticks((0.2, 0.4, 0.6, 0.8))
            a.set_xlim(0, 1)
            a.set_xticks((0.2, 0.4, 0.6, 0.8))  # interior ticks: edge labels would collide between panels
            if i < 3:
                a.set_xticklabels([])
            if 0 < j:
                a.set_yticklabels([])
            a.set_xlabel(keys[j] if i == 3 else "")
            a.set_ylabel(keys[i] if j == 0 else "")
    fig.subplots_adjust(wspace=0.08, hspace=0.08)
    fig.savefig(fname, dpi=200)


@_never_raise
def feature_visualization(x: torch.Tensor, module_type: str, stage: int, n: int = 32,
                          save_dir=Path("runs/detect/exp")) -> None:
    """Save the first n channels of feature map x (bs, c, h, w), image 0, as a png grid (+ the full map as .npy)."""
    if "Detect" in module_type:
        return
    _, channels, height, width = x.shape
    if height <= 1 or width <= 1:
        return
    f = Path(save_dir) / f"stage{stage}_{module_type.split('.')[-1]}_features.png"
    n = min(n, channels)
    fmap = x[0].detach().cpu().float()
    rows = math.ceil(n / 8)
    fig, ax = _figure(rows, 8, figsize=(8, rows))
    ax = np.atleast_1d(ax).ravel()
    for i in range(len(ax)):
        if i < n:
            ax[i].imshow(fmap[i].numpy())
        ax[i].axis("off")
    LOGGER.info(f"Saving {f}... ({n}/{channels})")
    f.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(f, dpi=300, bbox_inches="tight")
    np.save(str(f.with_suffix(".npy")), fmap.numpy())
