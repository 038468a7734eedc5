"""Anchor checks: order of anchor sizes against strides, and AutoAnchor (best possible recall, k-means and a
genetic refinement of anchor sizes in pixels). Anchors in Detect are stored in grid units (pixels / stride)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from utils.logger import LOGGER, colorstr
from utils.torch_utils import de_parallel

PREFIX = "AutoAnchor: "


def check_anchor_order(m) -> None:
    """Flip Detect `m`'s anchor levels in place if their mean area does not rise with the stride."""
    area = m.anchors.prod(-1).mean(-1).view(-1)  # mean anchor area per level
    da = area[-1] - area[0]
    ds = m.stride[-1] - m.stride[0]
    if da and (da.sign() != ds.sign()):
        LOGGER.info("AutoAnchor: reversing anchor order to match strides")
        m.anchors[:] = m.anchors.flip(0)


def _rng(seed: Optional[int]) -> np.random.Generator:
    """A local generator; without a seed it is drawn from numpy's global state, so init_seeds() governs it."""
    return np.random.default_rng(np.random.randint(0, 2 ** 31 - 1) if seed is None else seed)


def _label_wh(dataset, img_size: int, scale: Optional[np.ndarray] = None) -> np.ndarray:
    """Label sizes (n, 2) in pixels once each image's long side is img_size (times an optional (N, 1) scale)."""
    shapes = np.asarray(dataset.shapes, dtype=np.float64).reshape(-1, 2)  # (N, 2) image (w, h)
    if len(shapes) != len(dataset.labels):
        raise ValueError(f"{PREFIX}dataset has {len(shapes)} image shapes but {len(dataset.labels)} label arrays")
    shapes = img_size * shapes / shapes.max(1, keepdims=True)
    if scale is not None:
        shapes = shapes * scale
    wh = [np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, lb in zip(shapes, dataset.labels)]
    return np.concatenate(wh) if wh else np.zeros((0, 2))


def _ratio_metric(k: torch.Tensor, wh: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For labels wh (n, 2) and anchors k (na, 2): the worse side ratio min(r, 1/r) per pair (n, na), and the
    best anchor's value per label (n,)."""
    r = wh[:, None] / k[None]
    x = torch.min(r, 1 / r)
    x = torch.minimum(x[..., 0], x[..., 1])  # elementwise: far faster than a reduction over a size-2 dim
    return x, x.amax(1)


def check_anchors(dataset, model: nn.Module, thr: float = 4.0, imgsz: int = 640, seed: Optional[int] = None) -> None:
    """Measure the best possible recall (BPR) of the model's anchors on the dataset labels; at or below 0.98
    evolve new anchors and adopt them only if their BPR is higher. Updates Detect.anchors (grid units) in place."""
    m = de_parallel(model).model[-1]  # Detect
    # jitter image sizes as augmentation would; unseeded, the draw comes from numpy's global state exactly as in
    # YOLOv5, so the augmentations that follow in train.py see the same random stream as YOLOv5's at the same seed
    scale = (np.random if seed is None else _rng(seed)).uniform(0.9, 1.1, size=(len(dataset.labels), 1))
    wh = torch.tensor(_label_wh(dataset, imgsz, scale)).float()
    if not len(wh):
        LOGGER.warning(f"{colorstr(PREFIX)}no labels in the dataset; keeping the current anchors")
        return

    def metric(k: torch.Tensor) -> Tuple[float, float]:
        x, best = _ratio_metric(k, wh)
        return float((best > 1 / thr).float().mean()), float((x > 1 / thr).float().sum(1).mean())

    stride = m.stride.to(m.anchors.device).view(-1, 1, 1)
    anchors = m.anchors.clone() * stride  # pixels
    bpr, aat = metric(anchors.cpu().view(-1, 2).float())
    s = f"{colorstr(PREFIX)}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). "
    if bpr > 0.98:
        LOGGER.info(f"{s}Current anchors are a good fit to dataset")
        return
    LOGGER.info(f"{s}Anchors are a poor fit to dataset, attempting to improve...")
    na = m.anchors.numel() // 2
    new = kmean_anchors(dataset, n=na, img_size=imgsz, thr=thr, gen=1000, verbose=False,
                        seed=None if seed is None else seed + 1)
    new_bpr = metric(torch.tensor(new))[0]
    if new_bpr > bpr:
        m.anchors[:] = torch.tensor(new, device=m.anchors.device).type_as(m.anchors).view_as(m.anchors)
        check_anchor_order(m)
        m.anchors /= stride
        LOGGER.info(f"{colorstr(PREFIX)}Done: new anchors adopted, BPR {bpr:.4f} -> {new_bpr:.4f} "
                    "(optional: put them in the model yaml to reuse them)")
    else:
        LOGGER.info(f"{colorstr(PREFIX)}Done: original anchors kept (new BPR {new_bpr:.4f} <= {bpr:.4f})")


def _load_dataset(data: Union[str, Path]):
    """The training split of a dataset yaml, loaded as LoadImagesAndLabels (labels only are used)."""
    from utils.dataloaders import LoadImagesAndLabels  # data pipeline; imported only when a yaml is given
    from utils.datasets_yaml import check_dataset
    data_dict = check_dataset(str(data), autodownload=False)
    return LoadImagesAndLabels(data_dict["train"], augment=False, rect=True)


def _kmeans(wh: np.ndarray, n: int, img_size: int, rng: np.random.Generator) -> np.ndarray:
    """n cluster centres (n, 2) of whitened wh by SciPy k-means (30 iterations); random sizes if that fails."""
    from scipy.cluster.vq import kmeans
    if n <= len(wh):
        s = wh.std(0)
        try:
            with np.errstate(divide="ignore", invalid="ignore"):
                obs = wh / s
            try:
                k = kmeans(obs, n, iter=30, rng=rng)[0] * s
            except TypeError:  # SciPy < 1.15 names the generator `seed`
                k = kmeans(obs, n, iter=30, seed=rng)[0] * s
            if len(k) == n and np.isfinite(k).all():
                return k
        except ValueError:  # e.g. all boxes the same size: zero spread cannot be whitened
            pass
    LOGGER.warning(f"{colorstr(PREFIX)}k-means gave fewer than {n} anchors from {len(wh)} boxes; "
                   "switching to a random initialisation")
    return np.sort(rng.random(n * 2)).reshape(n, 2) * img_size


def kmean_anchors(dataset='./data/coco128.yaml', n: int = 9, img_size: int = 640, thr: float = 4.0,
                  gen: int = 1000, verbose: bool = True, seed: Optional[int] = None) -> np.ndarray:
    """Evolve n anchors (n, 2) float32 in pixels, sorted by area, for a dataset (yaml path or an object with
    `.shapes` (N, 2) (w, h) and `.labels` [(n, 5) cls, x, y, w, h normalised]): k-means, then `gen` generations
    of mutation keeping the best fitness mean(best * (best > 1/thr))."""
    if isinstance(dataset, (str, Path)):
        dataset = _load_dataset(dataset)
    rng = _rng(seed)
    inv_thr = 1 / thr
    wh0 = _label_wh(dataset, img_size)
    tiny = int((wh0 < 3.0).any(1).sum())
    if tiny:
        LOGGER.info(f"{colorstr(PREFIX)}WARNING: extremely small objects: {tiny} of {len(wh0)} labels are < 3 px")
    wh = wh0[(wh0 >= 2.0).any(1)].astype(np.float32)  # drop boxes under 2 px on both sides
    LOGGER.info(f"{colorstr(PREFIX)}Running kmeans for {n} anchors on {len(wh)} points...")
    k = _kmeans(wh, n, img_size, rng)
    wh_t, wh0_t = torch.tensor(wh, dtype=torch.float32), torch.tensor(wh0, dtype=torch.float32)

    def fitness(anchors: np.ndarray) -> float:
        _, best = _ratio_metric(torch.tensor(anchors, dtype=torch.float32), wh_t)
        return float((best * (best > inv_thr).float()).mean())

    k = _report(k, wh0_t, thr, img_size, verbose=False)
    f, shape, mp, sigma = fitness(k), k.shape, 0.9, 0.1
    pbar = tqdm(range(gen), disable=not LOGGER.isEnabledFor(logging.INFO) or gen == 0)
    for _ in pbar:
        v = np.ones(shape)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(shape) < mp) * rng.random() * rng.standard_normal(shape) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg
            pbar.desc = f"{PREFIX}Evolving anchors with Genetic Algorithm: fitness = {f:.4f}"
            if verbose:
                _report(k, wh0_t, thr, img_size, verbose)
    return _report(k, wh0_t, thr, img_size).astype(np.float32)


def _report(k: np.ndarray, wh0: torch.Tensor, thr: float, img_size: int, verbose: bool = True) -> np.ndarray:
    """Sort anchors (n, 2) by area and log their recall statistics on all labels wh0; returns the sorted array."""
    k = k[np.argsort(k.prod(1))]
    x, best = _ratio_metric(torch.tensor(k, dtype=torch.float32), wh0)
    inv_thr = 1 / thr
    bpr, aat = (best > inv_thr).float().mean(), (x > inv_thr).float().mean() * len(k)
    if verbose:
        sizes = ", ".join(f"{round(float(a))},{round(float(b))}" for a, b in k)
        LOGGER.info(f"{colorstr(PREFIX)}thr={inv_thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past "
                    f"thr\n{colorstr(PREFIX)}n={len(k)}, img_size={img_size}, metric_all={x.mean():.3f}/"
                    f"{best.mean():.3f}-mean/best, past_thr={x[x > inv_thr].mean():.3f}-mean: {sizes}")
    return k
