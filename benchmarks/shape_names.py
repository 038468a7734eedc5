"""Does detect.py name the built-in shapes right? Checks a model at detect.py's defaults against the generator's
ground truth, on data/images and on fresh images drawn like them (640 px wide, never in any training split).

    python benchmarks/shape_names.py                                   # the shipped yolov5n_shuffle_cpu.pt
    python benchmarks/shape_names.py --weights runs/train/exp/weights/best.pt --images 200

A shape counts as found when a box overlaps it with IoU > 0.5; every such box must carry the shape's class. Printed
for each set: shapes found with only right names, boxes with a wrong name, shapes missed, boxes on no shape
(distractors or background); for the fresh images also the same split by shape size and the most common confusions.
The fresh images come from the generator's own random streams [--seed, 5, i]: the datasets use [seed, 0 or 1, i] and
the sample images [7, 9, i], so none of them is a training or validation image.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import detect  # noqa: E402
from utils.boxes import box_iou, xywhn2xyxy  # noqa: E402
from utils.synthetic import CLASSES, render_image  # noqa: E402

SAMPLES_SEED = 7  # write_sample_images' seed: data/images/shapes{i+1}.jpg is render_image(rng [7, 9, i])
SIZE_BINS = ((0, 20, "< 20 px"), (20, 40, "20-40 px"), (40, 10 ** 6, ">= 40 px"))


def sample_truth() -> list:
    """[(image file, (n, 5) labels [cls, x, y, w, h] normalised)] for data/images, redrawn by the generator."""
    out = []
    for i in range(4):
        _, labels = render_image(np.random.default_rng([SAMPLES_SEED, 9, i]), 640, 480 if i % 2 == 0 else 416)
        out.append((ROOT / "data" / "images" / f"shapes{i + 1}.jpg", labels))
    return out


def fresh_images(folder: Path, n: int, seed: int) -> list:
    """n images drawn as data/images are (640 x 480 / 416, JPEG quality 90) -> [(file, labels)]."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img, labels = render_image(np.random.default_rng([seed, 5, i]), 640, 480 if i % 2 == 0 else 416)
        f = folder / f"fresh{i:04d}.jpg"
        cv2.imwrite(str(f), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append((f, labels))
    return out


def score(truth: list, labels_dir: Path) -> dict:
    """Compare detect.py's label files with the ground truth -> counts, per size bin and confusions."""
    c = {"shapes": 0, "right": 0, "wrong": 0, "missed": 0, "nothing": 0, "bins": {b[2]: [0, 0, 0] for b in SIZE_BINS},
         "confusions": Counter()}
    for file, gt in truth:
        h, w = cv2.imread(str(file)).shape[:2]
        txt = labels_dir / f"{file.stem}.txt"
        det = np.loadtxt(txt, ndmin=2) if txt.exists() else np.zeros((0, 6))
        gt_xyxy, det_xyxy = xywhn2xyxy(gt[:, 1:5], w, h), xywhn2xyxy(det[:, 1:5], w, h)
        hit = (box_iou(torch.tensor(gt_xyxy), torch.tensor(det_xyxy)) > 0.5).numpy().reshape(len(gt), len(det))
        for g, row in enumerate(gt):
            side = (gt_xyxy[g, 2:] - gt_xyxy[g, :2]).max()
            b = c["bins"][next(name for lo, hi, name in SIZE_BINS if lo <= side < hi)]
            names = det[hit[g], 0].astype(int)
            wrong = int((names != int(row[0])).sum())
            c["shapes"] += 1
            c["missed"] += not len(names)
            c["right"] += bool(len(names)) and not wrong
            c["wrong"] += wrong
            b[0 if not len(names) else (2 if wrong else 1)] += 1
            c["confusions"].update(f"{CLASSES[int(row[0])]} as {CLASSES[k]}" for k in names if k != int(row[0]))
        c["nothing"] += int((~hit.any(0)).sum())
    return c


def run_detect(weights: str, source: Path, project: Path, imgsz: int) -> Path:
    """detect.py at its defaults (conf 0.25, IoU 0.45, per-class NMS) -> its labels/ folder."""
    save_dir = detect.run(weights=weights, source=source, imgsz=(imgsz, imgsz), project=project, save_txt=True,
                          save_conf=True, nosave=True)
    return save_dir / "labels"


def report(title: str, c: dict, details: bool) -> None:
    print(f"{title}: {c['shapes']} shapes: {c['right']} found with only right names, {c['wrong']} wrong-name box(es), "
          f"{c['missed']} missed; {c['nothing']} box(es) on no shape")
    if details:
        print("  by size (missed / right / wrong name): " +
              ", ".join(f"{k} {v[0]}/{v[1]}/{v[2]}" for k, v in c["bins"].items()))
        print("  confusions: " + (", ".join(f"{k} {n}" for k, n in c["confusions"].most_common(6)) or "none"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(ROOT / "yolov5n_shuffle_cpu.pt"), help="model (any detect.py weights)")
    p.add_argument("--images", type=int, default=200, help="fresh images to draw (0: data/images only)")
    p.add_argument("--seed", type=int, default=13, help="first number of the fresh images' random streams")
    p.add_argument("--img", type=int, default=640, help="inference size (detect.py's default 640)")
    opt = p.parse_args(argv)
    if opt.images < 0:
        p.error(f"--images {opt.images}: give 0 or more")
    print(f"weights {opt.weights}, --img {opt.img}, conf 0.25, IoU 0.45 (detect.py's defaults)")
    with tempfile.TemporaryDirectory(prefix="shape_names_") as tmp:
        samples = sample_truth()
        report("data/images", score(samples, run_detect(opt.weights, ROOT / "data" / "images", Path(tmp), opt.img)),
               details=False)
        if opt.images:
            truth = fresh_images(Path(tmp) / "fresh", opt.images, opt.seed)
            labels = run_detect(opt.weights, Path(tmp) / "fresh", Path(tmp), opt.img)
            report(f"{opt.images} fresh images", score(truth, labels), details=True)


if __name__ == "__main__":
    main()
