"""Inference sources for detect: image files, folders, globs, videos and .txt lists (LoadImages); webcams and
stream URLs read by background threads (LoadStreams). Each item is (path, im (3, h, w) RGB letterboxed, im0 BGR
original, video capture or None, log string)."""

from __future__ import annotations

import glob
import math
import os
import re
import time
from pathlib import Path
from threading import Thread
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from utils.augmentations import letterbox
from utils.dataset_scan import IMG_FORMATS, VID_FORMATS, imread
from utils.logger import LOGGER


def _suffix(path: str) -> str:
    return path.split(".")[-1].lower()


def _read_media_list(txt: Path) -> list[str]:
    """Entries of a .txt media list: './x' is relative to the txt's folder; other relative entries are tried from
    the working directory first, then from the txt's folder."""
    out = []
    for line in txt.read_text(encoding="utf-8").splitlines():
        x = line.strip()
        if not x:
            continue
        if x.startswith("./") or not (os.path.isabs(x) or os.path.exists(x) or "*" in x):
            x = str(txt.parent / x)
        out.append(x)
    return out


def expand_media(path: Union[str, Path, Sequence]) -> list[str]:
    """Absolute media files for a source: a file, folder (not recursive), glob, .txt list, or a list of those."""
    if isinstance(path, (str, Path)) and str(path).endswith(".txt") and Path(path).is_file():
        path = _read_media_list(Path(path))
    files = []
    for p in sorted(map(str, path)) if isinstance(path, (list, tuple)) else [str(path)]:
        p = str(Path(p).expanduser().resolve())
        if "*" in p:
            files.extend(sorted(glob.glob(p, recursive=True)))
        elif os.path.isdir(p):
            files.extend(sorted(glob.glob(os.path.join(p, "*.*"))))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return files


class LoadImages:
    """Iterate images then videos of a source, letterboxed for the model. Unreadable images are skipped with a
    warning; videos yield every vid_stride-th frame."""

    def __init__(self, path, img_size: int = 640, stride: int = 32, auto: bool = True, transforms=None,
                 vid_stride: int = 1):
        files = expand_media(path)
        images = [x for x in files if _suffix(x) in IMG_FORMATS]
        videos = [x for x in files if _suffix(x) in VID_FORMATS]
        if not images and not videos:
            raise FileNotFoundError(f"No images or videos found in {path}. Supported formats are: images "
                                    f"{', '.join(IMG_FORMATS)}; videos {', '.join(VID_FORMATS)}")
        other = [x for x in files if _suffix(x) not in IMG_FORMATS + VID_FORMATS]
        if other:
            LOGGER.warning(f"WARNING ⚠️ {len(other)} files in {path} are neither images nor videos by their suffix "
                           f"and are skipped, e.g. {other[0]}")
        self.img_size, self.stride, self.auto, self.transforms = img_size, stride, auto, transforms
        self.vid_stride = max(int(vid_stride), 1)
        self.files = images + videos
        self.nf = len(self.files)
        self.video_flag = [False] * len(images) + [True] * len(videos)
        self.mode = "image"
        self.cap: Optional[cv2.VideoCapture] = None
        self.frame = self.frames = self.count = 0
        if videos:
            self._new_video(videos[0])

    def _new_video(self, path: str) -> None:
        self.frame = 0
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            LOGGER.warning(f"WARNING ⚠️ {path}: video could not be opened, skipped")
        self.frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) / self.vid_stride)

    def _prepare(self, im0: np.ndarray) -> np.ndarray:
        if self.transforms:
            return self.transforms(im0)
        im = letterbox(im0, self.img_size, stride=self.stride, auto=self.auto)[0]
        return np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB

    def _next_frame(self) -> Optional[tuple]:
        """(path, frame) from the current video, moving on to the next video when one ends; None when done."""
        for _ in range(self.vid_stride):
            self.cap.grab()
        ok, im0 = self.cap.retrieve()
        while not ok:
            self.count += 1
            self.cap.release()
            if self.count == self.nf:
                return None
            self._new_video(self.files[self.count])
            ok, im0 = self.cap.read()
        self.frame += 1
        return self.files[self.count], im0

    def __iter__(self):
        self.count = 0
        return self

    def __next__(self):
        while self.count < self.nf:
            if self.video_flag[self.count]:
                self.mode = "video"
                got = self._next_frame()
                if got is None:
                    break
                path, im0 = got
                s = f"video {self.count + 1}/{self.nf} ({self.frame}/{self.frames}) {path}: "
            else:
                path = self.files[self.count]
                self.count += 1
                im0 = imread(path)
                if im0 is None:
                    LOGGER.warning(f"WARNING ⚠️ {path}: not a readable image, skipped")
                    continue
                s = f"image {self.count}/{self.nf} {path}: "
            return path, self._prepare(im0), im0, self.cap, s
        raise StopIteration

    def __len__(self) -> int:
        return self.nf


def clean_str(s: str) -> str:
    """Replace characters that are awkward in file names with '_' (stream URLs become folder names)."""
    return re.sub(r"[|@#!¡·$€%&()=?¿^*;:,¨´><+]", "_", s)


class LoadStreams:
    """Frames from webcams (an index like '0') or stream URLs, one reader thread per source; opened only when this
    is constructed. `sources` is one source or a .streams/.txt file listing one per line."""

    def __init__(self, sources: str = "file.streams", img_size: int = 640, stride: int = 32, auto: bool = True,
                 transforms=None, vid_stride: int = 1):
        self.mode = "stream"
        self.img_size, self.stride, self.transforms = img_size, stride, transforms
        self.vid_stride = max(int(vid_stride), 1)
        is_list = os.path.isfile(sources) and Path(sources).suffix.lower() in (".txt", ".streams")
        sources = Path(sources).read_text().split() if is_list else [sources]
        n = len(sources)
        self.sources = [clean_str(x) for x in sources]
        self.imgs, self.fps, self.frames, self.threads = [None] * n, [0.0] * n, [0] * n, [None] * n
        self._stop = False
        for i, s in enumerate(sources):
            self._open(i, n, s)
        shapes = np.stack([letterbox(x, img_size, stride=stride, auto=auto)[0].shape for x in self.imgs])
        self.rect = np.unique(shapes, axis=0).shape[0] == 1  # one batch shape for all streams
        self.auto = auto and self.rect
        if not self.rect:
            LOGGER.warning("WARNING ⚠️ Stream shapes differ; similarly-shaped streams batch faster.")

    def _open(self, i: int, n: int, s: str) -> None:
        st = f"{i + 1}/{n}: {s}... "
        src = int(s) if s.isnumeric() else s
        cap = cv2.VideoCapture(src)
        if not cap.isOpened():
            raise ConnectionError(f"{st}could not open this stream (camera index or URL)")
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = cap.get(cv2.CAP_PROP_FPS)  # may be 0 or nan
        self.frames[i] = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0) or float("inf")
        self.fps[i] = max((fps if math.isfinite(fps) else 0) % 100, 0) or 30
        ok, self.imgs[i] = cap.read()
        if not ok:
            raise ConnectionError(f"{st}opened but returned no frame")
        self.threads[i] = Thread(target=self._update, args=(i, cap, src), daemon=True)
        LOGGER.info(f"{st}Success ({self.frames[i]} frames {w}x{h} at {self.fps[i]:.2f} FPS)")
        self.threads[i].start()

    def _update(self, i: int, cap: cv2.VideoCapture, stream) -> None:
        """Keep self.imgs[i] at the stream's latest frame (every vid_stride-th)."""
        n, f = 0, self.frames[i]
        while cap.isOpened() and n < f and not self._stop:
            n += 1
            cap.grab()
            if n % self.vid_stride == 0:
                ok, im = cap.retrieve()
                if ok:
                    self.imgs[i] = im
                else:
                    LOGGER.warning("WARNING ⚠️ Video stream unresponsive, please check your IP camera connection.")
                    self.imgs[i] = np.zeros_like(self.imgs[i])
                    cap.open(stream)
            time.sleep(0.0)  # let other threads run
        cap.release()

    def __iter__(self):
        self.count = -1
        return self

    def __next__(self):
        self.count += 1
        if not all(t.is_alive() for t in self.threads):
            self.close()
            raise StopIteration
        im0 = self.imgs.copy()
        if self.transforms:
            im = np.stack([self.transforms(x) for x in im0])
        else:
            im = np.stack([letterbox(x, self.img_size, stride=self.stride, auto=self.auto)[0] for x in im0])
            im = np.ascontiguousarray(im[..., ::-1].transpose((0, 3, 1, 2)))  # BGR -> RGB, BHWC -> BCHW
        return self.sources, im, im0, None, ""

    def close(self) -> None:
        """Stop the reader threads."""
        self._stop = True

    def __len__(self) -> int:
        return len(self.sources)
