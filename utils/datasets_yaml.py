"""Dataset yaml handling (`check_dataset`): required keys, class names, path resolution, local-only downloads.

Nothing here touches the network: a dataset that would have to be fetched raises DatasetNotFoundError with one
line saying what is missing and where to put it. A yaml's `download:` script is code, so it runs only for the
project's own yamls under data/ or with the user's consent (--trust-data or YOLOV5_TRUST_DATA=1); the same consent
lets a .txt image list name files outside its dataset.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Union

from utils.files import ROOT, check_keys, check_yaml, yaml_load
from utils.logger import LOGGER, colorstr
from utils.results import names_dict

TRUST_ENV = "YOLOV5_TRUST_DATA"
OWN_DATA_DIR = ROOT / "data"  # yamls here are part of the project, as trusted as its code
DATASET_KEYS = ("path", "train", "val", "test", "nc", "names", "download")
SPLITS = ("train", "val", "test")
_URL = re.compile(r"https?://\S+")
_NETWORK = re.compile(r"https?://|\b(curl|wget|torch\.hub|urllib|requests)\b")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing and cannot be made locally; str(e) is one line: what is missing, where."""


class UntrustedDataError(DatasetNotFoundError):
    """A dataset yaml (or its image list) asks for something only the user may allow: running its download:
    script, or reading images outside the dataset. A DatasetNotFoundError, so every script prints one line."""


def trusted_by_env() -> bool:
    return os.environ.get(TRUST_ENV, "").lower() in ("1", "true", "yes")


def is_own_yaml(file: Union[str, Path]) -> bool:
    """True for a file whose real path (symlinks resolved) lies under the project's data/ folder."""
    try:
        Path(file).resolve(strict=True).relative_to(OWN_DATA_DIR.resolve())
    except (OSError, ValueError):
        return False
    return True


def datasets_dir() -> Path:
    """Folder for datasets: $YOLOv5_DATASETS_DIR (or $DATASETS_DIR), else 'datasets' beside the repository."""
    env = os.getenv("YOLOv5_DATASETS_DIR") or os.getenv("DATASETS_DIR")
    return Path(env).expanduser().resolve() if env else (ROOT.parent / "datasets").resolve()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _read(data: Union[str, Path, dict]) -> tuple[dict, str, str]:
    """(dataset dict, name for messages, folder a local archive was extracted to or '')."""
    if isinstance(data, dict):
        return dict(data), "dataset dict", ""
    if not isinstance(data, (str, Path)):
        raise TypeError(f"check_dataset expects a yaml path or a dict, got {type(data).__name__}")
    if Path(data).is_file() and (zipfile.is_zipfile(data) or tarfile.is_tarfile(data)):
        target = datasets_dir() / Path(data).stem
        if not target.exists():
            _extract(Path(data), target)
        found = sorted(target.rglob("*.yaml"))
        if not found:
            raise DatasetNotFoundError(f"{data}: the archive holds no dataset .yaml file")
        return yaml_load(found[0]), str(found[0]), str(found[0].parent)
    file = check_yaml(data)
    return yaml_load(file), file, ""


def _extract(archive: Path, target: Path) -> None:
    """Unpack a zip/tar into `target`, all or nothing: a tar member that would land outside it (absolute path, '..',
    a link pointing out) stops the extraction with one line and leaves no `target` behind. (zipfile already strips
    absolute paths and '..' from member names.)"""
    LOGGER.info(f"Extracting {archive} to {target}...")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                _extract_tar(t, tmp, archive, target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_tar(t: tarfile.TarFile, folder: Path, archive: Path, target: Path) -> None:
    def refuse(name: str):
        return ValueError(f"{archive}: refusing to extract member '{name}': it would be written outside {target} "
                          f"or is a link/device file; unpack the archive yourself")

    if hasattr(tarfile, "data_filter"):  # Python 3.8.17+/3.11.4+: refuses absolute paths, '..', links out, devices
        try:
            t.extractall(folder, filter="data")
        except tarfile.FilterError as e:
            raise refuse(e.tarinfo.name) from None
        return
    for m in t.getmembers():  # older Pythons: plain files and folders with clean relative names only
        if Path(m.name).is_absolute() or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
            raise refuse(m.name)
    t.extractall(folder)


def _check_keys(data: dict, src: str) -> None:
    check_keys(data, src, ("train", "val", "names"), DATASET_KEYS, need="A dataset yaml needs 'train:', 'val:' (image "
               "folders or .txt lists) and 'names:' (see data/coco128.yaml)")


def _check_names(data: dict, src: str) -> dict:
    """names as a list or {int: str} dict -> {0: name0, 1: name1, ...}; nc, if given, must match."""
    names = data["names"]
    if isinstance(names, (list, tuple)):
        names = names_dict(names)
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{src}: 'names' must be a non-empty list of class names or a {{id: name}} mapping, "
                         f"got {names!r}")
    bad = [k for k in names if not isinstance(k, int) or isinstance(k, bool)]
    if bad:
        raise ValueError(f"{src}: names keys must be integers, e.g. '2: car'; got {bad[0]!r}")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{src}: names ids must run 0..{len(names) - 1} without gaps; got {sorted(names)}")
    nc = data.get("nc")
    if nc is not None and (not isinstance(nc, int) or nc != len(names)):
        raise ValueError(f"{src}: nc: {nc} disagrees with the {len(names)} classes in names; "
                         f"remove nc or make it {len(names)}")
    return {k: str(names[k]) for k in sorted(names)}


def _dataset_root(data: dict, extract_dir: str) -> Path:
    """Absolute dataset root: 'path' relative to the repository, moved under $YOLOv5_DATASETS_DIR when it points
    into the default datasets folder and that variable is set."""
    path = Path(extract_dir or data.get("path") or "")
    if path.is_absolute():
        return path
    by_root = (ROOT / path).resolve()
    try:
        moved = datasets_dir() / by_root.relative_to((ROOT.parent / "datasets").resolve())
    except ValueError:
        return by_root
    return by_root if by_root.exists() and not moved.exists() else moved


def _resolve_split(root: Path, value) -> Union[str, list]:
    """A split value (path or list of paths) made absolute against the dataset root; '../x' falls back to 'x'."""
    if isinstance(value, (list, tuple)):
        return [str((root / str(x)).resolve()) for x in value]
    x = (root / str(value)).resolve()
    if not x.exists() and str(value).startswith("../"):
        x = (root / str(value)[3:]).resolve()
    return str(x)


def _run_download(script: str, data: dict, src: str) -> None:
    """Run a local `download:` (a 'bash ...' command or Python code with `yaml` = the dataset dict)."""
    t = time.time()
    if script.startswith("bash "):
        LOGGER.info(f"Running {script} ...")
        code = subprocess.run(script, shell=True).returncode
        if code:
            raise DatasetNotFoundError(f"{src}: download command exited with code {code}; dataset still missing at "
                                       f"{data['path']}")
    else:
        if str(ROOT) not in sys.path:  # the code may import this project's modules
            sys.path.insert(0, str(ROOT))
        try:
            exec(script, {"yaml": data})
        except Exception as e:
            raise DatasetNotFoundError(_one_line(f"{src}: the download: code failed ({type(e).__name__}: {e}); "
                                                 f"dataset still missing at {data['path']}")) from e
    LOGGER.info(f"Dataset download success ✅ ({time.time() - t:.1f}s), saved to {colorstr('bold', data['path'])}")


def _check_lists(data: dict, root: Path, src: str) -> None:
    """Refuse .txt image lists whose entries leave the dataset: an absolute path or '..' landing outside both the
    dataset root and the list's own folder. Reading is not the risk; writing is: corrupt JPEGs are repaired in
    place and --cache disk writes .npy files beside the images, so a list must not steer those elsewhere."""
    for k in SPLITS:
        for x in (data.get(k) or []) if isinstance(data.get(k), list) else [data.get(k)]:
            if not (x and str(x).endswith(".txt") and Path(x).is_file()):
                continue
            homes = (os.path.normpath(root), os.path.dirname(os.path.normpath(x)))
            with open(x, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    entry = line.strip()
                    if not entry:
                        continue
                    # the loader's rule: './x' is relative to the list's folder, anything else is used as given
                    p = os.path.join(homes[1], entry[2:]) if entry.startswith("./") else os.path.abspath(entry)
                    p = os.path.normpath(p)
                    if not any(p == h or p.startswith(h.rstrip(os.sep) + os.sep) for h in homes):
                        raise UntrustedDataError(
                            f"{src}: {x} line {n}: '{entry}' is outside the dataset {root}. Write entries as "
                            f"./images/... relative to the list, or, if you trust this list, re-run with "
                            f"--trust-data (or set {TRUST_ENV}=1)")


def _ensure_present(data: dict, src: str, autodownload: bool, trusted: bool) -> None:
    """Make sure every val path exists, running a local download: when allowed and trusted; never touches the
    network."""
    val = data["val"] if isinstance(data["val"], list) else [data["val"]]
    missing = [x for x in val if not Path(x).exists()]
    if not missing:
        return
    script = str(data.get("download") or "").strip()
    where = f"dataset not found: {missing[0]} does not exist"
    if script and _NETWORK.search(script):
        url = _URL.search(script)
        what = f"fetch {url.group(0)} yourself" if url else "fetch the dataset yourself"
        raise DatasetNotFoundError(f"{src}: {where}. This project never downloads: {what} and unpack it so that "
                                   f"{data['path']} holds the 'val: {missing[0]}' images")
    if not script or not autodownload:
        raise DatasetNotFoundError(f"{src}: {where}. Put the dataset at {data['path']} (images/ and labels/ folders), "
                                   f"or fix 'path:'/'val:' in the yaml")
    if not trusted:
        first = script.splitlines()[0].strip()
        more = " ..." if len(first) > 80 or "\n" in script else ""
        raise UntrustedDataError(
            f"{src}: {where}, and this yaml's download: script ({first[:80]!r}{more}) "
            f"is code that runs only for the project's own yamls in {OWN_DATA_DIR}. If you trust this yaml, re-run "
            f"with --trust-data (or set {TRUST_ENV}=1); otherwise put the dataset at {data['path']} yourself "
            f"(images/ and labels/ folders)")
    LOGGER.info(f"Dataset not found ⚠️, missing paths {[str(x) for x in missing]}; running its download: locally")
    _run_download(script, data, src)
    still = [x for x in val if not Path(x).exists()]
    if still:
        raise DatasetNotFoundError(f"{src}: the download: step ran but {still[0]} still does not exist")


def check_dataset(data: Union[str, Path, dict], autodownload: bool = True, trust: bool = False) -> dict:
    """Read and check a dataset yaml (or dict); return it with absolute 'path', 'train', 'val', 'test' (str or
    list of str), 'names' as {int: str} and 'nc' = len(names).

    `trust` (or YOLOV5_TRUST_DATA=1) is the user's consent to run the yaml's `download:` script and to let its .txt
    image lists name files outside the dataset; the project's own yamls under data/ have it implicitly (a dict or
    a yaml anywhere else does not). Raises ValueError for a malformed yaml, UntrustedDataError when consent is
    missing, and DatasetNotFoundError when the val images are missing and no local `download:` can create them.
    """
    own = isinstance(data, (str, Path)) and is_own_yaml(data if Path(data).is_file() else check_yaml(data))
    trusted = trust or trusted_by_env() or own
    data, src, extract_dir = _read(data)
    _check_keys(data, src)
    data["names"] = _check_names(data, src)
    data["nc"] = len(data["names"])
    root = _dataset_root(data, extract_dir)
    data["path"] = root  # a Path while download code runs, as YOLOv5's download scripts expect
    for k in SPLITS:
        if data.get(k):
            data[k] = _resolve_split(root, data[k])
    _ensure_present(data, src, autodownload and not extract_dir, trusted)
    if not trusted:
        _check_lists(data, root, src)
    data["path"] = str(root)
    return data
