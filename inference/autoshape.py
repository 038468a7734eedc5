"""The Python/hub inference API: AutoShape wraps a DetectionModel so it takes file paths, numpy arrays and PIL images
(one or a list) and returns Detections (boxes in original-image pixels) that print, save, crop and become lists.

Input conventions follow YOLOv5's hub API: numpy arrays are HWC **RGB** uint8 (pass `cv2.imread(f)[..., ::-1]` for
an OpenCV image; CHW arrays and greyscale are accepted too), PIL images may have any mode, and file paths are
decoded exactly as detect.py decodes them (OpenCV, EXIF orientation applied). Nothing is ever downloaded.
"""

from copy import copy
from pathlib import Path
from typing import List, Union

import cv2
import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageOps

from models.yolo import Detect, make_divisible
from utils.augmentations import letterbox
from utils.boxes import scale_boxes, xyxy2xywh
from utils.crops import crop_folder, save_one_box
from utils.dataset_scan import imread
from utils.files import increment_path
from utils.logger import LOGGER, colorstr
from utils.nms import non_max_suppression
from utils.plots import Annotator, colors
from utils.results import Stopwatch, box_label, class_name, count_summary, speed_line
from utils.torch_utils import smart_inference_mode

ACCEPTED = ("a file path, a numpy HWC RGB uint8 array, a PIL image, or a list of those; "
            "or a (b, 3, h, w) float tensor in [0, 1] for the raw model output")


class AutoShape(nn.Module):
    """Pre-process (letterbox to `size`), run the model, NMS, and scale boxes back; settings are attributes."""

    conf = 0.25  # NMS confidence threshold
    iou = 0.45  # NMS IoU threshold
    agnostic = False  # class-agnostic NMS
    multi_label = False  # one box per class above conf, instead of the best class only
    classes = None  # keep only these class ids, e.g. [0, 2]
    max_det = 1000  # most detections per image
    amp = False  # CUDA automatic mixed precision

    def __init__(self, model: nn.Module, verbose: bool = True):
        super().__init__()
        if verbose:
            LOGGER.info("Adding AutoShape... ")
        self.model = model.eval()
        for k in ("yaml", "nc", "hyp", "names", "stride", "abc"):
            if hasattr(model, k):
                setattr(self, k, getattr(model, k))
        for m in model.modules():
            if isinstance(m, Detect):
                m.inplace = False  # no in-place ops, so several threads may share the model

    @smart_inference_mode()
    def forward(self, ims, size: Union[int, tuple] = 640, augment: bool = False, profile: bool = False):
        """ims: see ACCEPTED. size: inference size (long side, or (h, w) whose max is used). -> Detections.

        A tensor input skips pre/post-processing and returns the model's raw output, as YOLOv5 does.
        """
        p = next(self.model.parameters(), torch.empty(0))
        if isinstance(ims, torch.Tensor):
            with torch.autocast("cuda", enabled=self.amp and p.device.type == "cuda"):
                return self.model(ims.to(p.device).type_as(p), augment=augment, profile=profile)
        size = (size, size) if isinstance(size, int) else tuple(size)
        dt = (Stopwatch(), Stopwatch(), Stopwatch())
        with dt[0]:
            ims, files = load_images(ims)
            shape0, shape1, x = self._letterbox_batch(ims, size)
            x = torch.from_numpy(x).to(p.device).type_as(p) / 255
        with dt[1], torch.autocast("cuda", enabled=self.amp and p.device.type == "cuda"):
            y = self.model(x, augment=augment, profile=profile)  # fixed-shape exports take it in calls of their batch
        with dt[2]:
            y = non_max_suppression(y, self.conf, self.iou, self.classes, self.agnostic, self.multi_label,
                                    max_det=self.max_det)
            for i, det in enumerate(y):
                scale_boxes(shape1, det[:, :4], shape0[i])
        return Detections(ims, y, files, dt, getattr(self, "names", None), x.shape)

    def _letterbox_batch(self, ims: List[np.ndarray], size: tuple):
        """One stride-multiple shape (h, w) that fits every image scaled to `size`; -> (shape0s, shape1, NCHW uint8)."""
        shape0 = [im.shape[:2] for im in ims]
        scaled = [[y * max(size) / max(s) for y in s] for s in shape0]
        stride = int(self.stride.max()) if hasattr(self, "stride") else 32
        shape1 = [make_divisible(x, stride) for x in np.array(scaled).max(0)]
        fixed = getattr(self.model, "fixed_shape", None)  # exports without --dynamic take exactly their export size
        shape1 = list(fixed[2:]) if fixed else shape1
        x = np.stack([letterbox(im, shape1, auto=False)[0] for im in ims])
        return shape0, shape1, np.ascontiguousarray(x.transpose((0, 3, 1, 2)))


def load_images(ims) -> tuple:
    """Normalise API inputs to (list of HWC RGB uint8 arrays, list of output file names 'name.jpg')."""
    batch = list(ims) if isinstance(ims, (list, tuple)) else [ims]
    if not batch:
        raise ValueError(f"no images given; pass {ACCEPTED}")
    out, files = [], []
    for i, im in enumerate(batch):
        arr, name = _load_one(im, f"image{i}")
        out.append(arr)
        files.append(Path(name).with_suffix(".jpg").name)
    return out, files


def _load_one(im, default_name: str) -> tuple:
    """One input -> (HWC RGB uint8 array, file name)."""
    if isinstance(im, (str, Path)):
        f = str(im)
        if f.startswith(("http:/", "https:/", "rtsp:/", "rtmp:/")):
            raise ValueError(f"{f}: this project never downloads; save the image locally and pass its path")
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: image file not found")
        bgr = imread(f)
        if bgr is None:
            raise ValueError(f"{f}: not a readable image (corrupt, or not an image format OpenCV/Pillow can decode)")
        return np.ascontiguousarray(bgr[..., ::-1]), Path(f).name
    if isinstance(im, Image.Image):
        name = Path(getattr(im, "filename", "") or default_name).name
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB")), name
    if isinstance(im, np.ndarray):
        return _normalise_array(im, default_name), default_name
    raise ValueError(f"unsupported input of type {type(im).__name__}; pass {ACCEPTED}")


def _normalise_array(im: np.ndarray, name: str) -> np.ndarray:
    """HWC RGB uint8 from an HWC/CHW, grey, RGB or RGBA uint8 array."""
    if im.dtype != np.uint8:
        raise ValueError(f"{name}: numpy images must be uint8 (0-255), got {im.dtype}")
    if im.ndim == 3 and im.shape[0] < 5 and im.shape[2] >= 5:  # CHW -> HWC
        im = im.transpose((1, 2, 0))
    if im.ndim == 2:
        im = np.stack([im] * 3, axis=-1)
    if im.ndim != 3 or im.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected an HWC image with 1, 3 or 4 channels, got shape {im.shape}")
    im = np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im[..., :3]
    return np.ascontiguousarray(im)


class Detections:
    """Results of one AutoShape call. Per image i: ims[i] (HWC RGB), files[i], and (n, 6) tensors
    xyxy[i] [x1, y1, x2, y2, conf, cls] in pixels, xywh[i] [xc, yc, w, h, conf, cls], and the same normalised
    by the image size in xyxyn[i] / xywhn[i]. `pred` is xyxy; `t` the per-image ms of pre/inference/NMS."""

    def __init__(self, ims: list, pred: list, files: list, times=(), names=None, shape=None):
        self.ims, self.pred, self.files, self.names = ims, pred, files, names or {}
        self.n = len(pred)
        self.times = times
        self.t = tuple(x.t / max(self.n, 1) * 1e3 for x in times) if times else (0.0, 0.0, 0.0)
        self.s = tuple(shape) if shape is not None else None  # inference BCHW shape
        gn = [torch.tensor([im.shape[1], im.shape[0], im.shape[1], im.shape[0], 1, 1], device=p.device)
              for im, p in zip(ims, pred)]
        self.xyxy = pred
        self.xywh = [xyxy2xywh(x) for x in pred]
        self.xyxyn = [x / g for x, g in zip(self.xyxy, gn)]
        self.xywhn = [x / g for x, g in zip(self.xywh, gn)]

    def _draw(self, i: int, labels: bool = True) -> np.ndarray:
        """A copy of image i (RGB) with its boxes drawn."""
        annotator = Annotator(self.ims[i].copy(), example=str(self.names))
        for *box, conf, cls in reversed(self.pred[i]):
            annotator.box_label(box, box_label(self.names, cls, conf, hide_labels=not labels), color=colors(int(cls)))
        return annotator.result()

    def render(self, labels: bool = True) -> List[np.ndarray]:
        """Draw the boxes onto self.ims (in place, as YOLOv5 does) and return them."""
        self.ims = [self._draw(i, labels) for i in range(self.n)]
        return self.ims

    def save(self, labels: bool = True, save_dir: Union[str, Path] = "runs/detect/exp", exist_ok: bool = False) -> Path:
        """Write each annotated image as save_dir/files[i] (save_dir incremented: exp, exp2, ...); -> save_dir."""
        save_dir = increment_path(save_dir, exist_ok=exist_ok, mkdir=True)
        for i in range(self.n):
            cv2.imwrite(str(save_dir / self.files[i]), self._draw(i, labels)[..., ::-1])
        LOGGER.info(f"Saved {self.n} image{'s' * (self.n > 1)} to {colorstr('bold', save_dir)}")
        return save_dir

    def crop(self, save: bool = True, save_dir: Union[str, Path] = "runs/detect/exp", exist_ok: bool = False) -> list:
        """Cut out every box; with `save`, as save_dir/crops/<class name>/<file stem>.jpg. -> list of dicts
        {'box' (xyxy tensor), 'conf', 'cls', 'label', 'im' (RGB crop)}."""
        save_dir = increment_path(save_dir, exist_ok=exist_ok, mkdir=save) if save else None
        crops = []
        for i in range(self.n):
            for *box, conf, cls in reversed(self.pred[i]):
                name = class_name(self.names, cls)
                file = save_dir / "crops" / crop_folder(name) / self.files[i] if save else None
                im = save_one_box(box, self.ims[i], file=file, save=save)
                crops.append({"box": torch.stack(box), "conf": conf, "cls": cls,
                              "label": box_label(self.names, cls, conf), "im": im})
        if save:
            LOGGER.info(f"Saved results to {colorstr('bold', save_dir)}")
        return crops

    def show(self, labels: bool = True) -> None:
        """Display the annotated images with OpenCV, or say in one line why that is impossible here."""
        from utils.checks import display_available
        if not display_available():
            LOGGER.info("Detections.show(): no display available (headless OpenCV or no $DISPLAY); use .save()")
            return
        for i in range(self.n):
            cv2.imshow(self.files[i], self._draw(i, labels)[..., ::-1])
        cv2.waitKey(0)

    def tolist(self) -> List[List[dict]]:
        """Plain Python per image: [{'xmin', 'ymin', 'xmax', 'ymax', 'confidence', 'class', 'name'}, ...] in pixels."""
        keys = ("xmin", "ymin", "xmax", "ymax", "confidence")
        return [[{**dict(zip(keys, row[:5])), "class": int(row[5]), "name": class_name(self.names, row[5])}
                 for row in p.tolist()] for p in self.pred]

    def pandas(self):
        """A copy whose xyxy/xyxyn/xywh/xywhn are lists of pandas DataFrames (needs pandas, which is optional)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Detections.pandas() needs pandas (pip install pandas); "
                              ".tolist() gives the same rows as plain lists") from None
        new = copy(self)
        for attr, cols in (("xyxy", ("xmin", "ymin", "xmax", "ymax")), ("xyxyn", ("xmin", "ymin", "xmax", "ymax")),
                           ("xywh", ("xcenter", "ycenter", "width", "height")),
                           ("xywhn", ("xcenter", "ycenter", "width", "height"))):
            frames = []
            for x in getattr(self, attr):
                rows = [[*r[:5], int(r[5]), class_name(self.names, r[5])] for r in x.tolist()]
                frames.append(pd.DataFrame(rows, columns=[*cols, "confidence", "class", "name"]))
            setattr(new, attr, frames)
        return new

    def print(self) -> None:
        LOGGER.info(str(self))

    def __getitem__(self, i: int) -> "Detections":
        """The results of image i alone (what YOLOv5's tolist() gave per image)."""
        return Detections([self.ims[i]], [self.pred[i]], [self.files[i]], self.times, self.names, self.s)

    def __iter__(self):
        return (self[i] for i in range(self.n))

    def __len__(self) -> int:
        return self.n

    def __str__(self) -> str:
        lines = []
        for i, (im, det) in enumerate(zip(self.ims, self.pred)):
            s = f"image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} "
            s += count_summary(det[:, 5], self.names).rstrip(", ") if len(det) else "(no detections)"
            lines.append(s)
        return "\n".join(lines) + "\n" + speed_line(self.t, self.s)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__} ({self.n} image{'s' * (self.n != 1)})\n{self}"
