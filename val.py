"""Validate a detection model on a dataset: mAP computed exactly as YOLOv5 v7.0 computes it.

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --img 640
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: spinning starves loader workers on small CPUs
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.boxes import scale_boxes, xywh2xyxy, xyxy2xywh  # noqa: E402
from models.checkpoint import UntrustedCheckpointError  # noqa: E402
from utils.checks import check_img_size  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.datasets_yaml import check_dataset  # noqa: E402
from utils.files import increment_path  # noqa: E402
from utils.logger import LOGGER, colorstr, set_logging  # noqa: E402
from utils.metrics import ConfusionMatrix, ap_per_class, process_batch  # noqa: E402
from utils.nms import non_max_suppression  # noqa: E402
from utils.plots import output_to_target, plot_images  # noqa: E402
from utils.torch_utils import select_device, smart_inference_mode, time_sync  # noqa: E402

HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
ROW = "%22s" + "%11i" * 2 + "%11.3g" * 4


class Stopwatch:
    """Accumulates seconds spent inside `with` blocks (CUDA-synchronised)."""

    def __init__(self):
        self.t = 0.0

    def __enter__(self):
        self.start = time_sync()
        return self

    def __exit__(self, *exc):
        self.t += time_sync() - self.start


def save_one_txt(predn: torch.Tensor, save_conf: bool, shape, file: Path) -> None:
    """Append predictions (n, 6) [xyxy px, conf, cls] as 'cls x y w h [conf]' rows, normalized to image size."""
    gn = torch.tensor(shape)[[1, 0, 1, 0]]  # w, h, w, h
    with open(file, "a") as f:
        for *xyxy, conf, cls in predn.tolist():
            xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(("%g " * len(line)).rstrip() % line + "\n")


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


def load_model(weights, device, data, half, trust_weights=False):
    """Load weights for validation (PyTorch checkpoints, or exported files through the multi-backend loader)."""
    from models.experimental import attempt_load
    w = weights[0] if isinstance(weights, (list, tuple)) and len(weights) == 1 else weights
    if isinstance(w, (str, Path)) and (Path(w).suffix not in (".pt", ".pth", "") or Path(w).is_dir()):
        from inference.backends import DetectMultiBackend  # exported formats (issue: export)
        return DetectMultiBackend(w, device=device, data=data, fp16=half)
    model = attempt_load(w, device=device, trust=trust_weights)
    return model.half() if half else model.float()


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
        tp, fp, p, r, f1, ap, ap_class = ap_per_class(*stats, plot=plots, save_dir=save_dir, names=names)
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
        stride = int(model.stride.max())
    else:
        device = select_device(device, batch_size=batch_size)
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
        half &= device.type == "cuda"
        model = load_model(weights, device, data, half, trust_weights)
        stride = int(max(model.stride.max(), 32)) if hasattr(model, "stride") else 32
        imgsz = check_img_size(imgsz, s=stride)
        if getattr(model, "batch_one_only", False) and batch_size != 1:
            LOGGER.info(f"Forcing --batch-size 1 for {weights}: this backend runs one image at a time")
            batch_size = 1
        data = check_dataset(data, trust=trust_data)

    model.eval()
    is_coco = isinstance(data.get("val"), str) and data["val"].replace("\\", "/").endswith("coco/val2017.txt")
    nc = 1 if single_cls else int(data["nc"])
    iouv = torch.linspace(0.5, 0.95, 10, device=device)

    if not training:
        ncm = getattr(model, "nc", nc)
        if ncm != nc and not single_cls:
            raise ValueError(f"{weights} was trained on {ncm} classes but --data {data.get('yaml_file', data)} "
                             f"has {nc}; pass the dataset the model was trained on")
        pad, rect = (0.0, False) if task == "speed" else (0.5, not getattr(model, "batch_one_only", False))
        task = task if task in ("train", "val", "test") else "val"
        if not data.get(task):
            raise ValueError(f"--task {task}: the dataset yaml has no '{task}' split")
        dataloader = create_dataloader(data[task], imgsz, batch_size, stride, single_cls, pad=pad, rect=rect,
                                       workers=workers, prefix=colorstr(f"{task}: "))[0]

    names = model.names if hasattr(model, "names") else model.module.names
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    class_map = coco80_to_coco91_class() if is_coco else list(range(1000))
    confusion_matrix = ConfusionMatrix(nc=nc)
    dt = Stopwatch(), Stopwatch(), Stopwatch()
    loss = torch.zeros(3, device=device)
    jdict, stats, seen = [], [], 0
    pbar = tqdm(dataloader, desc=HEADER, bar_format="{l_bar}{bar:10}{r_bar}", disable=not LOGGER.isEnabledFor(20))
    for batch_i, (im, targets, paths, shapes) in enumerate(pbar):
        with dt[0]:
            im = im.to(device, non_blocking=True)
            im = (im.half() if half else im.float()) / 255
            targets = targets.to(device)
            nb, _, height, width = im.shape
        with dt[1]:
            preds, train_out = model(im) if compute_loss else (model(im, augment=augment), None)
        if compute_loss:
            loss += compute_loss(train_out, targets)[1]
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)  # to input pixels
        lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if save_hybrid else []
        with dt[2]:
            preds = non_max_suppression(preds, conf_thres, iou_thres, labels=lb, multi_label=True,
                                        agnostic=single_cls, max_det=max_det)
        for si, pred in enumerate(preds):
            labels = targets[targets[:, 0] == si, 1:]
            path, shape = Path(paths[si]), shapes[si][0]
            seen += 1
            if len(pred) == 0:
                if len(labels):
                    stats.append((torch.zeros(0, iouv.numel(), dtype=torch.bool, device=device),
                                  *torch.zeros((2, 0), device=device), labels[:, 0]))
                    if plots:
                        confusion_matrix.process_batch(detections=None, labels=labels[:, 0])
                continue
            predn, correct = _match_image(pred, labels, im[si].shape[1:], shape, shapes[si][1], iouv,
                                          single_cls, confusion_matrix, plots)
            stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
            if save_txt:
                save_one_txt(predn, save_conf, shape, save_dir / "labels" / f"{path.stem}.txt")
            if save_json:
                save_one_json(predn, jdict, path, class_map)
        if plots and batch_i < 3:
            plot_images(im, targets, paths, save_dir / f"val_batch{batch_i}_labels.jpg", names)
            plot_images(im, output_to_target(preds), paths, save_dir / f"val_batch{batch_i}_pred.jpg", names)

    mp, mr, map50, map_, maps = summarize(stats, nc, names, seen, plots, save_dir, verbose, training)
    t = tuple(x.t / max(seen, 1) * 1e3 for x in dt)
    if not training:
        shape = (batch_size, 3, imgsz, imgsz)
        LOGGER.info(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {shape}" % t)
    if plots:
        confusion_matrix.plot(save_dir=save_dir, names=list(names.values()))
    if save_json and jdict:
        map50, map_ = evaluate_json(jdict, weights, data, save_dir, is_coco, map50, map_)
    if not training:
        s = f"\n{len(list(save_dir.glob('labels/*.txt')))} labels saved to {save_dir / 'labels'}" if save_txt else ""
        LOGGER.info(f"Results saved to {colorstr('bold', save_dir)}{s}")
    model.float()
    return (mp, mr, map50, map_, *(loss.cpu() / max(len(dataloader), 1)).tolist()), maps, t


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description="Validate a YOLOv5 model on a dataset.")
    parser.add_argument("--data", type=str, default=ROOT / "data/shapes.yaml", help="dataset.yaml path")
    parser.add_argument("--weights", nargs="+", type=str, default=ROOT / "yolov5n_shuffle.pt", help="model path(s)")
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
