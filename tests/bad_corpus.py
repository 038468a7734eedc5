"""A generator of bad inputs for the reliability tests: broken images and labels in one dataset, bad dataset and model
yaml files, bad command-line settings and unsafe checkpoints. Each case says what train/val/detect must do with it.

Run `python tests/bad_corpus.py DIR` to write the corpus to DIR and list the cases.
"""

from __future__ import annotations

import io
import os
import sys
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import yaml
from PIL import Image

# What a run must do with a case.
KEEP = "keep"  # a valid (if unusual) input: used like any other, no message needed
FIX = "fix"  # used after a repair or reinterpretation, with a message naming the file
BACKGROUND = "background"  # used as an image without objects, counted in the scan summary
SKIP = "skip"  # left out with a message naming the file (and line) and why; the rest of the run goes on
IGNORE = "ignore"  # not part of the dataset (e.g. a label without image), with a message naming it
WARN = "warn"  # the run goes on after a message about the setting
STOP = "stop"  # the run stops at once with one clear message

NAMES = ["circle", "square"]  # nc = 2 for every dataset here
GOOD_ROW = "0 0.5 0.5 0.4 0.4"


@dataclass
class Case:
    """One kind of bad input: where it is, what must happen and a fragment the message must contain."""

    kind: str  # e.g. 'image: zero bytes'
    outcome: str  # one of KEEP, FIX, BACKGROUND, SKIP, IGNORE, WARN, STOP
    path: Optional[Path] = None  # the file carrying the problem (image, label, yaml or checkpoint)
    message: str = ""  # must appear in the log line or error that names `path`
    reason: str = ""  # the scan summary's category for SKIP cases ('unreadable image', 'nan/inf value', ...)
    args: dict = field(default_factory=dict)  # run() keyword arguments for CLI cases
    image: Optional[Path] = None  # for image and label cases: the image file the dataset lists

    def __post_init__(self):
        if self.image is None and self.kind.startswith("image:"):
            self.image = self.path


def _picture(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """BGR uint8 (h, w, 3): a dark noisy background with one bright square, the object of GOOD_ROW."""
    rng = np.random.default_rng(seed)
    im = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    cv2.rectangle(im, (int(w * 0.3), int(h * 0.3)), (int(w * 0.7), int(h * 0.7)), (40, 200, 250), -1)
    return im


def _jpeg_bytes(im: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", im)[1].tobytes()


def _write(path: Path, data, label=GOOD_ROW) -> Path:
    """Write image bytes (or an array via cv2) at images/<name> and, unless None, its label (text, or raw bytes)
    at labels/<stem>.txt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, np.ndarray):
        if not cv2.imwrite(str(path), data):
            raise OSError(f"cv2 could not write {path}")
    else:
        path.write_bytes(data)
    if label is not None:
        lb = label_of(path)
        lb.parent.mkdir(parents=True, exist_ok=True)
        lb.write_bytes(label) if isinstance(label, bytes) else lb.write_text(label + ("\n" if label else ""))
    return path


def label_of(image: Path) -> Path:
    """The images -> labels rule for files written here (root/images/x.jpg -> root/labels/x.txt)."""
    return image.parent.parent / "labels" / f"{image.stem}.txt"


def _pil_save(path: Path, im: Image.Image, label: str = GOOD_ROW, **kw) -> Path:
    buf = io.BytesIO()
    im.save(buf, **kw)
    return _write(path, buf.getvalue(), label)


# ---------------------------------------------------------------- images and labels (one dataset)

def _bad_images(d: Path) -> list:
    """Image files that are unusual (kept) or broken (skipped); each has a valid label."""
    good_jpeg = _jpeg_bytes(_picture(seed=1))
    rgb = Image.fromarray(_picture(seed=2)[..., ::-1].copy())
    exif = Image.Exif()
    exif[274] = 6  # orientation 6: stored 64 wide x 40 high, shown rotated 90 degrees, 40 x 64
    big = np.full((4000, 5000, 3), 90, np.uint8)
    cv2.rectangle(big, (1500, 1200), (3500, 2800), (40, 200, 250), -1)
    return [
        Case("image: random bytes", SKIP, _write(d / "corrupt_bytes.jpg", np.random.default_rng(0).bytes(3000)),
             "not an image Pillow can read", "unreadable image"),
        Case("image: truncated JPEG", SKIP, _write(d / "truncated.jpg", good_jpeg[: len(good_jpeg) // 2]),
             "JPEG lacks its end marker and could not be restored", "truncated JPEG"),
        Case("image: JPEG without its end marker (cut 2 bytes short)", FIX,
             _write(d / "no_end_marker.jpg", good_jpeg[:-2]), "corrupt JPEG restored and saved"),
        Case("image: JPEG cut 1 byte short (half an end marker)", FIX,
             _write(d / "half_end_marker.jpg", good_jpeg[:-1]), "corrupt JPEG restored and saved"),
        Case("image: JPEG with bytes after its end marker", FIX, _write(d / "trailing.jpg", good_jpeg + b"junk"),
             "corrupt JPEG restored and saved"),
        Case("image: zero bytes", SKIP, _write(d / "zero_bytes.jpg", b""), "empty image file (0 bytes)",
             "unreadable image"),
        Case("image: text file named .jpg", SKIP, _write(d / "text.jpg", b"this is not a picture\n" * 20),
             "not an image Pillow can read", "unreadable image"),
        Case("image: GIF data named .png", SKIP, _pil_save(d / "gif_data.png", rgb.convert("P"), format="GIF"),
             "image data is GIF", "unsupported image format"),
        Case("image: unsupported extension", IGNORE, _write(d / "photo.jfif", good_jpeg, label=None),
             "not images by their suffix"),
        Case("image: tiny (8x8)", SKIP, _write(d / "tiny.png", _picture(8, 8)), "image size 8x8 is below 10 px",
             "image too small"),
        Case("image: grayscale", KEEP, _write(d / "gray.jpg", cv2.cvtColor(_picture(seed=3), cv2.COLOR_BGR2GRAY))),
        Case("image: RGBA PNG", KEEP, _write(d / "rgba.png", cv2.cvtColor(_picture(seed=4), cv2.COLOR_BGR2BGRA))),
        Case("image: 16-bit PNG", KEEP, _write(d / "sixteen_bit.png", _picture(seed=5).astype(np.uint16) * 257)),
        Case("image: CMYK JPEG", KEEP, _pil_save(d / "cmyk.jpg", rgb.convert("CMYK"), format="JPEG")),
        Case("image: EXIF-rotated JPEG", KEEP, _pil_save(d / "exif_rot6.jpg", rgb.resize((64, 40)),
                                                         format="JPEG", exif=exif.tobytes())),
        Case("image: very large (5000x4000)", KEEP, _write(d / "large.jpg", big)),
        Case("image: PNG data named .jpg", KEEP, _write(d / "png_data.jpg", cv2.imencode(".png", _picture(seed=6))[1]
                                                        .tobytes())),
    ]


def _bad_labels(d: Path) -> list:
    """Valid images whose label files are broken (skipped), odd (fixed/kept) or absent (background)."""
    def case(kind: str, outcome: str, name: str, label, message: str = "", reason: str = ""):
        image = _write(d / f"{name}.jpg", _picture(seed=len(name)), label)
        return Case(kind, outcome, label_of(image), message, reason, image=image)

    polygon = "1 0.3 0.3 0.7 0.3 0.7 0.7 0.3 0.7"  # a square from (0.3, 0.3) to (0.7, 0.7)
    return [
        case("label: wrong column count", SKIP, "cols", f"{GOOD_ROW}\n0 0.5 0.5 0.1", "line 2: 4 values, expected 5",
             "wrong column count"),
        case("label: text", SKIP, "words", "zero 0.5 0.5 0.2 0.2", "'zero' is not a number", "non-numeric value"),
        case("label: NaN", SKIP, "nan", "0 nan 0.5 0.2 0.2", "value nan is not a finite number", "nan/inf value"),
        case("label: inf", SKIP, "inf", f"{GOOD_ROW}\n1 0.5 0.5 inf 0.2", "line 2: value inf is not a finite number",
             "nan/inf value"),
        case("label: negative", SKIP, "negative", "0 0.5 -0.25 0.2 0.2", "negative value -0.25", "negative value"),
        case("label: coordinate > 1", SKIP, "over_one", "1 1.5 0.5 0.2 0.2", "coordinate 1.5 > 1", "coordinate > 1"),
        case("label: duplicate rows", FIX, "dupes", f"{GOOD_ROW}\n{GOOD_ROW}", "1 duplicate labels removed"),
        case("label: empty file", BACKGROUND, "empty", ""),
        case("label: missing file", BACKGROUND, "missing", None, "have no label file"),
        case("label: polygon rows", KEEP, "polygon", polygon),
        case("label: polygon and box rows mixed", FIX, "mixed", f"{polygon}\n{GOOD_ROW}", "is read as polygons"),
        case("label: polygon with an odd coordinate count", SKIP, "odd_polygon", polygon[:-4], "a polygon row is",
             "bad polygon"),
        case("label: line of spaces inside", SKIP, "spaces", f"{GOOD_ROW}\n   \n{GOOD_ROW}",
             "line 2: a line of only spaces", "blank row"),
        case("label: not UTF-8 text", SKIP, "latin1", f"{GOOD_ROW} # caf\xe9".encode("latin-1"), "not UTF-8 text",
             "unreadable label file"),
    ]


def write_dataset(root: Path, n_good: int = 6) -> tuple:
    """Write root/{images,labels} with n_good clean images, every image and label kind, an orphan label and a
    dataset yaml with an unknown key. -> (yaml path, [Case])."""
    d = root / "images"
    for i in range(n_good):
        _write(d / f"good{i}.jpg", _picture(seed=100 + i))
    cases = _bad_images(d) + _bad_labels(d)
    orphan = root / "labels" / "orphan_without_image.txt"
    orphan.write_text(GOOD_ROW + "\n")
    cases.append(Case("label: orphan without image", IGNORE, orphan, "have no matching image and are ignored"))
    data = {"path": str(root), "train": "images", "val": "images", "names": NAMES,
            "roboflow": {"license": "CC BY 4.0"}}  # an unknown key: a warning, not an error
    yml = root / "data.yaml"
    yml.write_text(yaml.safe_dump(data, sort_keys=False))
    cases.append(Case("dataset yaml: unknown key", WARN, yml, "unknown key(s) roboflow ignored"))
    return yml, cases


def write_clean_dataset(root: Path, n: int = 8, nc_rows: Optional[dict] = None) -> Path:
    """root/{images,labels} with n clean 64x64 images (train = val) -> dataset yaml. nc_rows: {index: label text}."""
    for i in range(n):
        _write(root / "images" / f"im{i}.jpg", _picture(seed=200 + i), (nc_rows or {}).get(i, GOOD_ROW))
    yml = root / "data.yaml"
    yml.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images", "names": NAMES}))
    return yml


def write_class_overflow(root: Path) -> tuple:
    """A clean dataset whose image 2 has a row 'class 5' on line 2 (nc = 2). -> (yaml path, Case)."""
    yml = write_clean_dataset(root, n=4, nc_rows={2: f"{GOOD_ROW}\n5 0.5 0.5 0.2 0.2"})
    lb = root / "labels" / "im2.txt"
    return yml, Case("label: class >= nc", STOP, lb, f"{lb} line 2: class 5 >= nc=2")


# ---------------------------------------------------------------- dataset yaml files

def write_dataset_yamls(root: Path, images: Path) -> list:
    """Broken dataset yaml files around an existing images folder; each must stop a run with one clear line."""
    root.mkdir(parents=True, exist_ok=True)

    def dump(name: str, data=None, text: Optional[str] = None) -> Path:
        f = root / f"{name}.yaml"
        f.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
        return f

    base = {"path": str(images.parent), "train": images.name, "val": images.name}
    return [
        Case("dataset yaml: missing keys", STOP, dump("no_val", {"path": base["path"], "train": base["train"],
                                                                 "names": NAMES}),
             "missing required key(s) val"),
        Case("dataset yaml: names/nc mismatch", STOP, dump("nc_mismatch", {**base, "nc": 3, "names": NAMES}),
             "nc: 3 disagrees with the 2 classes"),
        Case("dataset yaml: val path does not exist", STOP,
             dump("no_val_dir", {**base, "val": "does_not_exist", "names": NAMES}), "does_not_exist does not exist"),
        Case("dataset yaml: train path does not exist", STOP,
             dump("no_train_dir", {**base, "train": "nowhere", "names": NAMES}), "nowhere does not exist"),
        Case("dataset yaml: not valid YAML", STOP, dump("syntax", text="names: [circle, square\ntrain: x\n"),
             "not valid YAML"),
        Case("dataset yaml: names not a list", STOP, dump("names_int", {**base, "names": 5}),
             "'names' must be a non-empty list"),
        Case("dataset yaml: file does not exist", STOP, root / "absent.yaml", "file not found"),
    ]


# ---------------------------------------------------------------- model yaml files

TINY_MODEL = {  # a small ShuffleNetV2 + YOLOv5 head, used as the template of the broken model files
    "nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0, "channel_multiple": 1,
    "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
    "backbone": [[-1, 1, "Conv_maxpool", [8]],  # 0 stride 4
                 [-1, 1, "ShuffleNetV2_InvertedResidual", [16, 2]],  # 1 stride 8
                 [-1, 1, "ShuffleNetV2_InvertedResidual", [16, 1]],  # 2 P3
                 [-1, 1, "ShuffleNetV2_InvertedResidual", [32, 2]],  # 3 P4
                 [-1, 1, "ShuffleNetV2_InvertedResidual", [64, 2]]],  # 4 P5
    "head": [[-1, 1, "Conv", [32, 1, 1]],  # 5
             [[2, 3, 5], 1, "Detect", ["nc", "anchors"]]],  # 6
}


def write_model_yamls(root: Path) -> list:
    """Model yaml files that must stop a run with a message naming the file and the layer."""
    root.mkdir(parents=True, exist_ok=True)

    def dump(name: str, d: dict) -> Path:
        f = root / f"{name}.yaml"
        f.write_text(yaml.safe_dump(d, sort_keys=False))
        return f

    unknown, bad_from, odd, short = (deepcopy(TINY_MODEL) for _ in range(4))
    unknown["head"][0][2] = "C3x2"
    bad_from["backbone"][2][0] = 4  # layer 2 reading layer 4's output: points forward
    odd["backbone"][2][3] = [15, 1]  # a stride-1 ShuffleNet unit splits its channels in halves: 15 cannot be
    short["backbone"][1] = short["backbone"][1][1:]  # [number, module, args] without `from`
    no_anchors = {k: v for k, v in TINY_MODEL.items() if k != "anchors"}
    return [
        Case("model yaml: unknown module", STOP, dump("unknown_module", unknown), "layer 5: unknown module 'C3x2'"),
        Case("model yaml: bad from", STOP, dump("bad_from", bad_from),
             "layer 2: `from` 4 must be -1 or the index of an earlier layer"),
        Case("model yaml: odd ShuffleNet channels", STOP, dump("odd_channels", odd),
             "needs inp == oup and an even number of channels"),
        Case("model yaml: missing key", STOP, dump("no_anchors", no_anchors), "missing top-level key(s) anchors"),
        Case("model yaml: malformed row", STOP, dump("short_row", short),
             "layer 1: expected a row [from, number, module, args]"),
    ]


def write_tiny_model(root: Path) -> Path:
    """The valid TINY_MODEL as a yaml file (fast to train)."""
    root.mkdir(parents=True, exist_ok=True)
    f = root / "tiny.yaml"
    f.write_text(yaml.safe_dump(TINY_MODEL, sort_keys=False))
    return f


# ---------------------------------------------------------------- command-line settings

def cli_cases() -> list:
    """Settings (run() keyword arguments) that must be adjusted with a message, or stop the run."""
    return [
        Case("CLI: image size not a multiple of the stride", WARN, args={"imgsz": 70},
             message="--imgsz 70 is not a multiple of max stride 32; using 96"),
        Case("CLI: batch larger than the dataset", WARN, args={"batch_size": 64},
             message="batch size 64 is larger than the"),
        Case("CLI: device that does not exist", STOP, args={"device": "7"},
             message="--device '7': CUDA device 7 not found"),
        Case("CLI: image size 0", STOP, args={"imgsz": 0}, message="image sizes must be positive"),
        Case("CLI: batch size 0", STOP, args={"batch_size": 0}, message="--batch-size 0"),
        Case("CLI: negative workers", STOP, args={"workers": -1}, message="--workers -1"),
        Case("CLI: zero epochs", STOP, args={"epochs": 0}, message="--epochs 0"),
    ]


# ---------------------------------------------------------------- checkpoints

class RunsCode:
    """Pickles as a call to os.system: loading such a file with plain pickle runs the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_checkpoints(root: Path, model) -> list:
    """Checkpoint files that must be refused (or need trust), each with the expected message fragment.
    `model` is a DetectionModel; the marker file root/pwned appears only if malicious code ran."""
    import torch
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "pwned"
    evil, legacy, truncated, junk, bare = (root / f"{n}.pt" for n in ("evil", "legacy", "truncated", "junk", "bare"))
    torch.save({"epoch": -1, "model": RunsCode(f"touch {marker}")}, evil)
    torch.save({"epoch": 3, "best_fitness": np.array([0.5]), "model": deepcopy(model).half(),
                "ema": deepcopy(model).half(), "updates": 1, "optimizer": None}, legacy)
    torch.save({"epoch": -1, "model": deepcopy(model).half()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    junk.write_bytes(np.random.default_rng(1).bytes(5000))
    torch.save(model.state_dict(), bare)
    return [
        Case("checkpoint: malicious pickle (os.system)", STOP, evil, "refusing to unpickle"),
        Case("checkpoint: legacy YOLOv5 pickle (numpy best_fitness)", STOP, legacy, "--trust-weights"),
        Case("checkpoint: truncated file", STOP, truncated, "not a readable PyTorch checkpoint"),
        Case("checkpoint: random bytes", STOP, junk, "not a readable PyTorch checkpoint"),
        Case("checkpoint: bare state_dict", STOP, bare, "bare state_dict"),
    ]


def all_cases(root: Path) -> list:
    """Write the whole corpus under root and return every case (checkpoints need torch and a model)."""
    from models.yolo import DetectionModel
    _, cases = write_dataset(root / "dataset")
    _, overflow = write_class_overflow(root / "overflow")
    cases += [overflow]
    cases += write_dataset_yamls(root / "data_yamls", root / "dataset" / "images")
    cases += write_model_yamls(root / "model_yamls")
    cases += cli_cases()
    cases += write_checkpoints(root / "checkpoints", DetectionModel(write_tiny_model(root / "model_yamls")))
    return cases


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bad_corpus")
    for c in all_cases(out):
        print(f"{c.outcome:>10}  {c.kind:<50} {c.path or c.args}")
