"""Checks of user settings that YOLOv5 users rely on: image sizes, thresholds, display availability."""

import math
import os
from typing import List, Union

from utils.logger import LOGGER


def check_img_size(imgsz: Union[int, List[int]], s: int = 32, floor: int = 0):
    """Round image size(s) up to a multiple of stride s (at least `floor`), saying so when it changes."""
    def fix(x: int) -> int:
        if int(x) < 1:
            raise ValueError(f"--imgsz {imgsz}: image sizes must be positive numbers of pixels, e.g. --imgsz 640")
        return max(math.ceil(int(x) / s) * s, floor)

    new = fix(imgsz) if isinstance(imgsz, int) else [fix(x) for x in imgsz]
    if new != imgsz:
        LOGGER.warning(f"WARNING: --imgsz {imgsz} is not a multiple of max stride {s}; using {new}")
    return new


def check_thresholds(conf_thres: float, iou_thres: float) -> None:
    """Reject thresholds outside [0, 1] with the flag names users typed."""
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"--conf-thres {conf_thres}: must be between 0.0 and 1.0")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"--iou-thres {iou_thres}: must be between 0.0 and 1.0")


def display_available() -> bool:
    """True when cv2.imshow can open a window (a GUI build of OpenCV and a display)."""
    if os.name != "nt" and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return False
    try:
        import cv2
        cv2.namedWindow("test", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("test")
        return True
    except Exception:
        return False


def import_optional(module: str, missing: Exception):
    """Import an optional package (an export runtime); if it is not installed, raise `missing`, the caller's
    one-line error naming the format and the pip command."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing from None
