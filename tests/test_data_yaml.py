"""check_dataset: required keys, names list vs dict, nc, path resolution, splits, local downloads, offline errors."""

import logging
import os
from pathlib import Path

import pytest

from conftest import write_yaml
from utils.datasets_yaml import DatasetNotFoundError, check_dataset
from utils.files import ROOT


def _dataset(tmp_path: Path, **extra) -> Path:
    """A dataset folder with images/train and images/val, and its yaml; returns the yaml path."""
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True, exist_ok=True)
    data = {"path": str(tmp_path), "train": "images/train", "val": "images/val", "names": ["a", "b"], **extra}
    return write_yaml(tmp_path / "data.yaml", data)


def test_names_list_and_dict_give_the_same_result(tmp_path):
    a = check_dataset(_dataset(tmp_path, names=["cat", "dog"]))
    b = check_dataset(_dataset(tmp_path, names={0: "cat", 1: "dog"}))
    assert a["names"] == b["names"] == {0: "cat", 1: "dog"} and a["nc"] == b["nc"] == 2


def test_paths_become_absolute(tmp_path):
    d = check_dataset(_dataset(tmp_path))
    assert d["path"] == str(tmp_path)
    assert d["train"] == str(tmp_path / "images" / "train") and d["val"] == str(tmp_path / "images" / "val")
    assert d.get("test") is None


def test_relative_path_resolves_against_repo_root(tmp_path, monkeypatch):
    _dataset(tmp_path)
    monkeypatch.chdir(tmp_path.parent)  # the working directory must not matter
    rel = os.path.relpath(tmp_path, ROOT)
    d = check_dataset({"path": rel, "train": "images/train", "val": "images/val", "names": ["a"]})
    assert d["path"] == str(tmp_path.resolve())


def test_datasets_dir_env_moves_default_location(tmp_path, monkeypatch):
    _dataset(tmp_path / "toy")
    monkeypatch.setenv("YOLOv5_DATASETS_DIR", str(tmp_path))
    d = check_dataset({"path": "../datasets/toy", "train": "images/train", "val": "images/val", "names": ["a"]})
    assert d["val"] == str(tmp_path / "toy" / "images" / "val")


def test_dotdot_split_falls_back(tmp_path):
    d = check_dataset(_dataset(tmp_path, val="../images/val"))
    assert d["val"] == str(tmp_path / "images" / "val")


def test_list_of_dirs_and_txt_split(tmp_path):
    (tmp_path / "train.txt").write_text("./images/train/x.jpg\n")
    d = check_dataset(_dataset(tmp_path, train=["images/train", "train.txt"]))
    assert d["train"] == [str(tmp_path / "images" / "train"), str(tmp_path / "train.txt")]


def test_missing_keys_raise(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: a\nnc: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: missing required key\(s\) val, names"):
        check_dataset(f)


def test_unknown_keys_warn(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        check_dataset(_dataset(tmp_path, colour="red", roboflow={"x": 1}))
    assert "unknown key(s) colour, roboflow" in caplog.text


def test_nc_must_match_names(tmp_path):
    with pytest.raises(ValueError, match="nc: 3 disagrees with the 2 classes"):
        check_dataset(_dataset(tmp_path, nc=3))
    assert check_dataset(_dataset(tmp_path, nc=2))["nc"] == 2


@pytest.mark.parametrize("names, match", [({"0": "a"}, "must be integers"), ({0: "a", 2: "b"}, "without gaps"),
                                          ("abc", "non-empty list"), ([], "non-empty list")])
def test_bad_names(tmp_path, names, match):
    with pytest.raises(ValueError, match=match):
        check_dataset(_dataset(tmp_path, names=names))


def test_url_download_is_never_attempted(tmp_path):
    data = {"path": str(tmp_path / "none"), "train": "images/train", "val": "images/val", "names": ["a"],
            "download": "https://example.com/coco128.zip"}
    with pytest.raises(DatasetNotFoundError) as e:
        check_dataset(data)
    msg = str(e.value)
    assert "\n" not in msg and "https://example.com/coco128.zip" in msg and str(tmp_path / "none") in msg
    assert isinstance(e.value, FileNotFoundError)


def test_python_download_runs_locally(tmp_path):  # trust=True: a dict is not one of data/'s own yamls
    code = "from pathlib import Path\n(Path(yaml['path']) / 'images' / 'val').mkdir(parents=True)\n"
    data = {"path": str(tmp_path / "gen"), "train": "images/train", "val": "images/val", "names": ["a"],
            "download": code}
    assert check_dataset(data, trust=True)["val"] == str(tmp_path / "gen" / "images" / "val")
    assert (tmp_path / "gen" / "images" / "val").is_dir()


def test_bash_download_runs_locally(tmp_path):
    target = tmp_path / "b" / "images" / "val"
    data = {"path": str(tmp_path / "b"), "train": "images/train", "val": "images/val", "names": ["a"],
            "download": f"bash -c 'mkdir -p {target}'"}
    check_dataset(data, trust=True)
    assert target.is_dir()


def test_failing_download_and_no_autodownload_are_one_line(tmp_path):
    data = {"path": str(tmp_path / "c"), "train": "t", "val": "v", "names": ["a"], "download": "raise OSError('x')"}
    with pytest.raises(DatasetNotFoundError, match="download: code failed"):
        check_dataset(dict(data), trust=True)
    with pytest.raises(DatasetNotFoundError, match="dataset not found"):
        check_dataset(dict(data), autodownload=False, trust=True)


def test_coco128_offline_message():
    d = check_dataset(ROOT / "data" / "coco128.yaml", autodownload=False) if (
        ROOT.parent / "datasets" / "coco128" / "images" / "train2017").exists() else None
    if d is None:
        with pytest.raises(DatasetNotFoundError, match="coco128"):
            check_dataset("coco128.yaml")
    else:
        assert d["nc"] == 80


def test_builtin_yamls_parse():
    for name, nc in (("coco128.yaml", 80), ("shapes.yaml", 8)):
        try:
            d = check_dataset(name, autodownload=False)
        except DatasetNotFoundError:
            continue  # dataset not generated/downloaded here; the yaml itself was read and checked
        assert d["nc"] == nc and len(d["names"]) == nc
