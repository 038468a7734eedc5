"""Checkpoint files: safe loading (weights_only + an allow-list), explicit opt-in for legacy pickles, atomic saves.

Checkpoints keep YOLOv5's layout: a dict (epoch, best_fitness, model, ema, updates, optimizer, opt, git, date)
whose `model`/`ema` are pickled DetectionModels. Only the classes listed here may be rebuilt, so
`torch.load(weights_only=True)` can read them; anything else (numpy objects in an unstripped YOLOv5 last.pt,
arbitrary code) needs --trust-weights or YOLOV5_TRUST_WEIGHTS=1.
"""

import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Union

import torch
import torch.nn as nn

from models import common, yolo
from utils.files import atomic_write
from utils.logger import LOGGER

TRUST_ENV = "YOLOV5_TRUST_WEIGHTS"
_NN_CLASSES = (nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Sigmoid,
               nn.Identity, nn.MaxPool2d, nn.Upsample, nn.Sequential, nn.ModuleList, nn.ConvTranspose2d,
               nn.ModuleDict)
_warned_trust = False


class UntrustedCheckpointError(RuntimeError):
    """The file holds objects outside the allow-list; loading it would mean running arbitrary pickle code."""


def _project_classes():
    names = [n for n in dir(common) if isinstance(getattr(common, n), type) and issubclass(getattr(common, n), nn.Module)]
    classes = [getattr(common, n) for n in names] + [yolo.Detect, yolo.DetectionModel, yolo.BaseModel]
    return classes


def safe_globals() -> list:
    """Allow-list for weights_only loading: this project's blocks, the torch.nn layers they use, and aliases for
    the module paths other YOLOv5 distributions pickle (`yolov5.models.common.Conv`, `models.yolo.Model`)."""
    allowed = list(_NN_CLASSES) + [set]
    for cls in _project_classes():
        allowed.append(cls)
        allowed.append((cls, f"yolov5.{cls.__module__}.{cls.__name__}"))
    allowed.append((yolo.DetectionModel, "models.yolo.Model"))
    allowed.append((yolo.DetectionModel, "yolov5.models.yolo.Model"))
    return allowed


class _AliasUnpickler(pickle.Unpickler):
    """Full (trusted) unpickling that maps the pip `yolov5.` package paths onto this repo's modules."""

    def find_class(self, module, name):
        if module.startswith("yolov5.models.") or module.startswith("yolov5.utils."):
            module = module[len("yolov5."):]
        return super().find_class(module, name)


class _AliasPickleModule:
    Unpickler = _AliasUnpickler
    load = pickle.load
    __name__ = "pickle"


def trusted_by_env() -> bool:
    return os.environ.get(TRUST_ENV, "").lower() in ("1", "true", "yes")


def load_checkpoint(path: Union[str, Path], trust: bool = False, map_location="cpu"):
    """torch.load a checkpoint safely; with `trust` (or YOLOV5_TRUST_WEIGHTS=1) allow any pickle, saying so once.

    Raises FileNotFoundError, UntrustedCheckpointError (not allow-listed and not trusted) or ValueError
    (a checkpoint of another YOLO generation), each with a message that says what to do.
    """
    global _warned_trust
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found. This project never downloads weights; pass the "
                                f"path of a local .pt file (or --weights '' to train from scratch)")
    if not _is_torch_file(path):
        raise _unreadable(path, "neither a zip archive nor a pickle stream")
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported operand" in str(e):  # bytes no pickler writes: damage, not an unsafe object
            raise _unreadable(path, "invalid pickle data") from None
        reason = _unsafe_reason(e)
    except (RuntimeError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise _unreadable(path, f"{type(e).__name__}: {e}") from None
    _refuse_foreign(path, reason)
    if not (trust or trusted_by_env()):
        raise UntrustedCheckpointError(
            f"{path}: refusing to unpickle {reason}, which is outside this project's allow-list and could run "
            f"code. If you trust where this file came from (e.g. a YOLOv5 last.pt), re-run with --trust-weights "
            f"or set {TRUST_ENV}=1")
    if not _warned_trust:
        LOGGER.warning(f"WARNING: loading {path} as a trusted pickle ({reason}); only do this for files you trust")
        _warned_trust = True
    try:
        return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_AliasPickleModule)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise _unreadable(path, f"{type(e).__name__}: {e}") from None
    except ModuleNotFoundError as e:
        _refuse_foreign(path, str(e))
        raise ValueError(f"{path}: the checkpoint needs Python module '{e.name}', which this project does not "
                         f"have; it was not made by YOLOv5 or this project") from None


def _is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (before torch 1.6: a pickle stream, which starts with the PROTO opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _unreadable(path: Path, why: str) -> ValueError:
    why = " ".join(why.split())[:300]  # one line, short: torch's messages can run to paragraphs
    return ValueError(f"{path}: not a readable PyTorch checkpoint ({why}). The file may be truncated or corrupt; "
                      f"restore it or use another weights file")


def _unsafe_reason(e: Exception) -> str:
    msg = str(e)
    for marker in ("Unsupported global: GLOBAL ", "GLOBAL "):
        if marker in msg:
            return "'" + msg.split(marker, 1)[1].split()[0].rstrip(".,") + "'"
    return "objects that are not allow-listed"


def _refuse_foreign(path, reason: str) -> None:
    if "ultralytics" in reason:
        raise ValueError(f"{path}: this is a checkpoint of a newer YOLO generation (YOLOv8 or later, the "
                         f"'ultralytics' package). This project runs YOLOv5 v6/v7 checkpoints; train a model here "
                         f"or export that one to ONNX with its own tools") from None


class _WriteErrors:
    """A file wrapper that remembers the first OSError of write(): torch.save turns a failed write (disk full,
    quota) into an opaque RuntimeError ('unexpected pos ...'), and the real cause is what users need to see."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def _torch_save(ckpt: dict, f) -> None:
    tracked = _WriteErrors(f)
    try:
        torch.save(ckpt, tracked)
    except RuntimeError:
        if tracked.error is None:
            raise
        raise tracked.error from None


def _write_checkpoint(path: Union[str, Path], writer) -> None:
    """atomic_write(path, writer); an OSError becomes one naming the file and the cause (e.g. 'No space left on
    device')."""
    try:
        atomic_write(path, writer)
    except OSError as e:
        err = OSError(f"{path}: checkpoint not saved ({e.strerror or e}); free some disk space or choose another "
                      f"--project. The previous {Path(path).name}, if any, is unchanged")
        err.errno = e.errno
        raise err from None


def save_checkpoint(ckpt: dict, path: Union[str, Path]) -> None:
    """torch.save to a temporary file, then rename: an interrupted or failed save never corrupts `path`.

    Raises OSError naming the file and the cause (e.g. 'No space left on device') when it cannot be written.
    """
    _write_checkpoint(path, lambda f: _torch_save(ckpt, f))


def copy_checkpoint(src: Union[str, Path], dst: Union[str, Path]) -> None:
    """Write the bytes of the checkpoint `src` to `dst`, atomically and with save_checkpoint's errors: what
    save_checkpoint(ckpt, dst) would write after save_checkpoint(ckpt, src) (torch.save's output does not depend on
    the file name), without pickling the models a second time (0.1-0.2 s for an n-scale model on a 2-core CPU)."""
    def copy(f):
        with open(src, "rb") as r:
            shutil.copyfileobj(r, f, 1 << 20)

    _write_checkpoint(dst, copy)


def strip_optimizer(f: Union[str, Path] = "best.pt", s: str = "") -> None:
    """Make a final checkpoint: EMA -> model, drop optimizer/EMA/updates, epoch -1, FP16, no grads."""
    x = load_checkpoint(f, trust=True)
    if x.get("ema"):
        x["model"] = x["ema"]
    for k in ("optimizer", "best_fitness", "ema", "updates"):
        x[k] = None
    x["epoch"] = -1
    x["model"].half()
    for p in x["model"].parameters():
        p.requires_grad = False
    save_checkpoint(x, s or f)
    mb = os.path.getsize(s or f) / 1e6
    LOGGER.info(f"Optimizer stripped from {f},{f' saved as {s},' if s else ''} {mb:.1f}MB")
