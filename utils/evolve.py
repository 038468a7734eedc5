"""Hyperparameter evolution (train.py --evolve N): mutate the best hyps so far, train, keep score in evolve.csv."""

from pathlib import Path

import numpy as np

from utils.files import yaml_save
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


def select_parent(csv: Path, keys: list, rng: np.random.Generator, n: int = 5) -> dict:
    """Fitness-weighted blend of the best n rows of evolve.csv."""
    x = np.loadtxt(csv, ndmin=2, delimiter=",", skiprows=1)
    n = min(n, len(x))
    x = x[np.argsort(-fitness(x))][:n]
    w = fitness(x) - fitness(x).min() + 1e-6
    row = (x * w.reshape(n, 1)).sum(0) / w.sum()
    return {k: float(v) for k, v in zip(keys, row[len(RESULT_COLS):])}


def evolve(hyp: dict, opt, device, train_fn) -> None:
    """Run opt.evolve generations of train_fn with mutated hyps; results in runs/evolve/expN."""
    save_dir = Path(opt.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    opt.noval, opt.nosave = True, True
    keys = list(hyp.keys())
    csv = save_dir / "evolve.csv"
    rng = np.random.default_rng(opt.seed)
    for gen in range(opt.evolve):
        base = select_parent(csv, [k for k in keys if k != "anchors"], rng) if csv.exists() else hyp
        child = mutate({**hyp, **base}, rng) if csv.exists() or gen > 0 else dict(hyp)
        LOGGER.info(colorstr("evolve: ") + f"generation {gen + 1}/{opt.evolve}")
        opt.save_dir = str(save_dir / f"gen{gen}")
        results = train_fn(dict(child), opt, device)
        _append(csv, results, {k: v for k, v in child.items() if k != "anchors"})
    opt.save_dir = str(save_dir)
    x = np.loadtxt(csv, ndmin=2, delimiter=",", skiprows=1)
    best = x[np.argmax(fitness(x))]
    best_hyp = {k: round(float(v), 5) for k, v in zip([k for k in keys if k != "anchors"], best[len(RESULT_COLS):])}
    yaml_save(save_dir / "hyp_evolve.yaml", best_hyp)
    _plot(x, [k for k in keys if k != "anchors"], save_dir / "evolve.png")
    LOGGER.info(f"Hyperparameter evolution finished {opt.evolve} generations\nResults saved to "
                f"{colorstr('bold', save_dir)}\nUse the best hyperparameters: python train.py --hyp "
                f"{save_dir / 'hyp_evolve.yaml'}")


def _append(csv: Path, results, hyp: dict) -> None:
    header = "" if csv.exists() else ",".join("%20s" % k for k in (*RESULT_COLS, *hyp)) + "\n"
    with open(csv, "a") as f:
        f.write(header + ",".join("%20.5g" % float(v) for v in (*results, *hyp.values())) + "\n")


def _plot(x: np.ndarray, keys: list, file: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        f = fitness(x)
        cols = 6
        rows = int(np.ceil(len(keys) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.2 * rows), tight_layout=True)
        for i, (k, ax) in enumerate(zip(keys, axes.ravel())):
            ax.scatter(x[:, len(RESULT_COLS) + i], f, c=f, cmap="viridis", s=10)
            ax.set_title(k, fontsize=8)
        fig.savefig(file, dpi=120)
        plt.close(fig)
    except Exception as e:  # a plot never fails the evolution
        LOGGER.warning(f"WARNING: evolve plot failed: {e}")


