#!/usr/bin/env bash
# The CUDA paths, checked on a machine with a GPU (CI has none, so the suite skips its `gpu` tests there).
#   bash benchmarks/cuda_check.sh [tests] [cli] [bench]      (all three when none is named)
# tests: the gpu-marked tests (tests/test_cuda.py, tests/test_nms.py): AutoBatch, AMP training and checkpoints,
#        resume, single-GPU DDP over NCCL with SyncBatchNorm, FP16 detect/val against the CPU's FP32, FP16 export.
# cli:   the README's commands with --device 0 on the built-in shapes dataset (generated on first use): train.py
#        (AMP), val.py --half, detect.py --half, export.py --half.
# bench: benchmarks.py --device 0 --half: batch-1 GPU latency of the n and s models, stock and ShuffleNet.
# Every step runs even if an earlier one failed; the exit status is 1 if any failed. Runs go to runs/cuda_check.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 NO_COLOR=1
parts=${*:-tests cli bench}
if ! command -v python >/dev/null; then  # some images have only python3
    python() { python3 "$@"; }
fi
out=runs/cuda_check
failed=()

step() {
    echo "=== $*"
    local t=$SECONDS
    "$@" || failed+=("$*")
    echo "=== $((SECONDS - t)) s"
}

nvidia-smi -L || true
python -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA',
torch.version.cuda, '| devices', torch.cuda.device_count(), '|', torch.cuda.is_available() and
torch.cuda.get_device_name(0))"
python -c "import torch; raise SystemExit(not torch.cuda.is_available())" || { echo "no CUDA device: nothing to check"; exit 1; }

if [[ " $parts " == *" tests "* ]]; then
    step python -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_cuda.py tests/test_nms.py
fi
if [[ " $parts " == *" cli "* ]]; then
    rm -rf "$out"
    step python train.py --device 0 --img 320 --epochs 5 --batch-size 32 --workers 8 --project "$out" --name train
    step python val.py --weights "$out/train/weights/best.pt" --device 0 --half --img 320 --project "$out" --name val
    step python detect.py --device 0 --half --project "$out" --name detect --save-txt
    mkdir -p "$out/export" && cp yolov5n_shuffle_cpu.pt "$out/export/"
    step python export.py --weights "$out/export/yolov5n_shuffle_cpu.pt" --device 0 --half --include torchscript onnx
    step python detect.py --weights "$out/export/yolov5n_shuffle_cpu.onnx" --project "$out" --name detect_onnx16
fi
if [[ " $parts " == *" bench "* ]]; then
    step python benchmarks.py --cfg yolov5n.yaml yolov5n_shuffle.yaml yolov5n_shuffle_cpu.yaml yolov5s.yaml \
        yolov5s_shuffle_cpu.yaml --device 0 --half --backends pytorch --img 640 --runs 100
fi

if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all CUDA checks passed ($parts)"
