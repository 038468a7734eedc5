"""Small training helpers: hyperparameter files, weight transfer, class weights, results.csv rows, AMP and git."""

import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from utils.files import ROOT, atomic_write, yaml_load
from utils.logger import LOGGER

HYP_DEFAULTS_FILE = ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"  # YOLOv5 v7.0's values for keys a file omits


def hyp_defaults() -> dict:
    """data/hyps/hyp.scratch-low.yaml as a dict: the values every hyperparameter takes when a file leaves it out."""
    return yaml_load(HYP_DEFAULTS_FILE)


HYP_KEYS = tuple(hyp_defaults()) + ("anchors", "label_smoothing")
RESULT_KEYS = ("epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
               "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss",
               "val/cls_loss", "x/lr0", "x/lr1", "x/lr2")


def load_hyp(file) -> dict:
    """Read a hyperparameter yaml (or take a dict, as opt.yaml stores it for --resume): unknown keys are an error,
    missing ones take YOLOv5's scratch-low values."""
    hyp = dict(file) if isinstance(file, dict) else yaml_load(file)
    if isinstance(file, dict):
        file = "the run's saved hyperparameters (opt.yaml 'hyp')"
    unknown = sorted(k for k in hyp if k not in HYP_KEYS)
    if unknown:
        raise ValueError(f"{file}: unknown hyperparameter(s) {', '.join(unknown)}. Valid keys: {', '.join(HYP_KEYS)}")
    defaults = hyp_defaults()
    missing = [k for k in defaults if k not in hyp]
    if missing:
        LOGGER.warning(f"WARNING: {file} lacks {', '.join(missing)}; using YOLOv5's scratch-low values for them")
    for k, v in hyp.items():
        if k != "anchors" and not isinstance(v, (int, float)):
            raise ValueError(f"{file}: hyperparameter {k} must be a number, got {v!r}")
    return {**{k: defaults[k] for k in missing}, **hyp}


def intersect_dicts(da: dict, db: dict, exclude: Sequence[str] = ()) -> dict:
    """Entries of da whose key is in db with the same shape and contains none of the `exclude` substrings."""
    return {k: v for k, v in da.items()
            if k in db and v.shape == db[k].shape and not any(x in k for x in exclude)}


def labels_to_class_weights(labels: Sequence[np.ndarray], nc: int = 80) -> torch.Tensor:
    """Inverse class frequency over all labels (n, 5) [cls, ...], normalised to sum 1; (nc,) float tensor."""
    if not len(labels):
        return torch.ones(nc) / nc
    classes = np.concatenate(labels, 0)[:, 0].astype(int)
    counts = np.bincount(classes, minlength=nc)[:nc].astype(float)
    counts[counts == 0] = 1  # classes without labels get weight as if seen once
    w = 1 / counts
    return torch.from_numpy(w / w.sum()).float()


def labels_to_image_weights(labels: Sequence[np.ndarray], nc: int = 80, class_weights=None) -> np.ndarray:
    """Per-image sampling weight: sum over its labels of the class weight; (n_images,)."""
    cw = np.ones(nc) if class_weights is None else np.asarray(class_weights)
    counts = np.stack([np.bincount(x[:, 0].astype(int), minlength=nc)[:nc] for x in labels])
    return (cw.reshape(1, nc) * counts).sum(1)


def trim_results(file: Path, start_epoch: int) -> None:
    """Drop results.csv rows of epochs >= start_epoch (and rows cut short by a kill): an epoch killed after its row
    was written but before its checkpoint was saved is trained again on --resume."""
    file = Path(file)
    if not file.exists():
        return
    header, *rows = file.read_text().splitlines() or [""]

    def keep(row: str) -> bool:
        cells = row.split(",")
        try:
            return len(cells) == len(RESULT_KEYS) and int(float(cells[0])) < start_epoch
        except ValueError:
            return False

    kept = [r for r in rows if keep(r)]
    if len(kept) != len(rows):
        atomic_write(file, lambda f: f.write("\n".join([header, *kept]) + "\n"), mode="w")


def write_results_row(file: Path, values: Sequence[float]) -> None:
    """Append one epoch to results.csv: YOLOv5's 14 columns, header cells '%20s', values '%20.5g'."""
    file = Path(file)
    header = "" if file.exists() else ",".join("%20s" % k for k in RESULT_KEYS) + "\n"
    with open(file, "a") as f:
        f.write(header + ",".join("%20.5g" % float(v) for v in values) + "\n")


def check_amp(model) -> bool:
    """Use mixed precision on CUDA only if the model's autocast output matches FP32 (no download involved)."""
    p = next(model.parameters())
    if p.device.type != "cuda":
        return False
    im = torch.rand(1, 3, 256, 256, device=p.device)
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            a = model(im)[0]
            with torch.autocast("cuda"):
                b = model(im)[0]
        model.train(was_training)
        ok = a.shape == b.shape and torch.allclose(a, b.float(), atol=0.5, rtol=0.1)
    except Exception as e:
        LOGGER.warning(f"WARNING: AMP check failed ({e}); training in FP32")
        return False
    LOGGER.info(f"AMP checks {'passed' if ok else 'failed, training in FP32'}")
    return ok


def git_info(path: Path = ROOT) -> dict:
    """{remote, branch, commit} of the repo (None values outside a git checkout or without git)."""
    def git(*args):
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=5)
            return out.stdout.strip() or None if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None
    return {"remote": git("remote", "get-url", "origin"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "commit": git("rev-parse", "HEAD")}
