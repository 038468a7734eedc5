"""Validate a detection model on a dataset: mAP computed exactly as YOLOv5 v7.0 computes it.

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --img 640
"""

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__":  # as a script only: importing val.py (train.py does) leaves the process as it was
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of starving loader workers
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from inference.backends import load_model  # noqa: E402
from models.checkpoint import UntrustedCheckpointError  # noqa: E402
from utils.boxes import scale_boxes, xywh2xyxy, xyxy2xywh  # noqa: E402
from utils.checks import check_img_size  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.datasets_yaml import check_dataset  # noqa: E402
from utils.files import increment_path  # noqa: E402
from utils.logger import LOGGER, colorstr, set_logging  # noqa: E402
from utils.metrics import ConfusionMatrix, ap_per_class, process_batch  # noqa: E402
from utils.nms import non_max_suppression  # noqa: E402
from utils.plots import output_to_target, plot_ap_curves, plot_confusion_matrix, plot_images  # noqa: E402
from utils.results import Stopwatch, names_dict, saved_line, speed_line, txt_row  # noqa: E402
from utils.torch_utils import keep_freed_memory, select_device, smart_inference_mode  # noqa: E402

HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
ROW = "%22s" + "%11i" * 2 + "%11.3g" * 4


def save_one_txt(predn: torch.Tensor, save_conf: bool, shape, file: Path) -> None:
    """Append predictions (n, 6) [xyxy px, conf, cls] as 'cls x y w h [conf]' rows, normalized to image size."""
    with open(file, "a") as f:
        for *xyxy, conf, cls in predn.tolist():
            f.write(txt_row(xyxy, conf, cls, shape, save_conf) + "\n")


def save_one_json(predn: torch.Tensor, jdict: list, path: Path, class_map) -> None:
    """Append COCO-format records: image_id (int for numeric stems), category_id, bbox xywh top-left, score."""
    image_id = int(path.stem) if path.stem.isnumeric() else path.stem
    box = xyxy2xywh(predn[:, :4])
    box[:, :2] -= box[:, 2:] / 2  # centre -> top-left corner
    for p, b in zip(predn.tolist(), box.tolist()):
        jdict.append({"image_id": image_id, "category_id": class_map[int(p[5])],
                      "bbox": [round(x, 3) for x in b], "score": round(p[4], 5)})


def coco80_to_coco91_class() -> list:
    """COCO's 80 contiguous class indices -> the 91-id category numbering used by its annotation files."""
    missing = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    return [i for i in range(1, 91) if i not in missing]


def _match_image(pred, labels, im_shape, shape, ratio_pad, iouv, single_cls, confusion_matrix, plots):
    """Scale one image's predictions and labels to original pixels and mark detections correct per IoU."""
    if single_cls:
        pred[:, 5] = 0
    predn = pred.clone()
    scale_boxes(im_shape, predn[:, :4], shape, ratio_pad)
    correct = torch.zeros(pred.shape[0], iouv.numel(), dtype=torch.bool, device=iouv.device)
    if len(labels):
        tbox = xywh2xyxy(labels[:, 1:5])
        scale_boxes(im_shape, tbox, shape, ratio_pad)
        labelsn = torch.cat((labels[:, 0:1], tbox), 1)
        correct = process_batch(predn, labelsn, iouv)
        if plots:
            confusion_matrix.process_batch(predn, labelsn)
    return predn, correct


def summarize(stats, nc, names, seen, plots, save_dir, verbose, training):
    """Print the results table; return (mp, mr, map50, map, per-class mAP array)."""
    stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*stats)] if stats else []
    mp = mr = map50 = map_ = 0.0
    ap, ap50, ap_class = np.zeros(0), np.zeros(0), np.zeros(0, int)
    if len(stats) and stats[0].any():
        curves = {} if plots else None
        tp, fp, p, r, f1, ap, ap_class = ap_per_class(*stats, curves=curves)
        if plots:
            plot_ap_curves(curves, save_dir, names)
        ap50, ap = ap[:, 0], ap.mean(1)
        mp, mr, map50, map_ = p.mean(), r.mean(), ap50.mean(), ap.mean()
    nt = np.bincount(stats[3].astype(int), minlength=nc) if len(stats) else np.zeros(nc, int)
    LOGGER.info(ROW % ("all", seen, nt.sum(), mp, mr, map50, map_))
    if nt.sum() == 0:
        LOGGER.warning("WARNING: no labels found in this set; metrics cannot be computed without labels")
    if (verbose or (nc < 50 and not training)) and nc > 1 and len(ap_class):
        for i, c in enumerate(ap_class):
            LOGGER.info(ROW % (names[c], seen, nt[c], p[i], r[i], ap50[i], ap[i]))
    maps = np.zeros(nc) + map_
    for i, c in enumerate(ap_class):
        maps[c] = ap[i]
    return mp, mr, map50, map_, maps


def evaluate_json(jdict, weights, data, save_dir, is_coco, map50, map_):
    """Write <weights>_predictions.json; score it with pycocotools when an annotation file is available."""
    w = Path(weights[0] if isinstance(weights, (list, tuple)) else weights).stem if weights else ""
    pred_json = str(save_dir / f"{w}_predictions.json")
    with open(pred_json, "w") as f:
        json.dump(jdict, f)
    LOGGER.info(f"Saved {len(jdict)} predictions to {pred_json}")
    anno_json = Path(data.get("path", "")) / "annotations" / "instances_val2017.json"
    if not anno_json.is_file():
        LOGGER.info(f"pycocotools evaluation skipped: no annotation file {anno_json}")
        return map50, map_
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        LOGGER.info("pycocotools evaluation skipped: `pip install pycocotools` to score against COCO annotations")
        return map50, map_
    anno, pred = COCO(str(anno_json)), COCO(str(anno_json)).loadRes(pred_json)
    ev = COCOeval(anno, pred, "bbox")
    if is_coco:
        ev.params.imgIds = sorted({x["image_id"] for x in jdict})
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[1], ev.stats[0]


@dataclass
class _Tally:
    """What the per-batch loop accumulates: matches per image, images seen, losses, JSON records and timings."""
    nc: int
    device: torch.device
    stats: list = field(default_factory=list)  # per image: (correct (n, 10), conf (n,), cls (n,), label cls (m,))
    seen: int = 0
    jdict: list = field(default_factory=list)
    dt: tuple = field(default_factory=lambda: (Stopwatch(), Stopwatch(), Stopwatch()))
    loss: torch.Tensor = None
    confusion: ConfusionMatrix = None

    def __post_init__(self):
        self.loss = torch.zeros(3, device=self.device)
        self.confusion = ConfusionMatrix(nc=self.nc)


def _stride(model) -> int:
    """The model's largest stride, at least 32 (image sizes and letterboxing are multiples of it)."""
    return int(max(model.stride.max(), 32)) if hasattr(model, "stride") else 32


def _load_standalone(weights, device, batch_size, imgsz, half, trust_weights, data, trust_data):
    """val.py run by itself: load the model and the dataset description. -> (model, device, half, imgsz, batch, data)"""
    device = select_device(device, batch_size=batch_size)
    half &= device.type == "cuda"
    model = load_model(weights, device, half, trust_weights, data)
    imgsz = check_img_size(imgsz, s=_stride(model))
    if getattr(model, "batch_one_only", False) and batch_size != 1:
        LOGGER.info(f"Forcing --batch-size 1 for {weights}: this backend runs one image at a time")
        batch_size = 1
    return model, device, half, imgsz, batch_size, check_dataset(data, trust=trust_data)


def _standalone_loader(model, weights, data, task, nc, single_cls, imgsz, batch_size, workers):
    """The split's dataloader, after checking the model's classes agree with the dataset's."""
    ncm = getattr(model, "nc", nc)
    if ncm != nc and not single_cls:
        raise ValueError(f"{weights} was trained on {ncm} classes but --data {data.get('yaml_file', data)} "
                         f"has {nc}; pass the dataset the model was trained on")
    pad, rect = (0.0, False) if task == "speed" else (0.5, not getattr(model, "fixed_shape", None))  # square
    task = task if task in ("train", "val", "test") else "val"
    if not data.get(task):
        raise ValueError(f"--task {task}: the dataset yaml has no '{task}' split")
    return create_dataloader(data[task], imgsz, batch_size, _stride(model), single_cls, pad=pad, rect=rect,
                             workers=workers, prefix=colorstr(f"{task}: "))[0]


def _validate_batch(model, batch, tally: _Tally, iouv, half, compute_loss, augment, nms: dict, single_cls, save):
    """One batch: pre-process, infer (and loss), NMS, then match each image's detections to its labels."""
    im, targets, paths, shapes = batch
    dt, device = tally.dt, tally.device
    with dt[0]:
        im = im.to(device, non_blocking=True)
        im = (im.half() if half else im.float()) / 255
        targets = targets.to(device)
        nb, _, height, width = im.shape
    with dt[1]:
        preds, train_out = model(im) if compute_loss else (model(im, augment=augment), None)
    if compute_loss:
        tally.loss += compute_loss(train_out, targets)[1]
    targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)  # to input pixels
    lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if save["hybrid"] else []
    with dt[2]:
        preds = non_max_suppression(preds, labels=lb, multi_label=True, agnostic=single_cls, **nms)
    for si, pred in enumerate(preds):
        labels = targets[targets[:, 0] == si, 1:]
        path, shape = Path(paths[si]), shapes[si][0]
        tally.seen += 1
        if len(pred) == 0:
            if len(labels):
                tally.stats.append((torch.zeros(0, iouv.numel(), dtype=torch.bool, device=device),
                                    *torch.zeros((2, 0), device=device), labels[:, 0]))
                if save["plots"]:
                    tally.confusion.process_batch(detections=None, labels=labels[:, 0])
            continue
        predn, correct = _match_image(pred, labels, im[si].shape[1:], shape, shapes[si][1], iouv,
                                      single_cls, tally.confusion, save["plots"])
        tally.stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
        if save["txt"]:
            save_one_txt(predn, save["conf"], shape, save["dir"] / "labels" / f"{path.stem}.txt")
        if save["json"]:
            save_one_json(predn, tally.jdict, path, save["class_map"])
    return im, targets, preds


@smart_inference_mode()
def run(data, weights=None, batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6, max_det=300, task="val",
        device="", workers=8, single_cls=False, augment=False, verbose=False, save_txt=False, save_hybrid=False,
        save_conf=False, save_json=False, project=ROOT / "runs/val", name="exp", exist_ok=False, half=True,
        dnn=False, model=None, dataloader=None, save_dir=Path(""), plots=True, callbacks=None,
        compute_loss=None, trust_weights=False, trust_data=False):
    """Validate; return ((P, R, mAP50, mAP50-95, box, obj, cls losses), per-class mAP50-95, times ms/image)."""
    training = model is not None
    if training:  # called by train.py
        device = next(model.parameters()).device
        half &= device.type != "cpu"
        model.half() if half else model.float()
    else:
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
        model, device, half, imgsz, batch_size, data = _load_standalone(weights, device, batch_size, imgsz, half,
                                                                        trust_weights, data, trust_data)
    model.eval()
    is_coco = isinstance(data.get("val"), str) and data["val"].replace("\\", "/").endswith("coco/val2017.txt")
    nc = 1 if single_cls else int(data["nc"])
    iouv = torch.linspace(0.5, 0.95, 10, device=device)
    if not training:
        dataloader = _standalone_loader(model, weights, data, task, nc, single_cls, imgsz, batch_size, workers)

    names = names_dict(model.names if hasattr(model, "names") else model.module.names)
    save = {"txt": save_txt, "conf": save_conf, "hybrid": save_hybrid, "json": save_json, "plots": plots,
            "dir": save_dir, "class_map": coco80_to_coco91_class() if is_coco else list(range(1000))}
    nms = {"conf_thres": conf_thres, "iou_thres": iou_thres, "max_det": max_det}
    tally = _Tally(nc=nc, device=device)
    pbar = tqdm(dataloader, desc=HEADER, bar_format="{l_bar}{bar:10}{r_bar}", disable=not LOGGER.isEnabledFor(20))
    for batch_i, batch in enumerate(pbar):
        im, targets, preds = _validate_batch(model, batch, tally, iouv, half, compute_loss, augment, nms, single_cls,
                                             save)
        if plots and batch_i < 3:
            paths = batch[2]
            plot_images(im, targets, paths, save_dir / f"val_batch{batch_i}_labels.jpg", names)
            plot_images(im, output_to_target(preds), paths, save_dir / f"val_batch{batch_i}_pred.jpg", names)

    mp, mr, map50, map_, maps = summarize(tally.stats, nc, names, tally.seen, plots, save_dir, verbose, training)
    t = tuple(x.t / max(tally.seen, 1) * 1e3 for x in tally.dt)
    if not training:
        LOGGER.info(speed_line(t, (batch_size, 3, imgsz, imgsz)))
    if plots:
        plot_confusion_matrix(tally.confusion.matrix, save_dir / "confusion_matrix.png", list(names.values()))
    if save_json and tally.jdict:
        map50, map_ = evaluate_json(tally.jdict, weights, data, save_dir, is_coco, map50, map_)
    if not training:
        LOGGER.info(saved_line(save_dir, save_txt))
    model.float()
    return (mp, mr, map50, map_, *(tally.loss.cpu() / max(len(dataloader), 1)).tolist()), maps, t


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description="Validate a YOLOv5 model on a dataset.")
    parser.add_argument("--data", type=str, default=ROOT / "data/shapes.yaml", help="dataset.yaml path")
    parser.add_argument("--weights", nargs="+", type=str, default=ROOT / "yolov5n_shuffle_cpu.pt", help="model path(s)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    parser.add_argument("--task", default="val", help="train, val, test, speed or study")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    parser.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    parser.add_argument("--augment", action="store_true", help="augmented inference")
    parser.add_argument("--verbose", action="store_true", help="report mAP by class")
    parser.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    parser.add_argument("--save-hybrid", action="store_true", help="save label+prediction hybrid results to *.txt")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file")
    parser.add_argument("--project", default=ROOT / "runs/val", help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    parser.add_argument("--dnn", action="store_true", help="use OpenCV DNN for ONNX inference")
    parser.add_argument("--trust-weights", action="store_true",
                        help="allow loading checkpoints that are arbitrary pickles (only for files you trust)")
    parser.add_argument("--trust-data", action="store_true",
                        help="allow the --data yaml's download: script to run (only for files you trust)")
    opt = parser.parse_args(argv)
    opt.save_json |= str(opt.data).endswith("coco.yaml")
    opt.save_txt |= opt.save_hybrid
    return opt


def main(opt):
    set_logging()
    keep_freed_memory()  # the script's own process: reuse freed memory instead of page-faulting each forward
    if opt.task in ("train", "val", "test"):
        if opt.conf_thres > 0.001:
            LOGGER.warning(f"WARNING: --conf-thres {opt.conf_thres} > 0.001 gives invalid mAP values")
        if opt.save_hybrid:
            LOGGER.warning("WARNING: --save-hybrid writes labels mixed into predictions; its mAP is not valid")
        return run(**vars(opt))
    weights = opt.weights if isinstance(opt.weights, list) else [opt.weights]
    opt.half = torch.cuda.is_available() and opt.device != "cpu"
    if opt.task == "speed":
        opt.conf_thres, opt.iou_thres, opt.save_json = 0.25, 0.45, False
        for opt.weights in weights:
            run(**vars(opt), plots=False)
    elif opt.task == "study":
        for opt.weights in weights:
            f = f"study_{Path(opt.data).stem}_{Path(opt.weights).stem}.txt"
            rows = []
            for opt.imgsz in range(256, 1536 + 128, 128):
                LOGGER.info(f"\nRunning {f} --imgsz {opt.imgsz}...")
                r, _, t = run(**vars(opt), plots=False)
                rows.append(r + t)
            np.savetxt(f, rows, fmt="%10.4g")
            LOGGER.info(f"Study results saved to {f}")
    else:
        raise ValueError(f"--task {opt.task}: expected one of train, val, test, speed, study")


if __name__ == "__main__":
    try:
        main(parse_opt())
    except (ValueError, OSError, UntrustedCheckpointError) as err:  # OSError: disk full, unwritable run folder
        sys.exit(f"ERROR: {err}")
