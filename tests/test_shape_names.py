"""benchmarks/shape_names.py: the naming check against the generator's ground truth."""

import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import shape_names  # noqa: E402
from utils.synthetic import render_image  # noqa: E402


def test_score_counts_right_wrong_missed_and_stray_boxes(tmp_path):
    """Four shapes (two small): one boxed right, one boxed right and again with a wrong name, one only wrongly, one
    missed; plus a box on nothing."""
    img = tmp_path / "a.jpg"
    cv2.imwrite(str(img), np.zeros((100, 200, 3), np.uint8))
    gt = np.array([[0, 0.1, 0.1, 0.05, 0.1],  # circle, 10 x 10 px
                   [6, 0.5, 0.5, 0.2, 0.4],  # hexagon, 40 x 40 px
                   [2, 0.8, 0.5, 0.2, 0.4],  # square, 40 x 40 px
                   [3, 0.3, 0.8, 0.08, 0.16]])  # star, 16 x 16 px: missed
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.1 0.1 0.05 0.1 0.9\n"
                                               "6 0.5 0.5 0.2 0.4 0.8\n0 0.5 0.5 0.19 0.38 0.4\n"
                                               "6 0.8 0.5 0.2 0.4 0.7\n"
                                               "4 0.3 0.3 0.05 0.05 0.3\n")
    c = shape_names.score([(img, gt)], tmp_path / "labels")
    assert (c["shapes"], c["right"], c["wrong"], c["missed"], c["nothing"]) == (4, 1, 2, 1, 1)
    assert c["bins"] == {"< 20 px": [1, 1, 0], "20-40 px": [0, 0, 0], ">= 40 px": [0, 0, 2]}
    assert c["confusions"] == {"hexagon as circle": 1, "square as hexagon": 1}


def test_sample_truth_matches_the_shipped_images():
    """The ground truth is redrawn from the generator's seeds; the shipped JPEGs must be those drawings."""
    for i, (file, labels) in enumerate(shape_names.sample_truth()):
        drawn, again = render_image(np.random.default_rng([shape_names.SAMPLES_SEED, 9, i]), 640, 480 - 64 * (i % 2))
        shipped = cv2.imread(str(file))
        assert len(labels) and np.array_equal(labels, again) and shipped.shape == drawn.shape
        assert np.abs(shipped.astype(float) - drawn).mean() < 8  # JPEG error only (seen up to 4.7; another drawing: > 30)


def test_main_reports_both_sets(capsys):
    shape_names.main(["--images", "2", "--seed", "3"])
    out = capsys.readouterr().out
    assert "data/images: 24 shapes:" in out and "2 fresh images:" in out and "by size" in out
    with pytest.raises(SystemExit):
        shape_names.main(["--images", "-1"])
