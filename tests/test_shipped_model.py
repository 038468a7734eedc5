"""The shipped default model yolov5n_shuffle_cpu.pt: checkpoint format, size, safe loading, and that detect.py at its
defaults boxes and names shapes it has never seen (drawn here by the dataset generator's own shape renderer)."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT
import detect
from detect_helpers import read_rows, rows_to_xyxy
from models.yolo import DetectionModel
from models.checkpoint import safe_globals
from utils.boxes import box_iou
from utils.synthetic import CLASSES, _shape_mask

WEIGHTS = ROOT / "yolov5n_shuffle_cpu.pt"
CKPT_KEYS = ["epoch", "best_fitness", "model", "ema", "updates", "optimizer", "opt", "git", "date"]


def draw_known_shapes(seed: int = 0, radius: int = 50) -> tuple:
    """All 8 classes on a 4 x 2 grid of a 640 x 480 grey gradient, randomly rotated and coloured.
    Returns (BGR uint8 image (480, 640, 3), (8, 5) array [cls, x1, y1, x2, y2] of tight pixel boxes)."""
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    img = np.repeat(np.linspace(90, 170, w, dtype=np.float32)[None, :, None], h, 0).repeat(3, 2)
    labels = []
    for k, name in enumerate(CLASSES):
        mask = _shape_mask(name, radius, rng)
        m = mask.shape[0]
        x0, y0 = 80 + 160 * (k % 4) - m // 2, 120 + 240 * (k // 4) - m // 2
        alpha = (mask.astype(np.float32) / 255)[..., None]
        colour = rng.choice([(20, 20, 200), (200, 40, 20), (30, 160, 30), (10, 10, 10), (240, 240, 240)])
        region = img[y0:y0 + m, x0:x0 + m]
        region[:] = region * (1 - alpha) + np.array(colour, np.float32) * alpha
        ys, xs = np.nonzero(mask >= 128)
        labels.append([k, x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
    return img.clip(0, 255).astype(np.uint8), np.array(labels, np.float64)


def test_shipped_checkpoint_format_and_size():
    assert WEIGHTS.stat().st_size <= 5 * 1024 ** 2
    with torch.serialization.safe_globals(safe_globals()):
        ckpt = torch.load(WEIGHTS, map_location="cpu", weights_only=True)  # no arbitrary pickle code needed
    assert list(ckpt) == CKPT_KEYS
    assert ckpt["epoch"] == -1 and all(ckpt[k] is None for k in ("best_fitness", "ema", "updates", "optimizer"))
    model = ckpt["model"]
    assert isinstance(model, DetectionModel) and model.yaml["backbone"][1][2] == "ShuffleUnit"
    assert all(p.dtype == torch.float16 for p in model.parameters())
    assert model.nc == 8 and list(model.names.values()) == list(CLASSES)


def detect_known_shapes(seed: int, tmp_path: Path) -> tuple:
    """Run detect.py at its defaults on a drawn image -> ((8, 5) labels, (n, 8) detections IoU, (n, 6) detections
    [x1, y1, x2, y2, conf, cls])."""
    img, labels = draw_known_shapes(seed)
    source = tmp_path / f"known{seed}.png"
    cv2.imwrite(str(source), img)
    save_dir = detect.run(weights=WEIGHTS, source=source, project=tmp_path / "runs", save_txt=True, save_conf=True)
    txt = save_dir / "labels" / f"{source.stem}.txt"
    dets = rows_to_xyxy(read_rows(txt), img.shape) if txt.exists() else np.zeros((0, 6))
    iou = box_iou(torch.tensor(labels[:, 1:]), torch.tensor(dets[:, :4])).numpy().reshape(len(labels), len(dets))
    return labels, iou, dets


@pytest.mark.parametrize("seed", [0, 1])
def test_detect_finds_and_names_generated_shapes(seed, tmp_path):
    """Each of the 8 shapes has a box (IoU > 0.5), and the best-fitting box carries the shape's class."""
    labels, iou, dets = detect_known_shapes(seed, tmp_path)
    assert len(dets), "no detections"
    for i, cls in enumerate(labels[:, 0].astype(int)):
        j = int(iou[i].argmax())
        assert iou[i, j] > 0.5, f"{CLASSES[cls]} not found: {dets.round(1).tolist()}"
        assert int(dets[j, 5]) == cls, f"{CLASSES[cls]} named {CLASSES[int(dets[j, 5])]}"
