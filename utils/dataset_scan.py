"""Finding a dataset's images and label files, reading images robustly, and the images -> labels path rule.

The label verifier and the `.cache` file live in utils/label_check.py and utils/label_cache.py.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import cv2
import numpy as np
from PIL import Image, ImageOps

from utils.logger import LOGGER

IMG_FORMATS = "bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm"  # image suffixes
VID_FORMATS = "asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv"  # video suffixes
ORIENTATION = 274  # EXIF tag id of 'Orientation'
COMPANION_FORMATS = "txt", "cache", "npy", "json", "xml", "yaml", "yml", "csv", "md"  # kept beside images: not reported

PathLike = Union[str, Path]


def img2label_paths(img_paths: Iterable[str]) -> list[str]:
    """Label file of each image: the last '/images/' becomes '/labels/' and the suffix '.txt'.

    Without an '/images/' folder in the path, the label is the same-stem .txt beside the image.
    """
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(p.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for p in img_paths]


def has_image_suffix(path: str) -> bool:
    """True when the text after the path's last dot is an image format in IMG_FORMATS (case-insensitive)."""
    return path.split(".")[-1].lower() in IMG_FORMATS


def _read_list_file(txt: Path) -> list[str]:
    """Entries of a txt image list; './x' lines resolve against the txt's folder, other lines are used as given."""
    parent = str(txt.parent) + os.sep
    with open(txt, encoding="utf-8") as f:
        lines = f.read().strip().splitlines()
    return [x.replace("./", parent, 1) if x.startswith("./") else x for x in lines]


def _no_images_hint(p: Path) -> str:
    """Extra words for 'no images found', pointing out a labels folder given where images were expected."""
    if not p.is_dir():
        return ""
    n_txt = len(glob.glob(str(p / "**" / "*.txt"), recursive=True))
    if not n_txt:
        return ""
    hint = f" It holds {n_txt} .txt files: is this a labels folder?"
    parts = p.parts
    if "labels" in parts:
        i = len(parts) - 1 - parts[::-1].index("labels")
        hint += f" Point the split at the images instead, e.g. {Path(*parts[:i], 'images', *parts[i + 1:])}"
    return hint


def list_image_files(path: Union[PathLike, Sequence[PathLike]], prefix: str = "") -> tuple[list[str], Path]:
    """Sorted image files of a dataset split and the path its `.cache` is named after.

    `path` is a directory (searched recursively), a .txt list of images, or a list of either. Returns (files,
    source) with source = the last entry of `path` (see cache_path_for). Raises FileNotFoundError for a missing
    path or when no image is found.
    """
    files, last = [], None
    for p in path if isinstance(path, (list, tuple)) else [path]:
        last = p = Path(p)
        if p.is_dir():
            files += glob.glob(str(p / "**" / "*.*"), recursive=True)
        elif p.is_file():
            files += _read_list_file(p)
        else:
            raise FileNotFoundError(f"{prefix}{p} does not exist (expected a folder of images or a .txt list)")
    images = sorted(x.replace("/", os.sep) for x in files if has_image_suffix(x))
    _report_ignored(files, path, prefix)
    if not images:
        hint = "".join(_no_images_hint(Path(p)) for p in (path if isinstance(path, (list, tuple)) else [path]))
        raise FileNotFoundError(f"{prefix}no images found in {path}. Accepted suffixes: {', '.join(IMG_FORMATS)}."
                                f"{hint}")
    return images, last


def _report_ignored(files: list, path, prefix: str) -> None:
    """One warning for files a split lists that are skipped because their suffix is not an image format."""
    ignored = sorted(x for x in files if not has_image_suffix(x) and x.split(".")[-1].lower() not in COMPANION_FORMATS)
    if ignored and int(os.getenv("RANK", -1)) in (-1, 0):
        LOGGER.warning(f"{prefix}WARNING ⚠️ {len(ignored)} files in {path} are not images by their suffix and are "
                       f"ignored, e.g. {ignored[0]} (accepted suffixes: {', '.join(IMG_FORMATS)})")


def cache_path_for(source: Path, label_files: Sequence[str]) -> Path:
    """Where a split's cache lives: <list>.cache for a txt list, else <first labels folder>.cache."""
    return (source if source.is_file() else Path(label_files[0]).parent).with_suffix(".cache")


def _exif_orientation(im: Image.Image) -> int:
    """EXIF orientation (1-8) from an opened image's EXIF block, read without decoding pixels; 1 when absent.

    TIFF orientation is a TIFF tag, not an EXIF block: Pillow already reports those images' size rotated.
    """
    try:
        raw = im.info.get("exif")
        if raw:
            exif = Image.Exif()
            exif.load(raw)
            return int(exif.get(ORIENTATION, 1))
    except Exception:  # broken EXIF blocks are common and harmless: the pixels are what matter
        pass
    return 1


def exif_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of a PIL image as it looks after its EXIF orientation is applied (5-8 swap the sides).

    YOLOv5 swaps only for 6 and 8; OpenCV also turns 5 and 7, and the loaded pixels are what count.
    """
    w, h = im.size
    return (h, w) if _exif_orientation(im) in (5, 6, 7, 8) else (w, h)


def imread(path: PathLike) -> Optional[np.ndarray]:
    """Read an image as 3-channel uint8 BGR with EXIF orientation applied, or None when it cannot be decoded.

    Grey, RGBA, palette, CMYK and 16-bit files all come back as (h, w, 3) uint8. OpenCV decodes first (as YOLOv5
    does); files it refuses (e.g. some TIFFs) are decoded by Pillow instead.
    """
    try:
        im = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    except (OSError, cv2.error, ValueError):
        im = None
    if im is not None:
        return im
    try:
        with Image.open(path) as pil:
            rgb = ImageOps.exif_transpose(pil).convert("RGB")
        return np.ascontiguousarray(np.asarray(rgb)[..., ::-1])
    except Exception:
        return None
