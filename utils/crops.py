"""Cutting a detected box out of an image and saving it (detect.py --save-crop, Detections.crop)."""

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from utils.boxes import clip_boxes, xywh2xyxy, xyxy2xywh
from utils.files import increment_path


def crop_folder(name: str) -> str:
    """A class name as a single folder name for crops/<name>/: class names come from checkpoints and dataset yamls,
    so separators become '_' and '.'/'..' get a '_' prefix; crops never land outside crops/."""
    name = str(name).replace("/", "_").replace("\\", "_").replace("\0", "_")
    return "_" + name if name in ("", ".", "..") else name


def save_one_box(xyxy: Union[Sequence[float], torch.Tensor], im: np.ndarray, file: Union[str, Path] = "im.jpg",
                 gain: float = 1.02, pad: int = 10, square: bool = False, BGR: bool = False,
                 save: bool = True) -> np.ndarray:
    """Crop box xyxy (pixels) from HWC image `im`, enlarged by `gain` and `pad` pixels per side pair (YOLOv5's
    crop margin), optionally squared. Saves it as a JPEG at `file`, or `<stem>2.jpg`, `<stem>3.jpg`, ... when that
    name is taken. `BGR` says the channel order of `im`. Returns the crop in im's channel order."""
    xyxy = torch.as_tensor(xyxy, dtype=torch.float32).view(-1, 4)[:1]
    b = xyxy2xywh(xyxy)
    if square:
        b[:, 2:] = b[:, 2:].max(1)[0].unsqueeze(1)
    b[:, 2:] = b[:, 2:] * gain + pad
    box = xywh2xyxy(b).long()
    clip_boxes(box, im.shape)
    x1, y1, x2, y2 = (int(v) for v in box[0])
    crop = im[y1:y2, x1:x2]
    if save and crop.size:  # a box squeezed to zero width by clipping has nothing to save
        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        out = increment_path(file).with_suffix(".jpg")
        rgb = crop[..., ::-1] if BGR else crop
        Image.fromarray(np.ascontiguousarray(rgb)).save(out, quality=95, subsampling=0)
    return crop
