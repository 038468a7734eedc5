"""Scanning a split's labels in parallel and the `.cache` file that saves the result (YOLOv5 v7.0 layout).

The cache is an np.save'd dict: {image path: [labels (n, 5) float32, (w, h), segments], 'hash', 'results' =
(found, missing, empty, corrupt, total), 'msgs', 'version' = 0.6}, written atomically without the .npy suffix.
It is read back with an unpickler that rebuilds only arrays and plain values: a .cache shipped with a dataset
runs no code.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pickle
from collections import Counter
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from utils.dataset_scan import has_image_suffix
from utils.files import atomic_write
from utils.label_check import LabelCheck, verify_image_label
from utils.logger import LOGGER
from utils.torch_utils import LOCAL_RANK

CACHE_VERSION = 0.6
POOL_MIN_FILES = 256  # below this a process pool costs more than it saves


def dataset_hash(paths: Sequence[str]) -> str:
    """Fingerprint of a file list: total size and modification times of the files that exist, plus the paths.

    (YOLOv5 hashes sizes only, so an edit that keeps a label file's length went unnoticed.)
    """
    size = mtime = 0
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        size += st.st_size
        mtime += st.st_mtime_ns
    h = hashlib.sha256(f"{size} {mtime}".encode())
    h.update("".join(paths).encode())
    return h.hexdigest()


# The only globals a cache pickle needs (numpy 1.x and 2.x module paths): arrays, dtypes, scalars.
_CACHE_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for n in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _ForeignObject(pickle.UnpicklingError):
    """The cache names a class or function no label cache contains: a crafted file, never loaded."""


class _CacheUnpickler(pickle.Unpickler):
    """np.load(allow_pickle=True) would run any code a .cache file shipped with a dataset holds; this rebuilds
    only what a cache contains."""

    def find_class(self, module, name):
        if (module, name) in _CACHE_GLOBALS:
            return super().find_class(module, name)
        raise _ForeignObject(f"{module}.{name}")


def load_cache(path: Path) -> Optional[dict]:
    """The cache dict at `path`, or None when it is missing, unreadable or holds anything but plain data."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = header(f)
            if shape != () or dtype != object:
                return None
            cache = _CacheUnpickler(f).load().item()
        return cache if isinstance(cache, dict) else None
    except _ForeignObject as e:
        LOGGER.warning(f"WARNING ⚠️ {path}: ignored: it refers to '{e}', which no label cache holds (a crafted "
                       f"file?); rescanning the labels and replacing it")
        return None
    except Exception:  # missing, truncated or from an incompatible numpy: rescan
        return None


def save_cache(path: Path, cache: dict, prefix: str = "") -> None:
    """Write the cache atomically; an unwritable location only warns."""
    if not path.parent.is_dir():
        LOGGER.warning(f"{prefix}WARNING ⚠️ no label cache written: folder {path.parent} does not exist")
        return
    try:
        atomic_write(path, lambda f: np.save(f, cache, allow_pickle=True))
        LOGGER.info(f"{prefix}New cache created: {path}")
    except OSError as e:
        LOGGER.warning(f"{prefix}WARNING ⚠️ Cache directory {path.parent} is not writeable: {e}")


def _results(im_files: Sequence[str], label_files: Sequence[str], prefix: str, workers: int):
    """Verdicts in file order, from a process pool for large splits."""
    jobs = zip(im_files, label_files, [prefix] * len(im_files))
    if workers > 1 and len(im_files) >= POOL_MIN_FILES:
        with Pool(workers) as pool:
            yield from pool.imap(verify_image_label, jobs, chunksize=64)
    else:
        yield from map(verify_image_label, jobs)


def _orphan_labels(im_files: Sequence[str], label_files: Sequence[str], prefix: str) -> list:
    """One warning per labels folder holding .txt files that no image maps to (YOLOv5 ignores them silently)."""
    expected = set(label_files)
    msgs = []
    # only folders the images -> labels rule produced: labels beside their images share a folder with other files
    folders = {os.path.dirname(lf): os.path.dirname(im) for im, lf in zip(im_files, label_files)
               if os.path.dirname(lf) != os.path.dirname(im)}
    for d, image_dir in sorted(folders.items()):
        if not os.path.isdir(d):
            continue
        unused = set(glob.glob(os.path.join(d, "*.txt"))) - expected
        if not unused:
            continue
        # a label whose image exists belongs to another split listed from the same folders (train.txt / val.txt)
        stems = {Path(f).stem for f in glob.glob(os.path.join(image_dir, "*.*")) if has_image_suffix(f)}
        orphans = sorted(f for f in unused if Path(f).stem not in stems)
        if orphans:
            msgs.append(f"{prefix}WARNING ⚠️ {len(orphans)} label files in {d} have no matching image and are "
                        f"ignored, e.g. {orphans[0]}")
    return msgs


def _summary(n: int, nm: int, reasons: Counter, fixes: Counter, first_missing: str, prefix: str) -> str:
    """One line counting what was skipped or fixed and why, and images without a label file ('' if none)."""
    parts = []
    if reasons:
        why = ", ".join(f"{v} {k}" for k, v in reasons.most_common())
        parts.append(f"{sum(reasons.values())} of {n} images skipped as corrupt ({why})")
    if fixes:
        parts.append("fixed: " + ", ".join(f"{v} {k}" for k, v in fixes.most_common()))
    if nm:  # empty label files are deliberate backgrounds; missing ones may be a mistake
        parts.append(f"{nm} images have no label file and are used as backgrounds (e.g. {first_missing} is missing)")
    return f"{prefix}label check: " + "; ".join(parts) if parts else ""


def scan_labels(im_files: Sequence[str], label_files: Sequence[str], cache_path: Path, prefix: str = "",
                workers: int = 0) -> dict:
    """Verify every image/label pair, log each problem and a summary, save and return the cache dict."""
    workers = workers or min(8, os.cpu_count() or 1)
    x, msgs, reasons, fixes = {}, [], Counter(), Counter()
    nm = nf = ne = nc = 0
    first_missing = ""
    desc = f"{prefix}Scanning {cache_path.parent / cache_path.stem}..."
    bar = tqdm(_results(im_files, label_files, prefix, workers), desc=desc, total=len(im_files),
               disable=LOCAL_RANK > 0, bar_format="{l_bar}{bar:10}{r_bar}", leave=True)
    for i, r in enumerate(bar):
        r: LabelCheck
        nm, nf, ne, nc = nm + r.missing, nf + r.found, ne + r.empty, nc + r.corrupt
        if r.im_file:
            x[r.im_file] = [r.labels, r.shape, r.segments]
        if r.missing and not first_missing:
            first_missing = label_files[i]
        reasons.update([r.reason] if r.reason else [])
        fixes.update(r.fixes)
        msgs += r.msgs
        bar.set_description_str(f"{desc} {nf} images, {nm + ne} backgrounds, {nc} corrupt", refresh=False)
    bar.close()
    msgs += _orphan_labels(im_files, label_files, prefix)
    summary = _summary(len(im_files), nm, reasons, fixes, first_missing, prefix)
    msgs += [summary] if summary else []
    if msgs:
        LOGGER.warning("\n".join(msgs))
    if nf == 0:
        LOGGER.warning(f"{prefix}WARNING ⚠️ No labels found in {cache_path}")
    x["hash"] = dataset_hash(list(label_files) + list(im_files))  # after the scan: restored JPEGs changed size
    x["results"] = nf, nm, ne, nc, len(im_files)
    x["msgs"] = msgs
    x["version"] = CACHE_VERSION
    save_cache(cache_path, x, prefix)
    return x


def load_or_scan(im_files: Sequence[str], label_files: Sequence[str], cache_path: Path, prefix: str = "") -> dict:
    """The split's cache: reused when its version and hash match the files on disk, else rebuilt by a scan.

    A reused cache re-logs its scan line and its warnings, so problems stay visible on every run.
    """
    cache = load_cache(cache_path)
    if (cache is None or cache.get("version") != CACHE_VERSION
            or cache.get("hash") != dataset_hash(list(label_files) + list(im_files))):
        return scan_labels(im_files, label_files, cache_path, prefix)
    if LOCAL_RANK in (-1, 0):
        nf, nm, ne, nc, n = cache["results"]
        LOGGER.info(f"{prefix}Scanning {cache_path}... {nf} images, {nm + ne} backgrounds, {nc} corrupt (cached)")
        if cache["msgs"]:
            LOGGER.warning("\n".join(cache["msgs"]))
    return cache
