"""The package layers and the no-side-effects rule (README, Layout): imports point one way, importing changes nothing."""

import ast
import subprocess
import sys

from conftest import ROOT


# Folder -> the project folders its modules may import. utils/ is the base; models/ holds the networks and whatever
# loads, saves or converts whole models; inference/ runs them; the root scripts sit on top.
ALLOWED = {"utils": {"utils"}, "models": {"utils", "models"}, "inference": {"utils", "models", "inference"}}


def _project_imports(file) -> set:
    """Top-level project packages a module imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
    return found & {"utils", "models", "inference"}


def test_imports_point_one_way():
    wrong = []
    for folder, allowed in ALLOWED.items():
        for f in sorted((ROOT / folder).glob("*.py")):
            extra = _project_imports(f) - allowed
            if extra:
                wrong.append(f"{f.relative_to(ROOT)} imports {sorted(extra)}")
    assert not wrong, wrong


def test_metrics_draw_nothing():
    tree = ast.parse((ROOT / "utils" / "metrics.py").read_text(encoding="utf-8"))
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in modules if m and m.split(".")[0] == "matplotlib" or m == "utils.plots"}, modules


SIDE_EFFECTS = """
import os, sys
sys.path.insert(0, sys.argv[1])
# third-party packages may touch the environment themselves: cv2 extends LD_LIBRARY_PATH, and torchvision's import
# of torch._dynamo sets TORCHINDUCTOR_CACHE_DIR (in a pytest run an earlier test has done it already)
import cv2, torch, torchvision
before = dict(os.environ)
import train, val, detect, export, hubconf, benchmarks  # the entry points, as a library user imports them
from utils import torch_utils
from models.yolo import DetectionModel
DetectionModel("yolov5n_shuffle.yaml").eval().fuse()
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(changed, torch_utils._ALLOCATOR_TUNED)
"""


def test_importing_and_fusing_change_no_process_setting():
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", SIDE_EFFECTS, str(ROOT)], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1]
    assert out == "[] False", out  # no environment variable set, glibc malloc left as it was
