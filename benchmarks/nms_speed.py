"""NMS benchmark: val.py with this project's prefix NMS against suppression over every candidate (YOLOv5's way).

    python train.py --cfg yolov5n.yaml --img 320 --epochs 8 --batch 16 --workers 2 --optimizer AdamW --seed 0
    python benchmarks/nms_speed.py --weights runs/train/exp/weights/last.pt --img 320      # an undertrained model

Both modes return the first --max-det boxes that greedy suppression keeps (tests/test_nms.py checks they are
equal); they differ in time only. Validation runs conf 0.001, so an undertrained model hands NMS thousands of
candidates per image, and NMS stops after 0.5 + 0.05 x batch seconds (YOLOv5's time limit), dropping the rest of
that batch's detections. Printed per run: validation seconds, NMS ms per image, images whose detections the time
limit dropped, P, R, mAP50, mAP50-95. The modes alternate so that both see the same machine load.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils.nms as nms_module  # noqa: E402
import val as validate  # noqa: E402
from utils.logger import LOGGER, set_logging  # noqa: E402

PREFIX = nms_module._first_kept


def every_candidate(boxes, scores, iou_thres, max_det):
    """Suppression over all candidates, then the first max_det: YOLOv5 v7.0's order of work."""
    return nms_module._nms_indices(boxes, scores, iou_thres)[:max_det]


class DroppedImages(logging.Handler):
    """Sums the 'N remaining image(s)' of NMS time-limit warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record):
        m = re.search(r"(\d+) remaining image", record.getMessage())
        self.n += int(m.group(1)) if m else 0


def main(opt) -> None:
    set_logging(verbose=False)  # the validation tables would bury the summary
    dropped = DroppedImages()
    LOGGER.addHandler(dropped)
    rows = []
    try:
        for run in range(opt.runs):
            for mode, fn in (("every candidate", every_candidate), ("prefix", PREFIX)):
                nms_module._first_kept = fn
                dropped.n = 0
                t0 = time.perf_counter()
                (p, r, m50, m, *_), _, speed = validate.run(opt.data, weights=opt.weights, imgsz=opt.imgsz,
                                                            batch_size=opt.batch_size, workers=opt.workers,
                                                            device="cpu", plots=False, project=opt.project)
                rows.append((mode, run, time.perf_counter() - t0, speed[2], dropped.n, p, r, m50, m))
    finally:  # the library as it was, also when a run fails (main() is importable)
        nms_module._first_kept = PREFIX
        LOGGER.removeHandler(dropped)
    print(f"\nval.py --weights {opt.weights} --data {opt.data} --img {opt.imgsz} --batch-size {opt.batch_size}")
    print(("%-16s" + "%5s" + "%10s" * 7) % ("NMS", "run", "val s", "NMS ms", "dropped", "P", "R", "mAP50",
                                           "mAP50-95"))
    for mode, run, secs, nms_ms, n, p, r, m50, m in rows:
        print(("%-16s" + "%5d" + "%10.2f" * 2 + "%10d" + "%10.4f" * 4) % (mode, run, secs, nms_ms, n, p, r, m50, m))


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="a checkpoint; an undertrained one shows the difference")
    p.add_argument("--data", default=str(ROOT / "data" / "shapes.yaml"))
    p.add_argument("--imgsz", "--img", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=32, help="val.py's default; the time limit grows with it")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--runs", type=int, default=3, help="runs per mode, alternating")
    p.add_argument("--project", default=str(ROOT / "runs" / "nms_speed"), help="val.py's run folders go here")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_opt())
