"""The label verifier: one image and its YOLO label file in, YOLOv5 v7.0's verdict out, with the exact reason.

Each file gets the same outcome as in YOLOv5 (kept / background / fixed / corrupt and skipped); the message adds
the label file, the line and the offending value. Extra checks (nan/inf, unreadable text) only ever reject files
that YOLOv5 also rejects or could not train on.
"""

from __future__ import annotations

import io
import math
import os
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image, ImageOps

from utils.boxes import xyxy2xywh
from utils.dataset_scan import IMG_FORMATS, exif_size
from utils.files import atomic_write

ROW_FORMAT = "class x_center y_center width height, normalised to 0-1"
MIN_SIDE = 10  # smaller images are rejected


class LabelCheck(NamedTuple):
    """Verdict for one image/label pair; the counters mirror YOLOv5's (missing, found, empty, corrupt)."""

    im_file: Optional[str]  # None when the pair is skipped as corrupt
    labels: Optional[np.ndarray]  # (n, 5) float32 [cls, x, y, w, h] normalised
    shape: Optional[tuple]  # (w, h) after EXIF orientation
    segments: Optional[list]  # polygons (k, 2) float32, only for polygon label files
    missing: int
    found: int
    empty: int
    corrupt: int
    msgs: list  # warnings for the log, each naming the file
    reason: str  # short category of a corrupt verdict ('' when kept)
    fixes: dict  # {'duplicate rows removed': n, 'JPEG restored': 1, ...}


class Rejected(Exception):
    """A file is skipped as corrupt; `kind` is the category used in the scan summary."""

    def __init__(self, kind: str, text: str):
        super().__init__(text)
        self.kind = kind


def _check_image(im_file: str, prefix: str, msgs: list, fixes: dict) -> tuple:
    """Verify the image as YOLOv5 does (Pillow open + verify, >= 10 px, known format, JPEG end marker)."""
    if not os.path.isfile(im_file):
        raise Rejected("missing image", "image file not found")
    if os.path.getsize(im_file) == 0:
        raise Rejected("unreadable image", "empty image file (0 bytes)")
    try:
        with Image.open(im_file) as im:
            shape = exif_size(im)  # read from the header; verify() below makes the image unusable
            im.verify()
            fmt = im.format or "unknown"
    except Exception as e:
        raise Rejected("unreadable image", f"not an image Pillow can read ({e})") from None
    if shape[0] < MIN_SIDE or shape[1] < MIN_SIDE:
        raise Rejected("image too small", f"image size {shape[0]}x{shape[1]} is below {MIN_SIDE} px")
    if fmt.lower() not in IMG_FORMATS:
        raise Rejected("unsupported image format",
                       f"image data is {fmt}, not one of {', '.join(IMG_FORMATS)} (whatever the file name says)")
    if fmt.lower() in ("jpg", "jpeg"):
        _repair_jpeg(im_file, prefix, msgs, fixes)
    return shape


def _repair_jpeg(im_file: str, prefix: str, msgs: list, fixes: dict) -> None:
    """A JPEG without the FFD9 end marker is re-encoded in place (quality 100), as YOLOv5 does. When Pillow stops at
    the missing marker, the file is still restored if its scan data is complete (only the marker was lost); a file
    whose scan data is cut short, or that cannot be rewritten, is rejected."""
    with open(im_file, "rb") as f:
        data = f.read()
    if data.endswith(b"\xff\xd9"):
        return
    try:
        try:
            im = _decode(data)
        except OSError:  # "image file is truncated": the decoder wanted the marker or more data
            body = _complete_scan(data)
            if body is None:
                raise
            im = _decode(body + b"\xff\xd9")
        fixed = ImageOps.exif_transpose(im)
        atomic_write(im_file, lambda f: fixed.save(f, "JPEG", subsampling=0, quality=100))
    except Exception as e:
        raise Rejected("truncated JPEG", f"JPEG lacks its end marker and could not be restored ({e})") from None
    fixes["corrupt JPEGs restored"] = 1
    msgs.append(f"{prefix}WARNING ⚠️ {im_file}: corrupt JPEG restored and saved (re-encoded in place, quality 100)")


def _decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _complete_scan(data: bytes) -> Optional[bytes]:
    """The file's bytes without the torn marker if its entropy-coded data is complete, else None.

    With the marker appended, a complete scan decodes the same whether or not filler bytes stand before the marker
    (the decoder has read every block and skips them); a scan cut short decodes the filler as image data instead.
    """
    body = data[:-1] if data.endswith(b"\xff") else data  # cut 1 byte short: the first half of FFD9 is there
    try:
        closed = np.asarray(_decode(body + b"\xff\xd9"))
        padded = np.asarray(_decode(body + b"\x55" * 64 + b"\xff\xd9"))
    except Exception:
        return None
    return body if np.array_equal(closed, padded) else None


def read_label_rows(lb_file: str) -> list:
    """Rows of a label file as (line number, tokens), skipping empty lines and blank lines at the ends.

    A whitespace-only line inside the file is kept as a row with no tokens: YOLOv5 rejects such files.
    """
    try:
        with open(lb_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise Rejected("unreadable label file", f"{lb_file}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise Rejected("unreadable label file", f"{lb_file}: cannot be read ({e})") from None
    content = [i for i, x in enumerate(lines) if x.strip()]
    if not content:
        return []
    return [(i + 1, lines[i].split()) for i in range(content[0], content[-1] + 1) if len(lines[i])]


def _first_non_number(tokens: list) -> Optional[str]:
    for t in tokens:
        try:
            float(t)
        except ValueError:
            return t
    return None


def _check_tokens(rows: list, lb_file: str, polygon: bool) -> None:
    """Reject on the first row (in file order) that cannot become a YOLOv5 label row."""
    for ln, t in rows:
        where = f"{lb_file} line {ln}"
        if not t:
            raise Rejected("blank row", f"{where}: a line of only spaces inside the file (delete it)")
        bad = _first_non_number(t)
        if bad is not None:
            raise Rejected("non-numeric value", f"{where}: {bad!r} is not a number ({ROW_FORMAT})")
        if not polygon and len(t) != 5:
            raise Rejected("wrong column count", f"{where}: {len(t)} values, expected 5 ({ROW_FORMAT})")
        if polygon and (len(t) < 3 or len(t) % 2 == 0):
            raise Rejected("bad polygon", f"{where}: a polygon row is 'class x1 y1 x2 y2 ...' (x y pairs), "
                                          f"got {len(t) - 1} coordinates")


def _parse_rows(rows: list, lb_file: str, im_file: str, prefix: str, msgs: list) -> tuple:
    """Token rows -> ((n, 5) float32 [cls, xywh], polygons). Any row with > 6 values makes the file polygons."""
    polygon = any(len(t) > 6 for _, t in rows)
    _check_tokens(rows, lb_file, polygon)
    with np.errstate(over="ignore"):  # '1e39' becomes inf in float32 and is then rejected as non-finite
        return _to_arrays(rows, lb_file, im_file, prefix, msgs, polygon)


def _to_arrays(rows: list, lb_file: str, im_file: str, prefix: str, msgs: list, polygon: bool) -> tuple:
    """The conversion itself, done with numpy exactly as YOLOv5 does (so float parsing and rounding agree)."""
    if not polygon:
        return np.array([t for _, t in rows], dtype=np.float32), []
    short = [ln for ln, t in rows if len(t) <= 6]
    if short:
        msgs.append(f"{prefix}WARNING ⚠️ {im_file}: {lb_file} is read as polygons (some rows have > 6 values), so "
                    f"line {short[0]} ({len(short)} such rows) is taken as a polygon too, not as class x y w h")
    classes = np.array([t[0] for _, t in rows], dtype=np.float32)
    segments = [np.array(t[1:], dtype=np.float32).reshape(-1, 2) for _, t in rows]
    corners = np.array([[s[:, 0].min(), s[:, 1].min(), s[:, 0].max(), s[:, 1].max()] for s in segments])
    return np.concatenate((classes.reshape(-1, 1), xyxy2xywh(corners)), 1).astype(np.float32), segments


def _check_values(lb: np.ndarray, rows: list, lb_file: str, im_file: str, prefix: str, msgs: list) -> None:
    """Reject nan/inf, negatives and coordinates > 1 (YOLOv5's checks); note non-integer classes."""
    def first(mask: np.ndarray) -> tuple:  # (where, value) of the first flagged entry in file order
        r, c = np.argwhere(mask)[0]
        return f"{lb_file} line {rows[r][0]}", lb[r, c]

    coords = np.zeros(lb.shape, bool)
    coords[:, 1:] = lb[:, 1:] > 1
    fraction = np.zeros(lb.shape, bool)
    fraction[:, 0] = lb[:, 0] != np.floor(lb[:, 0])
    if not np.isfinite(lb).all():
        where, v = first(~np.isfinite(lb))
        row = rows[int(np.argwhere(~np.isfinite(lb))[0, 0])][1]
        with np.errstate(over="ignore"):
            token = next((t for t in row if not np.isfinite(np.float32(float(t)))), v)
        raise Rejected("nan/inf value", f"{where}: value {token} is not a finite number (float32)")
    if (lb < 0).any():
        where, v = first(lb < 0)
        raise Rejected("negative value", f"{where}: negative value {v:g} (all values must be >= 0)")
    if coords.any():
        where, v = first(coords)
        raise Rejected("coordinate > 1", f"{where}: coordinate {v:g} > 1 (x, y, w, h must be divided by the "
                                         f"image width/height)")
    if fraction.any():
        where, v = first(fraction)
        msgs.append(f"{prefix}WARNING ⚠️ {im_file}: {where}: class {v:g} is not a whole number (kept as is)")


def _drop_duplicates(lb, segments, rows, lb_file, im_file, prefix, msgs, fixes) -> tuple:
    """Remove repeated rows (YOLOv5 keeps np.unique's sorted order of the first occurrences)."""
    _, keep = np.unique(lb, axis=0, return_index=True)
    if len(keep) == len(lb):
        return lb, segments
    dropped = sorted(set(range(len(lb))) - set(keep.tolist()))
    lines = ", ".join(str(rows[i][0]) for i in dropped[:10]) + (", ..." if len(dropped) > 10 else "")
    msgs.append(f"{prefix}WARNING ⚠️ {im_file}: {len(dropped)} duplicate labels removed ({lb_file} lines {lines})")
    fixes["duplicate rows removed"] = len(dropped)
    return lb[keep], [segments[i] for i in keep] if segments else segments


def verify_image_label(args: tuple) -> LabelCheck:
    """Check one (image file, label file, log prefix) triple; never raises."""
    im_file, lb_file, prefix = args
    msgs, fixes, found = [], {}, 0
    none = np.zeros((0, 5), dtype=np.float32)
    try:
        shape = _check_image(im_file, prefix, msgs, fixes)
        if not os.path.isfile(lb_file):
            return LabelCheck(im_file, none, shape, [], 1, 0, 0, 0, msgs, "", fixes)
        found = 1
        rows = read_label_rows(lb_file)
        if not rows:
            return LabelCheck(im_file, none, shape, [], 0, 1, 1, 0, msgs, "", fixes)
        lb, segments = _parse_rows(rows, lb_file, im_file, prefix, msgs)
        _check_values(lb, rows, lb_file, im_file, prefix, msgs)
        lb, segments = _drop_duplicates(lb, segments, rows, lb_file, im_file, prefix, msgs, fixes)
        return LabelCheck(im_file, lb, shape, segments, 0, 1, 0, 0, msgs, "", fixes)
    except Rejected as e:
        kind, text = e.kind, str(e)
    except Exception as e:  # anything unforeseen costs this one file, never the run
        kind, text = "unexpected error", f"{type(e).__name__}: {e}"
    msgs.append(f"{prefix}WARNING ⚠️ {im_file}: ignoring corrupt image/label: {text}")
    return LabelCheck(None, None, None, None, 0, found, 0, 1, msgs, kind, fixes)


def check_label_classes(label_files: list, labels: list, nc: int, data_file: str = "") -> None:
    """Raise ValueError naming the first label file and line whose class id is >= nc (the dataset yaml's names).

    labels[i] is the (n, 5) array loaded from label_files[i]. Message: '<file> line 2: class 91 >= nc=80 (<yaml>)'.
    """
    bad = [i for i, lb in enumerate(labels) if len(lb) and lb[:, 0].max() >= nc]
    if not bad:
        return
    lf, line, cls = label_files[bad[0]], "?", labels[bad[0]][:, 0].max()
    try:
        for ln, t in read_label_rows(lf):
            if t and math.isfinite(c := float(t[0])) and c >= nc:
                line, cls = ln, c
                break
    except (Rejected, ValueError):
        pass
    src = f" ({data_file})" if data_file else ""
    more = f"; {len(bad)} label files have classes >= {nc}" if len(bad) > 1 else ""
    raise ValueError(f"{lf} line {line}: class {cls:g} >= nc={nc}{src}{more}. Class ids must be 0..{nc - 1}: "
                     f"fix the labels or add the missing names to the dataset yaml")
