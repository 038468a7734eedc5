"""Label verifier: one test per bad-input case (outcome + message), plus a fuzz parity check of the outcomes."""

import logging
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.dataset_scan import exif_size, imread, list_image_files
from utils.label_cache import scan_labels
from utils.label_check import check_label_classes, verify_image_label

GOOD = "0 0.5 0.5 0.2 0.2\n"


def _image(path: Path, size=(64, 64), ext=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return path


def _pair(tmp_path: Path, label_text=None, name="a.jpg"):
    """An image under images/ and (optionally) its label under labels/; returns the verdict."""
    im = _image(tmp_path / "images" / name)
    lb = tmp_path / "labels" / (Path(name).stem + ".txt")
    if label_text is not None:
        lb.parent.mkdir(parents=True, exist_ok=True)
        lb.write_text(label_text)
    return verify_image_label((str(im), str(lb), "")), lb


def _corrupt(r, *words):
    assert r.corrupt == 1 and r.im_file is None
    text = " ".join(r.msgs)
    for w in words:
        assert w in text, (w, text)


# ------------------------------------------------------------------ kept / background
def test_valid_label_kept(tmp_path):
    r, _ = _pair(tmp_path, GOOD + "3 0.1 0.2 0.05 0.06\n")
    assert (r.found, r.corrupt, r.im_file is not None) == (1, 0, True)
    np.testing.assert_allclose(r.labels, [[0, 0.5, 0.5, 0.2, 0.2], [3, 0.1, 0.2, 0.05, 0.06]], rtol=1e-6)
    assert r.shape == (64, 64) and r.msgs == []


def test_missing_label_is_background(tmp_path):
    r, _ = _pair(tmp_path, None)
    assert (r.missing, r.found, r.corrupt, r.labels.shape) == (1, 0, 0, (0, 5))


def test_empty_label_is_background(tmp_path):
    r, _ = _pair(tmp_path, "\n  \n")
    assert (r.empty, r.found, r.corrupt, r.labels.shape) == (1, 1, 0, (0, 5))


def test_zero_size_and_overhanging_boxes_allowed(tmp_path):
    r, _ = _pair(tmp_path, "0 0.5 0.5 0 0\n1 0.95 0.95 0.3 0.3\n")
    assert r.corrupt == 0 and len(r.labels) == 2


def test_blank_lines_at_the_ends_are_ignored(tmp_path):
    r, _ = _pair(tmp_path, "\n   \n" + GOOD + "  \n\n")
    assert r.corrupt == 0 and len(r.labels) == 1


def test_duplicate_rows_removed(tmp_path):
    r, lb = _pair(tmp_path, GOOD + "1 0.1 0.1 0.1 0.1\n" + GOOD)
    assert r.corrupt == 0 and len(r.labels) == 2 and r.fixes == {"duplicate rows removed": 1}
    assert "1 duplicate labels removed" in r.msgs[0] and "lines 3" in r.msgs[0] and str(lb) in r.msgs[0]


def test_polygon_rows_become_boxes(tmp_path):
    r, _ = _pair(tmp_path, "2 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n")
    np.testing.assert_allclose(r.labels, [[2, 0.3, 0.4, 0.4, 0.4]], rtol=1e-6)
    assert len(r.segments) == 1 and r.segments[0].shape == (4, 2)


def test_polygon_file_with_box_rows_warns(tmp_path):
    r, _ = _pair(tmp_path, "2 0.1 0.2 0.5 0.2 0.5 0.6\n" + GOOD)
    assert r.corrupt == 0 and "read as polygons" in r.msgs[0] and "line 2" in r.msgs[0]


def test_fractional_class_kept_with_warning(tmp_path):
    r, _ = _pair(tmp_path, "1.5 0.5 0.5 0.2 0.2\n")
    assert r.corrupt == 0 and "class 1.5 is not a whole number" in r.msgs[0]


# ------------------------------------------------------------------ label rows rejected
@pytest.mark.parametrize("text, words", [
    (GOOD + "0 0.5 0.5 0.2\n", ["line 2", "4 values, expected 5"]),
    ("0 0.5 0.5 0.2 0.2 0.9\n", ["line 1", "6 values, expected 5"]),
    (GOOD + "0 0.5 abc 0.2 0.2\n", ["line 2", "'abc' is not a number"]),
    ("0 0.5 nan 0.2 0.2\n", ["line 1", "not a finite number"]),
    ("0 0.5 0.5 inf 0.2\n", ["line 1", "not a finite number"]),
    ("inf 0.5 0.5 0.2 0.2\n", ["line 1", "not a finite number"]),  # YOLOv5 keeps it, then train crashes
    (GOOD + "\n" + GOOD + "0 -0.1 0.5 0.2 0.2\n", ["line 4", "negative value -0.1"]),
    ("-1 0.5 0.5 0.2 0.2\n", ["line 1", "negative value -1"]),
    (GOOD + "0 0.5 1.5 0.2 0.2\n", ["line 2", "coordinate 1.5 > 1"]),
    (GOOD + "   \n" + GOOD.replace("0 ", "1 ", 1), ["line 2", "only spaces"]),
    ("2 0.1 0.2 0.5 0.2 0.5 0.6 0.1\n", ["line 1", "x y pairs"]),
])
def test_bad_rows_reject_file(tmp_path, text, words):
    r, lb = _pair(tmp_path, text)
    _corrupt(r, "ignoring corrupt image/label", str(lb), *words)
    assert r.found == 1 and r.reason


def test_non_utf8_label_rejected(tmp_path):
    im = _image(tmp_path / "images" / "a.jpg")
    lb = tmp_path / "labels" / "a.txt"
    lb.parent.mkdir()
    lb.write_bytes(b"0 0.5 0.5 0.2 0.2\n\xff\xfe\n")
    _corrupt(verify_image_label((str(im), str(lb), "")), "not UTF-8")


# ------------------------------------------------------------------ images
def test_zero_byte_image(tmp_path):
    f = tmp_path / "z.jpg"
    f.write_bytes(b"")
    _corrupt(verify_image_label((str(f), str(tmp_path / "z.txt"), "")), str(f), "empty image file")


def test_non_image_file(tmp_path):
    f = tmp_path / "t.png"
    f.write_text("hello, not pixels")
    _corrupt(verify_image_label((str(f), str(tmp_path / "t.txt"), "")), "not an image Pillow can read")


def test_random_bytes_image(tmp_path):
    f = tmp_path / "r.jpg"
    f.write_bytes(np.random.default_rng(1).integers(0, 255, 500, dtype=np.uint8).tobytes())
    _corrupt(verify_image_label((str(f), str(tmp_path / "r.txt"), "")), "not an image")


def test_truncated_jpeg_rejected(tmp_path):
    f = _image(tmp_path / "t.jpg")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    _corrupt(verify_image_label((str(f), str(tmp_path / "t.txt"), "")), "could not be restored")


def test_jpeg_without_end_marker_restored(tmp_path):
    f = _image(tmp_path / "j.jpg")
    f.write_bytes(f.read_bytes() + b"trailing junk")
    r = verify_image_label((str(f), str(tmp_path / "j.txt"), ""))
    assert r.corrupt == 0 and r.im_file == str(f) and "corrupt JPEG restored and saved" in r.msgs[0]
    assert f.read_bytes()[-2:] == b"\xff\xd9" and r.fixes["corrupt JPEGs restored"] == 1


@pytest.mark.parametrize("cut", [1, 2])
def test_jpeg_cut_before_its_end_marker_restored(tmp_path, cut):
    """Only the FFD9 marker (or half of it) is missing: the scan is complete, so the pixels are restored."""
    f = _image(tmp_path / "m.jpg")
    original = cv2.imread(str(f))
    f.write_bytes(f.read_bytes()[:-cut])
    r = verify_image_label((str(f), str(tmp_path / "m.txt"), ""))
    assert r.corrupt == 0 and r.im_file == str(f) and "corrupt JPEG restored and saved" in r.msgs[0]
    assert f.read_bytes()[-2:] == b"\xff\xd9"
    assert np.abs(cv2.imread(str(f)).astype(int) - original).mean() < 2  # quality-100 re-encode of the same pixels


@pytest.mark.parametrize("cut", [3, 40, 500])
def test_jpeg_missing_scan_data_rejected(tmp_path, cut):
    """Bytes of the image data itself are gone: restoring would invent pixels, so the file is skipped as YOLOv5 does."""
    f = _image(tmp_path / "s.jpg")
    before = f.read_bytes()[:-cut]
    f.write_bytes(before)
    _corrupt(verify_image_label((str(f), str(tmp_path / "s.txt"), "")), "could not be restored")
    assert f.read_bytes() == before  # a rejected file is left as it was


def test_tiny_image_rejected(tmp_path):
    f = _image(tmp_path / "s.png", size=(9, 40))
    _corrupt(verify_image_label((str(f), str(tmp_path / "s.txt"), "")), "9x40", "below 10 px")


def test_gif_named_jpg_rejected(tmp_path):
    f = tmp_path / "g.jpg"
    Image.new("RGB", (32, 32)).save(f, format="GIF")
    _corrupt(verify_image_label((str(f), str(tmp_path / "g.txt"), "")), "GIF")


def test_missing_image_rejected(tmp_path):
    _corrupt(verify_image_label((str(tmp_path / "nope.jpg"), str(tmp_path / "nope.txt"), "")), "not found")


@pytest.mark.parametrize("kind", ["gray", "rgba", "png16", "gray16", "cmyk", "palette"])
def test_unusual_pixel_formats_load_as_bgr(tmp_path, kind):
    f = tmp_path / ("x.jpg" if kind == "cmyk" else "x.png")
    rng = np.random.default_rng(0)
    if kind == "gray":
        cv2.imwrite(str(f), rng.integers(0, 255, (20, 30), dtype=np.uint8))
    elif kind == "rgba":
        cv2.imwrite(str(f), rng.integers(0, 255, (20, 30, 4), dtype=np.uint8))
    elif kind == "png16":
        cv2.imwrite(str(f), rng.integers(0, 65535, (20, 30, 3), dtype=np.uint16))
    elif kind == "gray16":
        cv2.imwrite(str(f), rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    elif kind == "cmyk":
        Image.new("CMYK", (30, 20), (0, 80, 160, 10)).save(f)
    else:
        Image.new("P", (30, 20), 3).save(f)
    r = verify_image_label((str(f), str(tmp_path / "x.txt"), ""))
    assert r.corrupt == 0 and r.shape == (30, 20)
    im = imread(f)
    assert im.shape == (20, 30, 3) and im.dtype == np.uint8


@pytest.mark.parametrize("orientation, swapped", [(1, False), (3, False), (6, True), (8, True), (5, True)])
def test_exif_rotation_size_matches_loaded_image(tmp_path, orientation, swapped):
    f = tmp_path / "e.jpg"
    exif = Image.Exif()
    exif[274] = orientation
    Image.new("RGB", (40, 20), (200, 10, 10)).save(f, exif=exif.tobytes())
    r = verify_image_label((str(f), str(tmp_path / "e.txt"), ""))
    assert r.shape == ((20, 40) if swapped else (40, 20))
    assert imread(f).shape[:2] == (r.shape[1], r.shape[0])  # (h, w) as decoded == EXIF-corrected size


def test_tiff_opencv_cannot_decode_falls_back_to_pillow(tmp_path):
    f = tmp_path / "t.tif"
    Image.new("RGB", (40, 20), (0, 0, 255)).save(f, tiffinfo={274: 6})
    with Image.open(f) as im:
        assert exif_size(im) == (20, 40)
    out = imread(f)
    assert out.shape == (40, 20, 3) and tuple(out[0, 0]) == (255, 0, 0)  # BGR


# ------------------------------------------------------------------ dataset-level cases
def test_class_ids_checked_against_nc(tmp_path):
    lb = tmp_path / "labels" / "x.txt"
    lb.parent.mkdir()
    lb.write_text("1 0.5 0.5 0.2 0.2\n91 0.5 0.5 0.2 0.2\n")
    labels = [np.array([[1, 0.5, 0.5, 0.2, 0.2], [91, 0.5, 0.5, 0.2, 0.2]], np.float32)]
    with pytest.raises(ValueError, match=r"x\.txt line 2: class 91 >= nc=80 \(data/foo\.yaml\)"):
        check_label_classes([str(lb)], labels, 80, "data/foo.yaml")
    check_label_classes([str(lb)], labels, 92, "data/foo.yaml")  # fine


def test_labels_folder_without_images(tmp_path):
    d = tmp_path / "labels" / "train"
    d.mkdir(parents=True)
    (d / "a.txt").write_text(GOOD)
    with pytest.raises(FileNotFoundError, match=r"no images found.*labels folder.*images[/\\]train"):
        list_image_files(d)


def test_scan_reports_every_rejected_file_and_a_summary(tmp_path, caplog):
    ok = _image(tmp_path / "images" / "ok.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "ok.txt").write_text(GOOD + GOOD)
    bad = _image(tmp_path / "images" / "bad.jpg")
    (tmp_path / "labels" / "bad.txt").write_text("0 0.5 0.5 1.2 0.2\n")
    nolabel = _image(tmp_path / "images" / "nolabel.jpg")
    junk = tmp_path / "images" / "junk.jpg"
    junk.write_text("junk")
    (tmp_path / "labels" / "orphan.txt").write_text(GOOD)
    ims = sorted(map(str, (ok, bad, nolabel, junk)))
    lbs = [str(tmp_path / "labels" / (Path(x).stem + ".txt")) for x in ims]
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        cache = scan_labels(ims, lbs, tmp_path / "labels.cache", prefix="train: ")
    assert cache["results"] == (2, 1, 0, 2, 4)  # found, missing, empty, corrupt, total
    assert set(k for k in cache if k.endswith(".jpg")) == {str(ok), str(nolabel)}
    log = caplog.text
    assert f"{bad}: ignoring corrupt image/label" in log and "coordinate 1.2 > 1" in log
    assert f"{junk}: ignoring corrupt image/label" in log
    assert "orphan.txt" in log and "no matching image" in log
    summary = cache["msgs"][-1]
    assert "2 of 4 images skipped as corrupt (1 coordinate > 1, 1 unreadable image)" in summary
    assert "1 duplicate rows removed" in summary and "1 images have no label file" in summary


# ------------------------------------------------------------------ parity fuzz against the plain rules
def _plain_rules(lb_path: Path):
    """YOLOv5 v7.0's verdict on a label file computed the blunt way (whole-file numpy conversion), for comparison."""
    rows = [x.split() for x in lb_path.read_text().strip().splitlines() if len(x)]
    try:
        if any(len(r) > 6 for r in rows):
            cls = np.array([r[0] for r in rows], np.float32)
            segs = [np.array(r[1:], np.float32).reshape(-1, 2) for r in rows]
            xyxy = np.array([[s[:, 0].min(), s[:, 1].min(), s[:, 0].max(), s[:, 1].max()] for s in segs])
            xywh = np.concatenate(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)
            arr = np.concatenate((cls[:, None], xywh), 1).astype(np.float32)
        else:
            arr = np.array(rows, np.float32)
    except (ValueError, IndexError):
        return "corrupt", None
    if not len(arr):
        return "empty", None
    if arr.shape[1] != 5 or not (arr >= 0).all() or (arr[:, 1:] > 1).any():
        return "corrupt", None
    return "kept", np.unique(arr, axis=0)


def _fuzz_text(rng: random.Random) -> str:
    bad = ["abc", "nan", "-0.2", "1.3", "inf", "1e-3", "0x1", "+0.5", ".5", "7."]
    lines = []
    for _ in range(rng.randint(0, 4)):
        n = rng.choice([5, 5, 5, 4, 6, 7, 8, 9, 1, 3])
        row = [str(rng.randint(0, 3))] + [f"{rng.random():.3f}" for _ in range(n - 1)]
        if rng.random() < 0.25:
            row[rng.randrange(len(row))] = rng.choice(bad)
        lines.append(" ".join(row))
        if rng.random() < 0.15:
            lines.append(lines[-1])  # duplicate
        if rng.random() < 0.05:
            lines.append(rng.choice(["", "   "]))
    return rng.choice(["", "\n", " \n"]) + "\n".join(lines) + rng.choice(["", "\n", "\n \n"])


def test_fuzz_outcomes_match_plain_rules(tmp_path):
    im = _image(tmp_path / "images" / "a.jpg")
    rng = random.Random(0)
    seen = set()
    for i in range(300):
        lb = tmp_path / "labels" / f"f{i}.txt"
        lb.parent.mkdir(exist_ok=True)
        lb.write_text(_fuzz_text(rng))
        outcome, arr = _plain_rules(lb)
        r = verify_image_label((str(im), str(lb), ""))
        got = "corrupt" if r.corrupt else "empty" if r.empty else "kept"
        if outcome == "kept" and not np.isfinite(arr).all():
            outcome = "corrupt"  # our one stricter rule: an infinite class id is rejected
        assert got == outcome, (lb.read_text(), r.msgs)
        if got == "kept":
            np.testing.assert_array_equal(np.unique(r.labels, axis=0), arr)
        seen.add(outcome)
    assert seen == {"kept", "empty", "corrupt"}
