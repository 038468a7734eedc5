"""Training/val dataset: file listing, label path rule, cache, batches, rect shapes, mosaic property, loaders."""

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import utils.label_cache as label_cache
from utils.dataloaders import (InfiniteDataLoader, LoadImagesAndLabels, create_dataloader, img2label_paths)
from utils.dataset_scan import list_image_files

HYP = dict(lr0=0.01, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=10.0, translate=0.2, scale=0.5, shear=5.0,
           perspective=0.0005, flipud=0.5, fliplr=0.5, mosaic=1.0, mixup=0.5, copy_paste=0.0)


def _make(root: Path, n: int = 6, sizes=((64, 64), (80, 48), (48, 80)), labels=True, seed=0) -> Path:
    """root/images/train/*.jpg with random boxes in root/labels/train; returns the images folder."""
    rng = np.random.default_rng(seed)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        cv2.imwrite(str(root / "images" / "train" / f"im{i}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        if labels:
            k = int(rng.integers(1, 4))
            xy, wh = rng.uniform(0.2, 0.8, (k, 2)), rng.uniform(0.05, 0.4, (k, 2))
            rows = [f"{int(rng.integers(0, 3))} {x:.4f} {y:.4f} {a:.4f} {b:.4f}" for (x, y), (a, b) in zip(xy, wh)]
            (root / "labels" / "train" / f"im{i}.txt").write_text("\n".join(rows) + "\n")
    return root / "images" / "train"


# ------------------------------------------------------------------ listing and the label path rule
def test_img2label_paths_rule():
    sep = os.sep
    a = sep.join(["", "d", "images", "x", "images", "a.b.jpg"])
    assert img2label_paths([a]) == [sep.join(["", "d", "images", "x", "labels", "a.b.txt"])]
    b = sep.join(["", "d", "pics", "c.PNG"])
    assert img2label_paths([b]) == [sep.join(["", "d", "pics", "c.txt"])]


def test_listing_dirs_recursive_sorted_and_filtered(tmp_path):
    for p in ["b/z.JPG", "a.png", "b/c/y.webp", "notes.txt", "x.gif", "noext"]:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b"")
    files, source = list_image_files(tmp_path)
    assert files == sorted(str(tmp_path / p) for p in ["a.png", "b/c/y.webp", "b/z.JPG"]) and source == tmp_path


def test_txt_list_with_dot_slash_entries(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    lst = tmp_path / "sub" / "train.txt"
    lst.write_text(f"./img/b.jpg\n{tmp_path}/abs.png\n./img/readme.md\n")
    monkeypatch.chdir(tmp_path)
    files, source = list_image_files(lst)
    assert files == sorted([str(tmp_path / "sub" / "img" / "b.jpg"), f"{tmp_path}/abs.png"]) and source == lst


def test_list_of_dirs_split(tmp_path):
    a, b = _make(tmp_path / "a", n=2), _make(tmp_path / "b", n=3)
    ds = LoadImagesAndLabels([str(a), str(b)], img_size=64, batch_size=2)
    assert ds.n == 5 and all(len(x) for x in ds.labels)


def test_missing_split_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_image_files(tmp_path / "nope")


# ------------------------------------------------------------------ cache
def test_cache_round_trip_and_invalidation(tmp_path, monkeypatch):
    images = _make(tmp_path)
    ds = LoadImagesAndLabels(str(images), img_size=64)
    cache_file = tmp_path / "labels" / "train.cache"
    assert cache_file.is_file() and not list(tmp_path.glob("labels/*.npy")) and not list(tmp_path.glob("labels/.*"))
    cache = np.load(cache_file, allow_pickle=True).item()
    assert cache["version"] == 0.6 and cache["results"] == (6, 0, 0, 0, 6)
    assert set(cache) - {"hash", "results", "msgs", "version"} == set(ds.im_files)

    calls = []
    real = label_cache.scan_labels
    monkeypatch.setattr(label_cache, "scan_labels", lambda *a, **k: calls.append(1) or real(*a, **k))
    ds2 = LoadImagesAndLabels(str(images), img_size=64)
    assert calls == [] and all((x == y).all() for x, y in zip(ds.labels, ds2.labels))

    lb = tmp_path / "labels" / "train" / "im0.txt"
    text = lb.read_text()
    lb.write_text(("2" if text[0] != "2" else "1") + text[1:])  # same size, new class
    st = lb.stat()
    os.utime(lb, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds3 = LoadImagesAndLabels(str(images), img_size=64)
    assert calls == [1] and ds3.labels[0][0, 0] != ds.labels[0][0, 0]


def test_unwritable_cache_only_warns(tmp_path, monkeypatch, caplog):
    images = _make(tmp_path)

    def refuse(*a, **k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(label_cache, "atomic_write", refuse)
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        ds = LoadImagesAndLabels(str(images), img_size=64)
    assert ds.n == 6 and "not writeable" in caplog.text


# ------------------------------------------------------------------ items and batches
def test_val_item_shapes_and_labels(tmp_path):
    ds = LoadImagesAndLabels(str(_make(tmp_path)), img_size=64)
    img, labels, path, shapes = ds[1]  # 80 x 48 image
    assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
    assert labels.shape[1] == 6 and (labels[:, 2:] >= 0).all() and (labels[:, 2:] <= 1).all()
    (h0, w0), ((gh, gw), (pw, ph)) = shapes
    assert (h0, w0) == (48, 80) and (gh, gw) == (38 / 48, 0.8) and (pw, ph) == (0.0, 13.0)  # 80x48 -> 64x38 (38.4)


def test_rect_batch_shapes(tmp_path):
    _make(tmp_path, n=4, sizes=((64, 32), (64, 32), (32, 64), (32, 64)))
    ds = LoadImagesAndLabels(str(tmp_path / "images" / "train"), img_size=64, batch_size=2, rect=True, pad=0.5)
    assert ds.batch_shapes.tolist() == [[64, 96], [96, 64]]  # (h, w): ceil(shape * 64 / 32 + 0.5) * 32
    imgs = [ds[i][0] for i in range(4)]
    assert [tuple(x.shape[1:]) for x in imgs] == [(64, 96), (64, 96), (96, 64), (96, 64)]


def test_collate_fns():
    items = [(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.ones(i + 1, 6), f"p{i}", None) for i in range(4)]
    imgs, targets, paths, shapes = LoadImagesAndLabels.collate_fn(items)
    assert imgs.shape == (4, 3, 8, 8) and targets[:, 0].tolist() == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    items = [(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.full((1, 6), 0.5), f"p{i}", None) for i in range(8)]
    imgs, targets, paths, _ = LoadImagesAndLabels.collate_fn4(items)
    assert imgs.shape == (2, 3, 16, 16) and set(targets[:, 0].tolist()) == {0, 1} and paths == ("p0", "p1")


def test_mosaic_boxes_stay_inside_with_positive_size(tmp_path):
    ds = LoadImagesAndLabels(str(_make(tmp_path, n=8)), img_size=64, augment=True, hyp=HYP)
    import random
    random.seed(0)
    np.random.seed(0)
    n = 0
    for i in range(40):
        img, labels, _, shapes = ds[i % ds.n]
        assert img.shape == (3, 64, 64) and shapes is None
        xywh = labels[:, 2:]
        assert (xywh[:, 2:] > 0).all()
        assert (xywh[:, :2] - xywh[:, 2:] / 2 >= -1e-6).all() and (xywh[:, :2] + xywh[:, 2:] / 2 <= 1 + 1e-6).all()
        n += len(labels)
    assert n > 0


def test_single_cls_and_class_check(tmp_path):
    images = _make(tmp_path)
    ds = LoadImagesAndLabels(str(images), img_size=64, single_cls=True)
    assert all((x[:, 0] == 0).all() for x in ds.labels)
    ds = LoadImagesAndLabels(str(images), img_size=64)
    with pytest.raises(ValueError, match=r"im\d\.txt line \d: class 2 >= nc=2 \(d\.yaml\)"):
        ds.check_classes(2, "d.yaml")
    ds.check_classes(3)


def test_training_needs_a_label(tmp_path):
    images = _make(tmp_path, labels=False)
    with pytest.raises(ValueError, match="no labels found.*training needs at least one image with a valid label"):
        create_dataloader(str(images), 64, 2, 32, augment=True, hyp=HYP, workers=0)
    loader, ds = create_dataloader(str(images), 64, 2, 32, workers=0)  # val is fine with backgrounds only
    assert ds.n == 6 and sum(len(x) for x in ds.labels) == 0


def test_all_corrupt_is_a_clear_error(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    (d / "a.jpg").write_text("nope")
    with pytest.raises(ValueError, match="none of the 1 images is usable"):
        LoadImagesAndLabels(str(d), img_size=64)


def test_unusual_images_load_as_three_channel(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    cv2.imwrite(str(d / "gray.png"), np.full((40, 60), 90, np.uint8))
    cv2.imwrite(str(d / "rgba.png"), np.full((40, 60, 4), 90, np.uint8))
    cv2.imwrite(str(d / "deep.png"), np.full((40, 60, 3), 40000, np.uint16))
    exif = Image.Exif()
    exif[274] = 6
    Image.new("RGB", (60, 40), (9, 9, 9)).save(d / "rot.jpg", exif=exif.tobytes())
    ds = LoadImagesAndLabels(str(d), img_size=64)
    for i, f in enumerate(ds.im_files):
        im, hw0, _ = ds.load_image(i)
        assert im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8
        assert hw0 == ((60, 40) if f.endswith("rot.jpg") else (40, 60)) == tuple(ds.shapes[i][::-1])


def test_load_image_truncates_resized_sides(tmp_path):
    """YOLOv5 v7.0 truncates the resized sides: 590 x 480 at 320 is 320 x 260 (480 * 320 / 590 = 260.3), and a
    long side whose product lands a hair above the target stays at it (525 * (320 / 525) = 320.00000000000006)."""
    d = tmp_path / "images"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.full((480, 590, 3), 90, np.uint8))
    cv2.imwrite(str(d / "b.png"), np.full((300, 525, 3), 90, np.uint8))
    ds = LoadImagesAndLabels(str(d), img_size=320, augment=False)
    got = {Path(f).name: ds.load_image(i)[2] for i, f in enumerate(ds.im_files)}
    assert got == {"a.png": (260, 320), "b.png": (182, 320)}


@pytest.mark.parametrize("mode", ["ram", "disk"])
def test_image_cache_modes(tmp_path, mode):
    images = _make(tmp_path, n=3)
    ds = LoadImagesAndLabels(str(images), img_size=64, cache_images=mode)
    if mode == "disk":
        assert len(list(images.glob("*.npy"))) == 3
    else:
        assert all(x is not None for x in ds.ims)
    assert ds[0][0].shape == (3, 64, 64)


def test_auto_cache_only_small_splits_same_pixels(tmp_path, monkeypatch):
    import utils.dataloaders as dl
    images = _make(tmp_path, n=4)
    plain = LoadImagesAndLabels(str(images), img_size=64)
    auto = LoadImagesAndLabels(str(images), img_size=64, cache_images="auto")
    assert auto.cache_images == "ram" and all(x is not None for x in auto.ims)
    assert not plain.cache_images
    assert all(x is None for x in plain.ims)
    for i in range(plain.n):  # the cached pixels are the ones a plain load returns
        a, b = plain.load_image(i), auto.load_image(i)
        assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    monkeypatch.setattr(dl, "AUTO_CACHE_BYTES", 1000)  # a split over the limit is read from disk as usual
    big = LoadImagesAndLabels(str(images), img_size=64, cache_images="auto")
    assert not big.cache_images and all(x is None for x in big.ims)


# ------------------------------------------------------------------ loaders
def test_infinite_loader_epochs_and_seeded_workers(tmp_path):
    images = _make(tmp_path, n=6)
    firsts = []
    for _ in range(2):
        loader, ds = create_dataloader(str(images), 64, 4, 32, augment=True, hyp=HYP, workers=2, shuffle=True)
        assert isinstance(loader, InfiniteDataLoader) and len(loader) == 2
        epochs = [[b for b in loader] for _ in range(2)]
        assert [len(e) for e in epochs] == [2, 2] and epochs[0][0][0].shape == (4, 3, 64, 64)
        firsts.append(epochs[0][0])
    assert torch.equal(firsts[0][0], firsts[1][0]) and torch.equal(firsts[0][1], firsts[1][1])


def test_image_weights_uses_plain_loader_and_indices(tmp_path):
    loader, ds = create_dataloader(str(_make(tmp_path)), 64, 2, 32, augment=True, hyp=HYP, workers=0,
                                   image_weights=True)
    assert type(loader) is torch.utils.data.DataLoader
    ds.indices = [3] * ds.n
    assert all(p == ds.im_files[3] for p in next(iter(loader))[2])
