"""The built-in offline dataset 'shapes': 8 shape classes drawn on varied backgrounds, written in YOLO format.

Deterministic (same seed -> same bytes), numpy + OpenCV only. `python utils/synthetic.py --out DIR` writes
DIR/images/{train,val} and DIR/labels/{train,val}; `--samples` rewrites the sample images in data/images.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.files import ROOT  # noqa: E402

CLASSES = ("circle", "triangle", "square", "star", "cross", "ring", "hexagon", "arrow")
MIN_OBJECT = 10  # px, smallest object side drawn
EMPTY_FRACTION = 0.06  # share of images without objects
SIDES = (320, 640)  # image width and height are each drawn from this range


# ---------------------------------------------------------------- shapes: unit outlines, then a rendered alpha mask
def _regular(n: int, start_deg: float) -> np.ndarray:
    a = np.deg2rad(start_deg + np.arange(n) * 360 / n)
    return np.stack((np.cos(a), -np.sin(a)), 1)


def _outline(cls: str, rng: np.random.Generator) -> list:
    """Polygons (unit scale, centred) whose even-odd fill is the shape; ellipses are (rx, ry) tuples."""
    if cls == "circle":
        return [(1.0, rng.uniform(0.85, 1.0))]
    if cls == "ring":
        ry, inner = rng.uniform(0.85, 1.0), rng.uniform(0.45, 0.7)
        return [(1.0, ry), (inner, ry * inner)]
    if cls == "triangle":
        return [_regular(3, 90) + rng.uniform(-0.08, 0.08, (3, 2))]
    if cls == "square":
        return [_regular(4, 45) * [rng.uniform(0.85, 1.15), 1.0]]
    if cls == "hexagon":
        return [_regular(6, 0)]
    if cls == "star":
        pts = _regular(10, 90)
        pts[1::2] *= rng.uniform(0.38, 0.5)
        return [pts]
    if cls == "cross":
        t = rng.uniform(0.22, 0.36)
        return [np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t],
                          [-1, -t], [-t, -t]])]
    t, hh, neck = rng.uniform(0.14, 0.24), rng.uniform(0.45, 0.62), rng.uniform(0.0, 0.35)  # arrow
    return [np.array([[-1, -t], [neck, -t], [neck, -hh], [1, 0], [neck, hh], [neck, t], [-1, t]])]


def _shape_mask(cls: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased uint8 alpha mask (P, P) of one shape of the given radius, randomly rotated, centred."""
    size = int(math.ceil(radius * 2.4)) + 4
    mask = np.zeros((size, size), np.uint8)
    angle = rng.uniform(0, 360)
    c, s, sub = math.cos(math.radians(angle)), math.sin(math.radians(angle)), 16  # 4 bits of sub-pixel precision
    centre = np.array([size / 2, size / 2])
    for k, part in enumerate(_outline(cls, rng)):
        value = 255 if k == 0 else 0  # second part of a ring is its hole
        if isinstance(part, tuple):
            axes = (max(1, round(part[0] * radius * sub)), max(1, round(part[1] * radius * sub)))
            cv2.ellipse(mask, tuple(int(v) for v in np.round(centre * sub)), axes, angle, 0, 360, value, -1,
                        cv2.LINE_AA, 4)
        else:
            pts = part @ np.array([[c, -s], [s, c]]) * radius + centre
            cv2.fillPoly(mask, [np.round(pts * sub).astype(np.int32)], value, cv2.LINE_AA, 4)
    return mask


# ---------------------------------------------------------------- colours, fills and backgrounds
def _colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(0, 256), rng.integers(40, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _contrasting(rng: np.random.Generator, against: np.ndarray, min_dist: float = 90.0) -> np.ndarray:
    """A random colour at least min_dist (BGR distance) from `against`, so objects stay visible."""
    for _ in range(20):
        col = _colour(rng)
        if np.linalg.norm(col - against) >= min_dist:
            return col
    return np.where(against > 127, 20.0, 235.0).astype(np.float32)


def _ramp(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 1) values in 0..1 along a random direction."""
    a = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = x * math.cos(a) + y * math.sin(a)
    return ((t - t.min()) / max(float(np.ptp(t)), 1.0))[..., None]


def _pattern(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 1) 0/1 stripes or checks with a random period and angle."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    period, a = rng.uniform(4, 16), rng.uniform(0, math.pi)
    u, v = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
    stripes = np.floor(u / period) % 2
    if rng.random() < 0.5:
        stripes = (stripes + np.floor(v / period)) % 2
    return stripes[..., None]


def _fill(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """(h, w, 3) float fill around colour `base`: solid, gradient, stripes/checks or noisy."""
    kind = rng.integers(0, 4)
    other = np.clip(base + rng.uniform(-70, 70, 3), 0, 255)
    if kind == 0:
        return np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    if kind == 1:
        return base + (other - base) * _ramp(rng, h, w)
    if kind == 2:
        return base + (other - base) * _pattern(rng, h, w)
    return base + 14 * rng.standard_normal((h, w, 3), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) low-frequency colour noise."""
    gh, gw = rng.integers(2, 10, 2)
    small = rng.uniform(0, 255, (gh, gw, 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _clutter(img: np.ndarray, rng: np.random.Generator) -> None:
    """Draw lines, scribbles, dots and irregular blobs (not any of the classes) onto img in place."""
    h, w = img.shape[:2]
    for _ in range(rng.integers(0, 12)):
        col = tuple(float(v) for v in _colour(rng))
        p = rng.uniform(0, 1, 2) * [w, h]
        walk = (p + np.cumsum(rng.normal(0, 25, (rng.integers(2, 8), 2)), 0)).astype(np.int32)
        cv2.polylines(img, [walk], False, col, int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 30)):
        col = tuple(float(v) for v in _colour(rng))
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 3)), col, -1)
    for _ in range(rng.integers(0, 3)):  # potato-shaped blobs: smooth, irregular, never a regular polygon
        r = rng.uniform(8, min(h, w) / 6)
        a = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        wobble = 1 + sum(rng.uniform(0.12, 0.3) * np.sin(k * a + rng.uniform(0, 6.3)) for k in (2, 3))
        pts = np.stack((np.cos(a), np.sin(a)), 1) * (r * wobble)[:, None] + rng.uniform(0, 1, 2) * [w, h]
        cv2.fillPoly(img, [pts.astype(np.int32)], tuple(float(v) for v in _colour(rng)), cv2.LINE_AA)


def _background(rng: np.random.Generator, h: int, w: int, clutter: bool = True) -> np.ndarray:
    """(h, w, 3) float32 background: gradient, smooth noise or texture, with clutter on 70 % of them (none when
    `clutter` is False; the random stream is the same either way up to the clutter itself)."""
    kind = rng.integers(0, 4)
    c1, c2 = _colour(rng), _colour(rng)
    if kind == 0:
        img = c1 + (c2 - c1) * _ramp(rng, h, w)
    elif kind == 1:
        img = _smooth_noise(rng, h, w)
    elif kind == 2:
        img = c1 + (c2 - c1) * 0.35 * _pattern(rng, h, w) + 4 * rng.standard_normal((h, w, 1), dtype=np.float32)
    else:
        img = 0.5 * _smooth_noise(rng, h, w) + 0.5 * (c1 + (c2 - c1) * _ramp(rng, h, w))
    img = np.ascontiguousarray(img, dtype=np.float32)
    if rng.random() < 0.7 and clutter:
        _clutter(img, rng)
    return img


# ---------------------------------------------------------------- placing objects
def _place(img: np.ndarray, mask: np.ndarray, radius: float, rng: np.random.Generator, boxes: list):
    """Try a random position for `mask`; paint it and return its visible tight box (x1, y1, x2, y2) in pixels, or
    None when the spot overlaps other objects or hides too much of the shape outside the image."""
    h, w = img.shape[:2]
    m = mask.shape[0]
    cx = rng.uniform(min(0.3 * radius, w / 2), max(w - 0.3 * radius, w / 2))  # shapes may be cut by the border
    cy = rng.uniform(min(0.3 * radius, h / 2), max(h - 0.3 * radius, h / 2))
    x0, y0 = int(round(cx - m / 2)), int(round(cy - m / 2))
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + m, w), min(y0 + m, h)
    if xb <= xa or yb <= ya:
        return None
    part = mask[ya - y0:yb - y0, xa - x0:xb - x0]
    solid = part >= 128
    if solid.sum() < 0.6 * (mask >= 128).sum():
        return None
    ys, xs = np.nonzero(solid)
    box = (xa + xs.min(), ya + ys.min(), xa + xs.max() + 1, ya + ys.max() + 1)
    if box[2] - box[0] < 4 or box[3] - box[1] < 4:
        return None
    for b in boxes:  # at most a little overlap: labels stay unambiguous
        iw, ih = min(box[2], b[2]) - max(box[0], b[0]), min(box[3], b[3]) - max(box[1], b[1])
        if iw > 0 and ih > 0 and iw * ih > 0.15 * min((box[2] - box[0]) * (box[3] - box[1]),
                                                        (b[2] - b[0]) * (b[3] - b[1])):
            return None
    region = img[ya:yb, xa:xb]
    alpha = (part.astype(np.float32) / 255)[..., None]
    colour = _contrasting(rng, region[solid].mean(0))
    region[:] = region * (1 - alpha) + _fill(rng, yb - ya, xb - xa, colour) * alpha
    return box


def _object_sizes(rng: np.random.Generator, h: int, w: int, min_object: int = MIN_OBJECT) -> list:
    """Object radii: log-uniform from min_object px to most of the image, at most one very large object."""
    if rng.random() < EMPTY_FRACTION:
        return []
    hi = 0.9 * min(h, w)
    sizes = np.exp(rng.uniform(math.log(min_object), math.log(hi), int(rng.integers(1, 12))))
    big = np.nonzero(sizes > 0.45 * min(h, w))[0][1:]  # keep one big object, shrink the others
    sizes[big] = rng.uniform(min_object, 0.3 * min(h, w), len(big))
    return sorted((sizes / 2).tolist(), reverse=True)  # big ones first: they are the hardest to fit


def render_image(rng: np.random.Generator, w: int, h: int, debug: bool = False, min_object: int = MIN_OBJECT,
                 clutter: bool = True):
    """Draw one image -> (BGR uint8 (h, w, 3), labels float (n, 5) [cls, x, y, w, h] normalised).

    `min_object` is the smallest object side drawn (px); `clutter=False` leaves out the distractors (lines, dots,
    blobs). With debug, also returns the background alone and the image before global noise/blur (for tests).
    """
    img = _background(rng, h, w, clutter)
    background = img.copy() if debug else None
    boxes, labels = [], []
    for radius in _object_sizes(rng, h, w, min_object):
        cls = int(rng.integers(0, len(CLASSES)))
        mask = _shape_mask(CLASSES[cls], radius, rng)
        for _ in range(30):
            box = _place(img, mask, radius, rng, boxes)
            if box is not None:
                boxes.append(box)
                x1, y1, x2, y2 = box
                labels.append([cls, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h])
                break
    clean = img.copy() if debug else None
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.2))
    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15)
    if rng.random() < 0.5:
        img += rng.uniform(2, 6) * rng.standard_normal(img.shape, dtype=np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8), np.array(labels, dtype=np.float64).reshape(-1, 5)
    return (*out, background, clean) if debug else out


# ---------------------------------------------------------------- writing the dataset
def _write_one(job: tuple) -> None:
    """Render and write image i of a split (its own RNG stream, so any worker order gives the same bytes)."""
    root, split, split_id, i, seed, sides, min_object, clutter = job
    rng = np.random.default_rng([seed, split_id, i])
    w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
    if rng.random() < 0.25:
        h = w
    img, labels = render_image(rng, w, h, min_object=min_object, clutter=clutter)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))])
    name = f"{split}_{i:05d}"
    (root / "images" / split / f"{name}.jpg").write_bytes(buf.tobytes())
    rows = "".join(f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, x, y, bw, bh in labels)
    (root / "labels" / split / f"{name}.txt").write_text(rows)


def _move_into(tmp: Path, root: Path, splits: tuple) -> None:
    """Move the freshly written split folders from tmp into root, replacing old ones."""
    if not root.exists():
        os.replace(tmp, root)
        return
    for kind in ("images", "labels"):
        for split in splits:
            dst = root / kind / split
            shutil.rmtree(dst, ignore_errors=True)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / kind / split, dst)
    shutil.rmtree(tmp, ignore_errors=True)


def generate_shapes_dataset(root, n_train: int = 360, n_val: int = 80, seed: int = 0, workers: int = 0,
                            train_sides: tuple = SIDES, min_object: int = MIN_OBJECT, clutter: bool = True) -> Path:
    """Write the shapes dataset under `root` (images/{train,val}, labels/{train,val}); returns root.

    `train_sides` is the (min, max) px range of the training images' width and height; the val split always uses
    SIDES, so datasets that differ only in their training images share the same val images. `min_object` (px) and
    `clutter` change both splits (a different, easier task: see data/shapes-clean.yaml).

    The splits are built in a temporary sibling folder and moved into place at the end, so an interrupted run
    never leaves a half-written dataset behind.
    """
    lo, hi = (int(v) for v in train_sides)
    if not 4 * MIN_OBJECT <= lo <= hi:
        raise ValueError(f"train_sides {tuple(train_sides)}: give MIN <= MAX, MIN at least {4 * MIN_OBJECT} px")
    if not MIN_OBJECT <= min_object <= min(lo, SIDES[0]) // 4:
        raise ValueError(f"min_object {min_object}: give {MIN_OBJECT}-{min(lo, SIDES[0]) // 4} px (at most a quarter "
                         f"of the smallest image side)")
    root = Path(root).resolve()
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    splits = (("train", 0, n_train), ("val", 1, n_val))
    for split, _, _ in splits:
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
    sides = {"train": (lo, hi), "val": SIDES}
    jobs = [(tmp, split, sid, i, seed, sides[split], int(min_object), bool(clutter))
            for split, sid, n in splits for i in range(n)]
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers > 1 and len(jobs) > 16:
        with Pool(workers) as pool:
            pool.map(_write_one, jobs, chunksize=8)
    else:
        for job in jobs:
            _write_one(job)
    _move_into(tmp, root, tuple(s for s, _, _ in splits))
    return root


def write_sample_images(out_dir=ROOT / "data" / "images", seed: int = 7, n: int = 4, max_bytes: int = 100_000) -> list:
    """Write n sample JPEGs (< max_bytes each) of the shapes classes for detect's default source."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        rng = np.random.default_rng([seed, 9, i])
        img, _ = render_image(rng, 640, 480 if i % 2 == 0 else 416)
        for q in (90, 85, 80, 75, 70, 60, 50):
            buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1]
            if buf.size < max_bytes:
                break
        f = out_dir / f"shapes{i + 1}.jpg"
        f.write_bytes(buf.tobytes())
        files.append(f)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the built-in 'shapes' detection dataset")
    parser.add_argument("--out", default=str(ROOT.parent / "datasets" / "shapes"), help="dataset root folder")
    parser.add_argument("--train", type=int, default=360, help="number of training images")
    parser.add_argument("--val", type=int, default=80, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-sides", type=int, nargs=2, default=SIDES, metavar=("MIN", "MAX"),
                        help="px range of the training images' width and height")
    parser.add_argument("--min-object", type=int, default=MIN_OBJECT, help="smallest object side drawn, px")
    parser.add_argument("--no-clutter", action="store_true", help="no distractor lines, dots and blobs")
    parser.add_argument("--samples", action="store_true", help="rewrite the sample images in data/images instead")
    opt = parser.parse_args()
    if opt.samples:
        print("\n".join(map(str, write_sample_images())))
    else:
        try:
            print(generate_shapes_dataset(opt.out, opt.train, opt.val, opt.seed, train_sides=opt.train_sides,
                                          min_object=opt.min_object, clutter=not opt.no_clutter))
        except ValueError as e:
            parser.error(str(e))


if __name__ == "__main__":
    main()
