"""Hyperparameter evolution (train.py --evolve N): mutate the best hyps so far, train, keep score in evolve.csv.

Layout as in YOLOv5: runs/evolve/expN holds evolve.csv (one row per generation: 7 result columns, then the hyps),
hyp_evolve.yaml (the best generation so far, rewritten after each one), evolve.png and the runs' results.csv.
"""

from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from utils.files import atomic_write
from utils.logger import LOGGER, colorstr
from utils.metrics import fitness

# key: (mutation scale 0-1, lower limit, upper limit); YOLOv5's search ranges
META = {
    "lr0": (1, 1e-5, 1e-1), "lrf": (1, 0.01, 1.0), "momentum": (0.3, 0.6, 0.98), "weight_decay": (1, 0.0, 0.001),
    "warmup_epochs": (1, 0.0, 5.0), "warmup_momentum": (1, 0.0, 0.95), "warmup_bias_lr": (1, 0.0, 0.2),
    "box": (1, 0.02, 0.2), "cls": (1, 0.2, 4.0), "cls_pw": (1, 0.5, 2.0), "obj": (1, 0.2, 4.0),
    "obj_pw": (1, 0.5, 2.0), "iou_t": (0, 0.1, 0.7), "anchor_t": (1, 2.0, 8.0), "fl_gamma": (0, 0.0, 2.0),
    "hsv_h": (1, 0.0, 0.1), "hsv_s": (1, 0.0, 0.9), "hsv_v": (1, 0.0, 0.9), "degrees": (1, 0.0, 45.0),
    "translate": (1, 0.0, 0.9), "scale": (1, 0.0, 0.9), "shear": (1, 0.0, 10.0), "perspective": (0, 0.0, 0.001),
    "flipud": (1, 0.0, 1.0), "fliplr": (0, 0.0, 1.0), "mosaic": (1, 0.0, 1.0), "mixup": (1, 0.0, 1.0),
    "copy_paste": (1, 0.0, 1.0),
}
RESULT_COLS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
               "val/box_loss", "val/obj_loss", "val/cls_loss")


def mutate(parent: dict, rng: np.random.Generator, mp: float = 0.8, s: float = 0.2) -> dict:
    """Multiply each evolvable hyp by a random gain (prob mp, sigma s, clipped 0.3-3.0), then clip to limits."""
    keys = [k for k in META if k in parent]
    scales = np.array([META[k][0] for k in keys])
    gains = np.ones(len(keys))
    while np.all(gains == 1):  # make sure something changes
        gains = (scales * (rng.random(len(keys)) < mp) * rng.standard_normal(len(keys)) * rng.random() * s + 1)
        gains = gains.clip(0.3, 3.0)
    child = dict(parent)
    for k, g in zip(keys, gains):
        lo, hi = META[k][1:]
        child[k] = round(float(np.clip(parent[k] * g, lo, hi)), 5)
    return child


def read_evolve_csv(csv: Path) -> tuple:
    """evolve.csv -> (hyp names, rows (n, 7 + n_hyps)); the header names the columns, padded with spaces."""
    with open(csv) as f:
        header = [h.strip() for h in f.readline().split(",")]
    x = np.loadtxt(csv, ndmin=2, delimiter=",", skiprows=1)
    return header[len(RESULT_COLS):], x


def select_parent(csv: Path, n: int = 5) -> dict:
    """Fitness-weighted blend of the best n generations of evolve.csv (YOLOv5's 'weighted' parent)."""
    keys, x = read_evolve_csv(csv)
    n = min(n, len(x))
    x = x[np.argsort(-fitness(x))][:n]
    w = fitness(x) - fitness(x).min() + 1e-6
    row = (x * w.reshape(n, 1)).sum(0) / w.sum()
    return {k: float(v) for k, v in zip(keys, row[len(RESULT_COLS):])}


def evolve(hyp: dict, opt, device, train_fn: Callable) -> None:
    """Run opt.evolve generations of train_fn(hyp, opt, device) -> results; files in opt.save_dir."""
    save_dir = Path(opt.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    opt.noval, opt.nosave = True, True  # validate only each run's final epoch; write no checkpoints
    csv = save_dir / "evolve.csv"
    rng = np.random.default_rng(opt.seed)
    keys = [k for k in hyp if k != "anchors"]  # anchors (a count or a list) are kept as given
    for gen in range(opt.evolve):
        child = mutate({**hyp, **select_parent(csv)}, rng) if csv.exists() else dict(hyp)
        LOGGER.info(colorstr("evolve: ") + f"generation {gen + 1}/{opt.evolve}: " +
                    ", ".join(f"{k}={child[k]:g}" for k in keys))
        results = train_fn(dict(child), opt, device)
        append_row(csv, results, {k: child[k] for k in keys})
        save_best(csv, save_dir / "hyp_evolve.yaml", {k: v for k, v in hyp.items() if k == "anchors"})
    names, x = read_evolve_csv(csv)
    plot_evolve(x, names, save_dir / "evolve.png")
    LOGGER.info(f"Hyperparameter evolution finished {opt.evolve} generations\nResults saved to "
                f"{colorstr('bold', save_dir)}\nUse the best hyperparameters: python train.py --hyp "
                f"{save_dir / 'hyp_evolve.yaml'}")


def append_row(csv: Path, results, hyp: dict) -> None:
    """One generation: 7 results then the hyps, '%20.5g' like results.csv (header '%20s' on first write)."""
    header = "" if csv.exists() else ",".join("%20s" % k for k in (*RESULT_COLS, *hyp)) + "\n"
    with open(csv, "a") as f:
        f.write(header + ",".join("%20.5g" % float(v) for v in (*results, *hyp.values())) + "\n")


def save_best(csv: Path, file: Path, fixed: dict) -> None:
    """Write the best generation's hyps (plus fixed entries such as anchors) as a --hyp file with a summary."""
    names, x = read_evolve_csv(csv)
    f = fitness(x)
    i = int(np.argmax(f))
    best = {k: round(float(v), 5) for k, v in zip(names, x[i, len(RESULT_COLS):])}
    head = (f"# Hyperparameter evolution (train.py --evolve): best of {len(x)} generations is generation {i + 1}\n"
            f"# fitness (0.1 mAP50 + 0.9 mAP50-95) {f[i]:.5g}; " +
            ", ".join(f"{k} {v:.5g}" for k, v in zip(RESULT_COLS, x[i, :len(RESULT_COLS)])) + "\n")
    atomic_write(file, lambda fh: fh.write(head + yaml.safe_dump({**best, **fixed}, sort_keys=False)), mode="w")


def plot_evolve(x: np.ndarray, keys: list, file: Path) -> None:
    """One scatter per hyperparameter: value vs fitness, the best generation marked (never raises)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        f = fitness(x)
        j = int(np.argmax(f))
        cols = 6
        rows = max(int(np.ceil(len(keys) / cols)), 1)
        fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.2 * rows), tight_layout=True, squeeze=False)
        for ax in axes.ravel()[len(keys):]:
            ax.axis("off")
        for i, (k, ax) in enumerate(zip(keys, axes.ravel())):
            v = x[:, len(RESULT_COLS) + i]
            ax.scatter(v, f, c=f, cmap="viridis", s=10)
            ax.plot(v[j], f[j], "k+", markersize=12)
            ax.set_title(f"{k} = {v[j]:.3g}", fontsize=8)
        fig.savefig(file, dpi=120)
        plt.close(fig)
    except Exception as e:  # a plot never fails the evolution
        LOGGER.warning(f"WARNING: evolve plot failed: {e}")
