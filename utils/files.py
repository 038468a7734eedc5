"""Paths and files: the repo root, finding yaml/weights by bare name, run-directory numbering, atomic writes."""

import contextlib
import glob
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

import yaml

from utils.logger import LOGGER

ROOT = Path(__file__).resolve().parents[1]  # repository root
SEARCH_DIRS = ("data", "models", "utils")  # where a bare file name is looked up, as YOLOv5 does


def check_file(file: Union[str, Path], suffix: tuple = ()) -> str:
    """Return an existing path for `file`: as given, relative to the repo root, or found by name under
    ROOT/{data,models,utils}. Raises FileNotFoundError (missing) or ValueError (ambiguous / bad suffix)."""
    file = str(file)
    if suffix and file and Path(file).suffix.lower() not in suffix:
        raise ValueError(f"{file}: expected a file ending in {', '.join(suffix)}")
    if not file or Path(file).is_file():
        return file
    if file.startswith(("http:/", "https:/", "rtsp:/", "rtmp:/")):
        raise FileNotFoundError(
            f"{file}: this project never downloads at run time; fetch the file yourself and pass its local path")
    if (ROOT / file).is_file():
        return str(ROOT / file)
    hits = sorted({p for d in SEARCH_DIRS for p in glob.glob(str(ROOT / d / "**" / Path(file).name), recursive=True)})
    if not hits:
        raise FileNotFoundError(f"{file}: file not found (looked in the working directory, {ROOT} and "
                                f"{', '.join(str(ROOT / d) for d in SEARCH_DIRS)})")
    if len(hits) > 1:
        raise ValueError(f"{file}: the name matches several files, pass a path instead: {hits}")
    return hits[0]


def check_yaml(file: Union[str, Path]) -> str:
    """check_file for .yaml/.yml files."""
    return check_file(file, suffix=(".yaml", ".yml"))


def yaml_load(file: Union[str, Path]) -> dict:
    """Read a yaml file into a dict; a parse error names the file and the position."""
    try:
        with open(file, errors="ignore") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:  # one line: the position and the problem (PyYAML's text spans several lines)
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{file}: not valid YAML{where}: {problem or ' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def yaml_save(file: Union[str, Path], data: dict) -> None:
    """Write a dict as yaml (Path values become strings), atomically."""
    clean = {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}
    atomic_write(file, lambda f: yaml.safe_dump(clean, f, sort_keys=False), mode="w")


def atomic_write(file: Union[str, Path], writer: Callable[[Any], None], mode: str = "wb") -> None:
    """Call writer(fileobj) on a temporary file in the same folder, then rename it onto `file`.

    A crash at any moment leaves either the old file or the new one, never a half-written file.
    """
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
    try:
        with os.fdopen(fd, mode) as f:
            umask = os.umask(0o022)  # mkstemp makes 0600 files; give the result the usual open() permissions
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def increment_path(path: Union[str, Path], exist_ok: bool = False, sep: str = "", mkdir: bool = False) -> Path:
    """runs/exp -> runs/exp2, runs/exp3, ... (the first free one), unless exist_ok."""
    path = Path(path)
    if path.exists() and not exist_ok:
        stem, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        n = 2
        while Path(f"{stem}{sep}{n}{suffix}").exists():
            n += 1
        path = Path(f"{stem}{sep}{n}{suffix}")
    check_creatable(path)
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def check_creatable(path: Union[str, Path]) -> None:
    """Raise ValueError when `path` (a run folder or a file in one) cannot be created: the nearest existing part
    of it is a file, or a folder this process may not write to. Checked up front, so a run fails in one line."""
    path = Path(path)
    p = path
    while not p.exists() and p.parent != p:  # exists() is False for 'a/file.txt/sub' too
        p = p.parent
    if p == path and not path.is_dir():
        return  # an existing file: the caller increments or overwrites it
    if not p.is_dir():
        raise ValueError(f"{path}: cannot be created because {p} is a file, not a folder; "
                         f"choose another --project/--name")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: cannot be created because the folder {p} is not writable; "
                         f"choose another --project/--name")


def check_keys(d: dict, src, required, known, need: str, kind: str = "required") -> None:
    """A yaml's top-level keys: missing required ones are a ValueError saying what the file needs (`need`),
    unknown ones one warning listing the known keys."""
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{src}: missing {kind} key(s) {', '.join(missing)}. {need}")
    unknown = [k for k in d if k not in known]
    if unknown:
        LOGGER.warning(f"WARNING ⚠️ {src}: unknown key(s) {', '.join(map(str, unknown))} ignored "
                       f"(known keys: {', '.join(known)})")
