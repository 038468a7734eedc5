"""One consent rule for inputs that can carry code or steer writes: dataset yaml download: scripts, image lists,
dataset archives, label caches, --resume's opt.yaml, model/hyp yamls and hub names. Nothing runs or is written
elsewhere without --trust-data / --trust-weights (or their environment variables); data/'s own yamls are trusted."""

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT
import detect
import hubconf
import train
import val
from detect_helpers import captured_log
from utils import datasets_yaml, label_cache
from utils.datasets_yaml import TRUST_ENV, DatasetNotFoundError, UntrustedDataError, check_dataset
from utils.files import yaml_load
from utils.logger import LOGGER
from utils.train_utils import load_hyp

WEIGHTS = ROOT / "yolov5n_shuffle.pt"


@pytest.fixture(autouse=True)
def no_env_trust(monkeypatch):
    """No trust from the environment; and the project logger as it was (train/val.run call set_logging, which
    stops propagation and would hide later tests' warnings from caplog)."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.delenv("YOLOV5_TRUST_WEIGHTS", raising=False)
    state = LOGGER.level, LOGGER.propagate, list(LOGGER.handlers)
    yield
    LOGGER.setLevel(state[0])
    LOGGER.propagate = state[1]
    LOGGER.handlers[:] = state[2]


def evil_yaml(folder: Path, marker: Path) -> Path:
    """A yaml as shared online: a missing dataset and a download: script that writes a marker file."""
    f = folder / "evil.yaml"
    f.write_text(f"path: {folder / 'none'}\ntrain: images/train\nval: images/val\nnames: [a]\n"
                 f"download: |\n  open({str(marker)!r}, 'w').write('code from a dataset yaml ran')\n")
    return f


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------- download: needs consent

def test_evil_yaml_runs_no_code_without_consent(tmp_path):
    marker = tmp_path / "marker.txt"
    f = evil_yaml(tmp_path, marker)
    with pytest.raises(UntrustedDataError) as e:
        check_dataset(f)
    msg = one_line(e.value)
    assert str(f) in msg and "open(" in msg and "--trust-data" in msg and TRUST_ENV in msg
    assert str(tmp_path / "none") in msg  # where to put the dataset by hand
    assert not marker.exists()
    assert isinstance(e.value, FileNotFoundError)  # the scripts print it as one ERROR line


@pytest.mark.parametrize("how", ["flag", "env"])
def test_evil_yaml_runs_with_consent(tmp_path, monkeypatch, how):
    marker = tmp_path / "marker.txt"
    if how == "env":
        monkeypatch.setenv(TRUST_ENV, "1")
    with pytest.raises(DatasetNotFoundError, match="download: step ran but") as e:
        check_dataset(evil_yaml(tmp_path, marker), trust=how == "flag")
    assert not isinstance(e.value, UntrustedDataError)
    assert marker.read_text() == "code from a dataset yaml ran"


def test_train_and_val_need_trust_data(tmp_path):
    marker = tmp_path / "marker.txt"
    f = str(evil_yaml(tmp_path, marker))
    with pytest.raises(UntrustedDataError):
        train.run(data=f, cfg="yolov5n_shuffle.yaml", project=str(tmp_path / "runs"), imgsz=64, epochs=1)
    with pytest.raises(UntrustedDataError):
        val.run(data=f, weights=str(WEIGHTS), imgsz=64, project=tmp_path / "val")
    assert not marker.exists()
    with pytest.raises(DatasetNotFoundError, match="step ran"):
        val.run(data=f, weights=str(WEIGHTS), imgsz=64, project=tmp_path / "val", trust_data=True)
    assert marker.exists()
    assert train.parse_opt(["--trust-data"]).trust_data and val.parse_opt(["--trust-data"]).trust_data


def test_val_cli_is_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker.txt"
    f = evil_yaml(tmp_path, marker)
    p = subprocess.run([sys.executable, str(ROOT / "val.py"), "--data", str(f), "--weights", str(WEIGHTS),
                        "--imgsz", "64", "--project", str(tmp_path / "runs")], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [x for x in p.stderr.splitlines() if x.startswith("ERROR")]
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(errors) == 1, p.stderr[-2000:]
    assert "--trust-data" in errors[0] and str(f) in errors[0]
    assert not marker.exists()


def test_detect_data_is_read_for_names_only(tmp_path):
    marker = tmp_path / "marker.txt"

    class Nameless:
        names, nc = None, 1

    assert detect.model_names(Nameless(), str(evil_yaml(tmp_path, marker))) == {0: "a"}
    assert not marker.exists()


def test_a_dict_is_not_an_own_yaml(tmp_path):
    marker = tmp_path / "m"
    data = {"path": str(tmp_path / "x"), "train": "t", "val": "v", "names": ["a"],
            "download": f"open({str(marker)!r}, 'w')"}
    with pytest.raises(UntrustedDataError):
        check_dataset(dict(data))
    assert not marker.exists()


def test_url_download_keeps_its_offline_message_even_when_trusted(tmp_path):
    data = {"path": str(tmp_path / "u"), "train": "t", "val": "v", "names": ["a"],
            "download": "https://example.com/d.zip"}
    with pytest.raises(DatasetNotFoundError, match="never downloads: fetch https://example.com/d.zip") as e:
        check_dataset(dict(data), trust=True)
    assert not isinstance(e.value, UntrustedDataError)


# ---------------------------------------------------------------- the project's own yamls

@pytest.fixture
def fake_generator(tmp_path, monkeypatch):
    """data/shapes.yaml's generator replaced by one that makes the empty folders (no 440 images), its dataset root
    moved to tmp_path; returns the list of calls."""
    import utils.synthetic
    calls = []

    def generate(path, n_train, n_val, seed):
        calls.append((str(path), n_train, n_val))
        for split in ("train", "val"):
            (Path(path) / "images" / split).mkdir(parents=True)

    monkeypatch.setattr(utils.synthetic, "generate_shapes_dataset", generate)
    monkeypatch.setattr(datasets_yaml, "_dataset_root", lambda data, extract_dir: tmp_path / "shapes")
    return calls


def test_builtin_shapes_yaml_runs_its_generator_without_a_flag(fake_generator, tmp_path):
    d = check_dataset(ROOT / "data" / "shapes.yaml")
    assert fake_generator == [(str(tmp_path / "shapes"), 360, 80)]
    assert d["val"] == str(tmp_path / "shapes" / "images" / "val")
    d = check_dataset("shapes.yaml")  # by bare name, as train.py's default; now present: nothing runs
    assert len(fake_generator) == 1 and d["nc"] == 8


def test_a_copy_or_symlink_of_an_own_yaml_is_not_trusted(fake_generator, tmp_path, monkeypatch):
    copy = tmp_path / "shapes.yaml"
    copy.write_text((ROOT / "data" / "shapes.yaml").read_text())
    with pytest.raises(UntrustedDataError, match="from utils.synthetic import generate_shapes_dataset"):
        check_dataset(copy)
    own = tmp_path / "project_data"  # a stand-in for data/: a symlink in it to a yaml elsewhere does not count
    own.mkdir()
    (own / "linked.yaml").symlink_to(copy)
    monkeypatch.setattr(datasets_yaml, "OWN_DATA_DIR", own)
    with pytest.raises(UntrustedDataError):
        check_dataset(own / "linked.yaml")
    assert fake_generator == []
    (own / "real.yaml").write_text(copy.read_text())
    check_dataset(own / "real.yaml")
    assert len(fake_generator) == 1


# ---------------------------------------------------------------- image lists stay inside the dataset

def _list_dataset(tmp_path: Path, entries: list) -> Path:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "val.txt").write_text("\n".join(entries) + "\n")
    f = root / "data.yaml"
    f.write_text(yaml.safe_dump({"path": str(root), "train": "val.txt", "val": "val.txt", "names": ["a"]}))
    return f


@pytest.mark.parametrize("entry", ["./images/../../outside/images/x.jpg", "/elsewhere/images/x.jpg"])
def test_list_entries_outside_the_dataset_need_consent(tmp_path, entry):
    f = _list_dataset(tmp_path, ["./images/a.jpg", entry])
    with pytest.raises(UntrustedDataError) as e:
        check_dataset(f)
    msg = one_line(e.value)
    assert "val.txt line 2" in msg and entry in msg and "--trust-data" in msg
    assert check_dataset(f, trust=True)["val"] == str(tmp_path / "ds" / "val.txt")


def test_list_entries_inside_the_dataset_are_fine(tmp_path):
    inside = str(tmp_path / "ds" / "images" / "b.jpg")
    assert check_dataset(_list_dataset(tmp_path, ["./images/a.jpg", inside, ""]))["nc"] == 1


# ---------------------------------------------------------------- archives unpack inside their folder only

def _tar(path: Path, members: dict) -> Path:
    with tarfile.open(path, "w") as t:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            t.addfile(info, io.BytesIO(text))
    return path


def test_tar_member_escaping_the_dataset_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOv5_DATASETS_DIR", str(tmp_path / "datasets"))
    good = yaml.safe_dump({"path": ".", "train": "images", "val": "images", "names": ["a"]}).encode()
    archive = _tar(tmp_path / "toy.tar", {"toy/data.yaml": good, "../escaped.txt": b"x"})
    with pytest.raises(ValueError, match=r"toy\.tar: refusing to extract member '\.\./escaped\.txt'"):
        check_dataset(archive)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "datasets" / "toy").exists() and not list((tmp_path / "datasets").iterdir())
    ok = _tar(tmp_path / "ok.tar", {"ok/data.yaml": good, "ok/images/x.txt": b""})
    assert check_dataset(ok)["val"] == str(tmp_path / "datasets" / "ok" / "ok" / "images")


# ---------------------------------------------------------------- label caches are data, not pickled code

class _Opens:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_hostile_label_cache_runs_no_code_and_is_replaced(tmp_path):
    marker = tmp_path / "marker.txt"
    cache = tmp_path / "labels.cache"
    with open(cache, "wb") as f:
        np.save(f, {"version": label_cache.CACHE_VERSION, "hash": "x", "evil": _Opens(marker)}, allow_pickle=True)
    with captured_log() as log:
        assert label_cache.load_cache(cache) is None
    assert not marker.exists()
    assert any(re.search(r"labels\.cache: ignored: it refers to '\w+\.open'", x) for x in log), log
    fresh = label_cache.scan_labels([], [], cache)  # a rescan overwrites it with a readable one
    assert label_cache.load_cache(cache)["hash"] == fresh["hash"]


def test_real_label_cache_round_trips(tmp_path):
    cache = tmp_path / "x.cache"
    x = {"a.jpg": [np.ones((2, 5), np.float32), (64, 48), [np.zeros((3, 2), np.float32)]], "hash": "h",
         "results": (1, 0, 0, 0, 1), "msgs": ["m"], "version": label_cache.CACHE_VERSION}
    label_cache.save_cache(cache, x)
    y = label_cache.load_cache(cache)
    assert y["a.jpg"][1] == (64, 48) and (y["a.jpg"][0] == 1).all() and y["msgs"] == ["m"]


# ---------------------------------------------------------------- --resume: opt.yaml cannot grant trust or move the run

def _run_with_opt(tmp_path: Path, **saved) -> Path:
    run = tmp_path / "runs" / "exp"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "last.pt").write_bytes(b"only opened later")
    (run / "opt.yaml").write_text(yaml.safe_dump(saved))
    return run / "weights" / "last.pt"


def test_resume_takes_consent_and_location_from_the_command_line(tmp_path):
    hostile = {"trust_data": True, "trust_weights": True, "project": "/", "name": "etc", "save_dir": "/etc/exp",
               "exist_ok": True, "evolve": 5, "epochs": 7, "data": "elsewhere.yaml", "not_an_option": 1}
    last = _run_with_opt(tmp_path, **hostile)
    with captured_log() as log:
        opt = train.resolve_resume(train.parse_opt(["--resume", str(last)]))
    assert [x for x in log if "unknown" in x] == [f"WARNING: {last.parent.parent / 'opt.yaml'}: ignoring unknown "
                                                  f"option(s) not_an_option"]
    assert opt.trust_data is False and opt.trust_weights is False and opt.evolve is None
    assert opt.save_dir == str(tmp_path / "runs" / "exp") and opt.weights == str(last)
    assert opt.epochs == 7 and opt.data == "elsewhere.yaml"  # the run's own settings do carry over
    assert not hasattr(opt, "not_an_option")
    opt = train.resolve_resume(train.parse_opt(["--resume", str(last), "--trust-data"]))
    assert opt.trust_data is True


def test_resume_rejects_options_of_the_wrong_type(tmp_path):
    last = _run_with_opt(tmp_path, epochs="7; touch x", noval=1)
    with pytest.raises(ValueError, match=r"opt\.yaml: option epochs is '7; touch x', expected int"):
        train.resolve_resume(train.parse_opt(["--resume", str(last)]))


# ---------------------------------------------------------------- yamls are data: no tags, no eval

def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "marker.txt"
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text(f"lr0: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match=r"hyp\.yaml: not valid YAML"):
        load_hyp(hyp)
    with pytest.raises(ValueError, match="hyp.yaml: not valid YAML"):
        check_dataset(hyp)
    assert not marker.exists()


def test_model_yaml_names_and_args_are_never_evaluated(tmp_path):
    from models.yolo import DetectionModel
    marker = tmp_path / "marker.txt"
    code = f"__import__('os').system('touch {marker}')"
    base = yaml_load(ROOT / "models" / "yolov5n.yaml")
    for row, act in (([-1, 1, code, [16]], None), ([-1, 1, "Conv", [code]], None),
                     ([-1, 1, "Conv", [16, 3, 2]], f"nn.ReLU({code})")):
        cfg = {**base, "backbone": [row] + base["backbone"][1:], **({"activation": act} if act else {})}
        with pytest.raises((ValueError, TypeError)):
            DetectionModel(cfg)
    assert not marker.exists()


def test_no_eval_exec_or_unsafe_yaml_in_the_code():
    """The only exec is datasets_yaml's consented download:; yaml is read with safe_load only."""
    bad = re.compile(r"(?<![.\w])(eval|exec)\(|yaml\.(load|unsafe_load|full_load)\(|yaml\.(Unsafe|Full)?Loader\b|"
                     r"allow_pickle=True\)\.|pickle\.loads?\(")
    hits = []
    for f in sorted(ROOT.rglob("*.py")):
        parts = f.relative_to(ROOT).parts
        if "tests" in parts or "site-packages" in parts or any(p.startswith(".") for p in parts):
            continue  # our code only: not a virtualenv made inside the checkout (.venv/), not hidden folders
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if bad.search(line.split("#")[0]):
                hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == ['utils/datasets_yaml.py:{}: exec(script, {{"yaml": data}})'.format(_line_of_exec())], hits


def _line_of_exec() -> int:
    lines = (ROOT / "utils" / "datasets_yaml.py").read_text().splitlines()
    return next(i for i, x in enumerate(lines, 1) if "exec(script" in x)


# ---------------------------------------------------------------- hub

@pytest.mark.parametrize("name", ["../data/hyps/hyp.scratch-low", "shufflenetv2/yolov5n_shufflenetv2_x0_5", ".."])
def test_hub_entry_names_are_bare_config_names(name):
    with pytest.raises(ValueError, match="unknown model"):
        hubconf._create(name, pretrained=False, autoshape=False, verbose=False)


# ---------------------------------------------------------------- class names never steer where crops are written

@pytest.mark.parametrize("name", ["../../escaped", "..", "ABSOLUTE"])
def test_crops_stay_inside_the_run_folder(tmp_path, name):
    import torch
    from inference.autoshape import Detections
    name = str(tmp_path / "elsewhere") if name == "ABSOLUTE" else name  # a failure still writes inside tmp_path
    run = tmp_path / "a" / "b" / "run"
    im = np.full((64, 64, 3), 128, np.uint8)
    det = torch.tensor([[8.0, 8.0, 40.0, 40.0, 0.9, 0.0]])
    saver = detect.ResultSaver(run, {0: name}, 1, save_img=False, save_crop=True)
    saver.process(det.clone(), Path("img.jpg"), im, (64, 64), 0, "image", None)
    Detections([im], [det], ["img.jpg"], names={0: name}).crop(save_dir=run / "hub", exist_ok=True)
    written = sorted(tmp_path.rglob("*.jpg"))
    assert len(written) == 2 and all(run / "crops" in f.parents or run / "hub" / "crops" in f.parents
                                     for f in written), written
