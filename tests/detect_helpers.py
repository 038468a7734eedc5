"""Shared by the detect, hub, export and CUDA tests: tiny images, a random model made to detect things, checkpoints
in this project's format and in YOLOv5's legacy-pickle format, an independent reference inference, and detect.py
runs compared across precisions."""

import logging
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from models.yolo import DetectionModel
from utils.augmentations import letterbox
from utils.boxes import scale_boxes
from models.checkpoint import save_checkpoint
from utils.logger import LOGGER
from utils.nms import non_max_suppression

NAMES = {0: "circle", 1: "square", 2: "star"}
SHAPES = ((64, 96), (64, 64), (96, 80))  # (h, w) of the test images
IMGSZ = 64


def make_images(folder: Path) -> list:
    """Three small PNGs (lossless, so every decoder sees the same pixels): shapes on grey plus noise."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (h, w) in enumerate(SHAPES):
        rng = np.random.default_rng(i)
        im = np.full((h, w, 3), 114, np.uint8)
        cv2.circle(im, (w // 3, h // 2), h // 4, (0, 0, 255), -1)
        cv2.rectangle(im, (w // 2, h // 6), (w - 4, h // 2 + 4 * i), (255, 0, 0), -1)
        im = (im * 0.7 + rng.integers(0, 80, im.shape)).astype(np.uint8)
        files.append(folder / f"im{i}.png")
        cv2.imwrite(str(files[-1]), im)
    return files


def _inputs(files) -> list:
    out = []
    for f in files:
        im = letterbox(cv2.imread(str(f)), IMGSZ, stride=32, auto=True)[0]
        out.append(torch.from_numpy(im[..., ::-1].transpose(2, 0, 1).copy()).float()[None] / 255)
    return out


@torch.no_grad()
def lively_model(cfg: str, files, seed: int = 0, frac: float = 0.03) -> DetectionModel:
    """A random-init model that detects a handful of boxes per image at conf 0.25.

    A fresh model's outputs barely depend on the image, so BatchNorm statistics are re-estimated on the images,
    the head's logits are scaled to std 2 and the objectness bias is set so ~frac of the anchors fire.
    """
    torch.manual_seed(seed)
    model = DetectionModel(cfg, nc=len(NAMES))
    model.names = dict(NAMES)
    xs = _inputs(files)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration images
    model.train()
    for x in xs:
        model(x)
    for bn in bns:
        bn.momentum = 0.03
    model.eval()
    d = model.model[-1]
    ys = [model(x)[1] for x in xs]
    for i, conv in enumerate(d.m):
        b = conv.bias.view(d.na, -1)
        logits = torch.cat([(y[i] - b.view(d.na, 1, 1, -1)).flatten(0, 3) for y in ys])  # without bias, (n, no)
        sd = logits.std(0)
        conv.weight /= (sd / 2).repeat(d.na).view(-1, 1, 1, 1)
        b[:, 4] = -torch.quantile(logits[:, 4] / sd[4] * 2, 1 - frac)
        b[:, 5:] = 0
    return model


def save_own(model: nn.Module, path: Path) -> Path:
    """This project's checkpoint layout (loads with weights_only=True, no trust needed)."""
    save_checkpoint({"epoch": -1, "best_fitness": None, "model": deepcopy(model).half(), "ema": None,
                     "updates": None, "optimizer": None}, path)
    return path


def save_legacy(model: nn.Module, path: Path) -> Path:
    """A YOLOv5 v7.0 last.pt: whole FP16 modules pickled (ema = the real model, 'model' deliberately different),
    a numpy best_fitness and an opt dict. Loading it needs trust."""
    other = deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)  # if the loader used 'model' instead of 'ema', the detections would differ
    ckpt = {"epoch": 3, "best_fitness": np.array([0.123]), "model": other.half(), "ema": deepcopy(model).half(),
            "updates": 12, "optimizer": {"state": {}, "param_groups": []}, "opt": {"imgsz": 64, "epochs": 4},
            "git": {"remote": None, "branch": None, "commit": None}, "date": "2022-11-22T00:00:00"}
    torch.save(ckpt, path)
    return path


@torch.no_grad()
def reference(model: nn.Module, file: Path, conf: float = 0.25, classes=None) -> torch.Tensor:
    """Detections (n, 6) [xyxy px in the original image, conf, cls] computed directly, as the checkpoint's model
    would give them after an FP16 round trip and fusing."""
    m = deepcopy(model).half().float().fuse().eval()
    im0 = cv2.imread(str(file))
    x = _inputs([file])[0]
    det = non_max_suppression(m(x), conf, 0.45, classes, max_det=1000)[0]
    det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], im0.shape).round()
    return det


def read_rows(txt: Path) -> np.ndarray:
    """labels/*.txt -> (n, 5|6) float array."""
    return np.array([[float(v) for v in line.split()] for line in txt.read_text().splitlines()]).reshape(-1, 6)


def rows_to_xyxy(rows: np.ndarray, shape) -> np.ndarray:
    """Normalised cls x y w h conf rows -> (n, 6) [x1, y1, x2, y2, conf, cls] pixels for an image (h, w)."""
    h, w = shape[:2]
    xc, yc, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    return np.stack([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2, rows[:, 5], rows[:, 0]], 1)


def assert_same_detections(a, b, px: float = 1.0, conf: float = 1e-3) -> None:
    """Same boxes (within px), classes and confidences (within conf), in any order."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 6), np.asarray(b, dtype=np.float64).reshape(-1, 6)
    assert len(a) == len(b), f"{len(a)} vs {len(b)} detections"
    assert len(a), "nothing to compare: the test model should detect something here"
    unused = list(range(len(b)))
    for row in a:
        dist = [np.abs(row[:4] - b[j, :4]).max() + 100 * abs(row[4] - b[j, 4]) + 1e3 * (row[5] != b[j, 5])
                for j in unused]
        j = unused.pop(int(np.argmin(dist)))
        assert np.abs(row[:4] - b[j, :4]).max() <= px, f"box {row} vs {b[j]}"
        assert abs(row[4] - b[j, 4]) <= conf and row[5] == b[j, 5], f"detection {row} vs {b[j]}"


def detect_labels(weights, tmp_path: Path, name: str, source=None, **kw) -> dict:
    """detect.run --save-txt --save-conf over `source` (default: the repo's sample images) ->
    {image stem: (n, 6) array of (cls, x, y, w, h, conf)}, boxes normalised."""
    import detect
    source = source or Path(__file__).resolve().parents[1] / "data" / "images"
    run = detect.run(weights=weights, source=source, save_txt=True, save_conf=True, nosave=True, project=tmp_path,
                     name=name, **kw)
    return {f.stem: np.loadtxt(f, ndmin=2) for f in sorted((run / "labels").glob("*.txt"))}


def assert_close_detections(ref: dict, other: dict, box_tol: float, conf_tol: float, margin: float = 0.05):
    """For detections of two precisions (detect_labels' dicts): each one clearly above detect.py's 0.25 threshold
    (by `margin`, so that one near it may appear on one side only) has one on the other side with the same class,
    xywh within box_tol (fraction of the image) and conf within conf_tol; both ways round."""
    assert sum(len(v) for v in ref.values()), "the reference found nothing: the comparison would be empty"
    for a, b in ((ref, other), (other, ref)):
        for stem, rows in a.items():
            for r in rows[rows[:, 5] >= 0.25 + margin]:
                cand = b.get(stem, np.zeros((0, 6)))
                cand = cand[cand[:, 0] == r[0]]
                assert len(cand), f"{stem}: {r} has no detection of its class on the other side"
                k = int(np.abs(cand[:, 1:5] - r[1:5]).max(1).argmin())
                assert np.abs(cand[k, 1:5] - r[1:5]).max() <= box_tol and abs(cand[k, 5] - r[5]) <= conf_tol, \
                    f"{stem}: {r} vs {cand[k]}"


@contextmanager
def captured_log():
    """Collect the project logger's messages (it does not propagate once set_logging() has run)."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    old = LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    try:
        yield records
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(old)
