"""Reporting detections as text (log counts, box labels, YOLO label rows) and timing the three inference stages.

Detections here are (n, 6) tensors [x1, y1, x2, y2, conf, cls] in original-image pixels, as NMS and scale_boxes
leave them. Used by detect.py and by the Python API's Detections (inference/autoshape.py).
"""

from pathlib import Path
from typing import Dict, Sequence, Union

import torch

from utils.boxes import xyxy2xywh
from utils.logger import colorstr
from utils.torch_utils import time_sync

Names = Union[Dict[int, str], Sequence[str]]


def names_dict(names) -> Dict[int, str]:
    """Class names as {int id: name} from a list, a dict (JSON metadata has string keys '0', '1', ...) or None."""
    if isinstance(names, (list, tuple)):
        return dict(enumerate(names))
    return {int(k): v for k, v in (names or {}).items()}


def class_name(names: Names, c: int) -> str:
    """names[c] from a dict or a list; the index itself when the model/data names do not cover it."""
    c = int(c)
    if isinstance(names, dict):
        return str(names.get(c, c))
    return str(names[c]) if 0 <= c < len(names) else str(c)


def count_summary(classes: torch.Tensor, names: Names) -> str:
    """'2 circles, 1 star, ' for a tensor of class ids (YOLOv5's log wording: plural 's', trailing ', ')."""
    s = ""
    for c in classes.unique():
        n = int((classes == c).sum())
        s += f"{n} {class_name(names, c)}{'s' * (n > 1)}, "
    return s


def box_label(names: Names, c: int, conf: float, hide_labels: bool = False, hide_conf: bool = False) -> str:
    """Text drawn on a box: 'name 0.87', 'name' (hide_conf) or '' (hide_labels)."""
    if hide_labels:
        return ""
    return class_name(names, c) if hide_conf else f"{class_name(names, c)} {float(conf):.2f}"


def txt_row(xyxy: Sequence[torch.Tensor], conf: torch.Tensor, cls: torch.Tensor, shape: Sequence[int],
            save_conf: bool = False) -> str:
    """One YOLO label line 'cls x y w h [conf]' (xywh normalised by the image (h, w, ...)), every value '%g'."""
    gn = torch.tensor(shape)[[1, 0, 1, 0]]  # w, h, w, h
    xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
    line = (float(cls), *xywh, float(conf)) if save_conf else (float(cls), *xywh)
    return ("%g " * len(line)).rstrip() % line


def speed_line(t: Sequence[float], shape=None) -> str:
    """YOLOv5's closing timing line from (pre-process, inference, NMS) ms per image, with the input shape if known."""
    at = f" at shape {tuple(shape)}" if shape else ""
    return "Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image" % tuple(t) + at


def saved_line(save_dir, save_txt: bool) -> str:
    """'Results saved to <dir>', plus how many label files --save-txt wrote."""
    n = f"\n{len(list(Path(save_dir).glob('labels/*.txt')))} labels saved to {Path(save_dir) / 'labels'}" if save_txt else ""
    return f"Results saved to {colorstr('bold', save_dir)}{n}"


class Stopwatch:
    """Accumulates the seconds spent inside `with` blocks (CUDA-synchronised); `dt` is the last block's time."""

    def __init__(self):
        self.t = 0.0
        self.dt = 0.0

    def __enter__(self):
        self.start = time_sync()
        return self

    def __exit__(self, *exc):
        self.dt = time_sync() - self.start
        self.t += self.dt
