"""Built-in shapes dataset: deterministic bytes, valid and tight labels, sample images, the yaml's generator."""

import numpy as np
import pytest

from utils.datasets_yaml import check_dataset
from utils.files import ROOT, yaml_load
from utils.label_check import verify_image_label
from utils.synthetic import CLASSES, generate_shapes_dataset, render_image, write_sample_images


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "a"
    generate_shapes_dataset(root, n_train=4, n_val=2, seed=3, workers=1)
    return root


def test_same_seed_same_bytes(tiny, tmp_path):
    again = generate_shapes_dataset(tmp_path / "b", n_train=4, n_val=2, seed=3, workers=2)
    a, b = _files(tiny), _files(again)
    assert len(a) == 12 and a == b
    other = _files(generate_shapes_dataset(tmp_path / "c", n_train=4, n_val=2, seed=4, workers=1))
    assert other.keys() == a.keys() and other != a


def test_layout_and_labels_pass_the_verifier(tiny):
    for split, n in (("train", 4), ("val", 2)):
        ims = sorted((tiny / "images" / split).glob("*.jpg"))
        assert len(ims) == n
        for im in ims:
            r = verify_image_label((str(im), str(tiny / "labels" / split / f"{im.stem}.txt"), ""))
            assert r.corrupt == 0 and r.msgs == [] and 320 <= min(r.shape) and max(r.shape) <= 640
            if len(r.labels):
                assert set(r.labels[:, 0].tolist()) <= set(range(len(CLASSES)))
                assert (r.labels[:, 3:] > 0).all()


@pytest.mark.parametrize("seed", range(6))
def test_boxes_are_tight_around_what_was_drawn(seed):
    rng = np.random.default_rng([seed, 5])
    w, h = 400, 330
    img, labels, background, clean = render_image(rng, w, h, debug=True)
    assert img.shape == (h, w, 3) and img.dtype == np.uint8
    changed = np.abs(clean - background).max(2) > 8  # ignore the faintest anti-aliasing tails
    covered = np.zeros((h, w), bool)
    for c, x, y, bw, bh in labels:
        x1, y1, x2, y2 = (round(v) for v in ((x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h))
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and 0 <= c < len(CLASSES)
        covered[max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1] = True  # 1 px of anti-aliased edge
        inner = changed[y1:y2, x1:x2]
        assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()  # tight
    assert not (changed & ~covered).any()  # nothing drawn outside the boxes


def test_dataset_has_variety():
    sizes, counts, empty = [], [], 0
    for i in range(40):
        rng = np.random.default_rng([0, 0, i])
        _, labels = render_image(rng, 480, 400)
        counts.append(len(labels))
        empty += len(labels) == 0
        sizes += (labels[:, 3] * 480).tolist()
    assert max(counts) >= 6 and empty >= 1 and min(sizes) < 14 and max(sizes) > 240


def test_sample_images(tmp_path):
    files = write_sample_images(tmp_path, n=2)
    assert len(files) == 2 and all(f.stat().st_size < 100_000 for f in files)
    committed = sorted((ROOT / "data" / "images").glob("*.jpg"))
    assert 3 <= len(committed) <= 4 and all(f.stat().st_size < 100_000 for f in committed)


def test_shapes_yaml_download_generates_locally(tmp_path, monkeypatch):
    data = yaml_load(ROOT / "data" / "shapes.yaml")
    assert data["path"] == "../datasets/shapes" and len(data["names"]) == len(CLASSES) >= 8
    data["path"] = str(tmp_path / "shapes")
    data["download"] = data["download"].replace("n_train=360, n_val=80", "n_train=2, n_val=1")
    out = check_dataset(data, trust=True)  # our own yaml's script, passed as a dict
    assert len(list((tmp_path / "shapes" / "images" / "val").glob("*.jpg"))) == 1 and out["nc"] == len(CLASSES)


def test_shapes_3k_extends_the_builtin_dataset(tmp_path):
    """shapes-3k.yaml: same names, seed and val split as shapes.yaml, more training images; a larger n_train keeps
    the smaller set's images byte for byte (each image has its own stream), so its val numbers compare directly."""
    small, big = yaml_load(ROOT / "data" / "shapes.yaml"), yaml_load(ROOT / "data" / "shapes-3k.yaml")
    assert big["names"] == small["names"] and big["val"] == small["val"] and big["path"] != small["path"]
    assert "n_train=360, n_val=80, seed=0" in small["download"]
    assert "n_train=3000, n_val=80, seed=0" in big["download"]
    a = _files(generate_shapes_dataset(tmp_path / "a", n_train=2, n_val=1, seed=0, workers=1))
    b = _files(generate_shapes_dataset(tmp_path / "b", n_train=3, n_val=1, seed=0, workers=1))
    assert len(b) == len(a) + 2 and all(b[k] == v for k, v in a.items())


def test_train_sides_change_the_training_images_only(tiny, tmp_path):
    """shapes-3k-large.yaml: larger training images, the same val images as the built-in dataset; a range the
    generator cannot draw from is refused with the allowed values."""
    large = yaml_load(ROOT / "data" / "shapes-3k-large.yaml")
    assert large["names"] == yaml_load(ROOT / "data" / "shapes.yaml")["names"]
    assert "n_train=3000, n_val=80, seed=0, train_sides=(480, 640)" in large["download"]
    root = generate_shapes_dataset(tmp_path / "large", n_train=4, n_val=2, seed=3, workers=1, train_sides=(600, 640))
    a, b = _files(tiny), _files(root)
    assert a.keys() == b.keys()
    assert all(b[k] == v for k, v in a.items() if k.parts[1] == "val")
    for im in sorted((root / "images" / "train").glob("*.jpg")):
        r = verify_image_label((str(im), str(root / "labels" / "train" / f"{im.stem}.txt"), ""))
        assert r.corrupt == 0 and 600 <= min(r.shape) and max(r.shape) <= 640
    for bad in ((640, 480), (20, 640)):
        with pytest.raises(ValueError, match=r"train_sides .*MIN <= MAX, MIN at least 40 px"):
            generate_shapes_dataset(tmp_path / "bad", n_train=1, n_val=1, train_sides=bad)
    assert not (tmp_path / "bad").exists()


def test_min_object_and_clutter_options(monkeypatch):
    """shapes-clean's knobs: no box narrower than half of min_object (shapes may be cut by the border by up to 40 %),
    and clutter=False never draws distractors while the default draws them on most images."""
    import utils.synthetic as synthetic

    calls = []
    real = synthetic._clutter
    monkeypatch.setattr(synthetic, "_clutter", lambda img, rng: (calls.append(1), real(img, rng)))
    narrow = {}
    for min_object, clutter in ((10, True), (24, False)):
        calls.clear()
        sides = []
        for i in range(60):
            _, labels = render_image(np.random.default_rng([0, 0, i]), 480, 400, min_object=min_object,
                                     clutter=clutter)
            sides += np.minimum(labels[:, 3] * 480, labels[:, 4] * 400).tolist()
        narrow[min_object] = min(sides)
        assert (len(calls) > 30) if clutter else not calls
    assert narrow[10] < 12 <= narrow[24]


def test_shapes_clean_yaml_and_its_refusals(tmp_path):
    """shapes-clean.yaml generates its own splits with the clean options (its comment's command says the same); a
    min_object the images cannot hold is refused before anything is written."""
    clean = yaml_load(ROOT / "data" / "shapes-clean.yaml")
    assert clean["names"] == yaml_load(ROOT / "data" / "shapes.yaml")["names"]
    assert "n_train=600, n_val=150, seed=0, min_object=24, clutter=False" in clean["download"]
    comment = (ROOT / "data" / "shapes-clean.yaml").read_text()
    assert "--train 600 --val 150 --min-object 24 --no-clutter" in comment
    a = _files(generate_shapes_dataset(tmp_path / "a", n_train=1, n_val=2, seed=0, workers=1))
    b = _files(generate_shapes_dataset(tmp_path / "b", n_train=1, n_val=2, seed=0, workers=1, min_object=24,
                                       clutter=False))
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a if k.suffix == ".jpg")
    for bad in (9, 81):
        with pytest.raises(ValueError, match=r"min_object .*: give 10-80 px"):
            generate_shapes_dataset(tmp_path / "bad", n_train=1, n_val=1, min_object=bad)
    with pytest.raises(ValueError, match=r"min_object 30: give 10-25 px"):
        generate_shapes_dataset(tmp_path / "bad", n_train=1, n_val=1, min_object=30, train_sides=(100, 200))
    assert not (tmp_path / "bad").exists()


def test_cli_refuses_bad_sizes_in_one_line(tmp_path):
    """`python utils/synthetic.py` ends a bad --min-object or --train-sides with one usage error, writing nothing."""
    import subprocess
    import sys

    for args in (["--min-object", "5"], ["--train-sides", "20", "640"]):
        r = subprocess.run([sys.executable, str(ROOT / "utils" / "synthetic.py"), "--out", str(tmp_path / "x"), *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("synthetic.py: error: ")
        assert ("min_object 5" if args[0] == "--min-object" else "train_sides (20, 640)") in r.stderr
    assert not (tmp_path / "x").exists()
