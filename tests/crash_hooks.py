"""Run train.py as a command with a hook that SIGKILLs the process at a chosen moment (crash-safety tests).

    python tests/crash_hooks.py MOMENT N -- <train.py arguments>

MOMENT is `save` (half-way through writing the N-th last.pt), `val` (at the N-th NMS call of validation) or
`batch` (after the forward pass of the N-th training batch). The kill is a real SIGKILL: no cleanup runs.
"""

import io
import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _file_name(f) -> str:
    """The path behind a file object (atomic_write opens its temporary file by descriptor, so .name is an int)."""
    f = getattr(f, "f", f)  # models.checkpoint may wrap the file object
    if hasattr(f, "fileno"):
        return os.readlink(f"/proc/self/fd/{f.fileno()}")
    return str(f)


def _kill_in_save(n: int) -> None:
    """The n-th torch.save into a '.last.pt.*.tmp' file writes half its bytes, syncs them, then dies."""
    import torch
    real, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        if Path(_file_name(f)).name.startswith(".last.pt."):
            calls[0] += 1
            if calls[0] == n:
                buf = io.BytesIO()
                real(obj, buf, *args, **kwargs)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(getattr(f, "f", f).fileno())
                _die()
        return real(obj, f, *args, **kwargs)

    torch.save = save


def _kill_in_val(n: int) -> None:
    """The n-th NMS call inside val.run (any validation, in-training or final) dies."""
    import val
    real, calls = val.non_max_suppression, [0]

    def nms(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            _die()
        return real(*args, **kwargs)

    val.non_max_suppression = nms


def _kill_in_batch(n: int) -> None:
    """The n-th training loss computation (gradients enabled, so not validation's) dies."""
    import torch
    import utils.loss

    class KillingLoss(utils.loss.ComputeLoss):
        calls = 0

        def __call__(self, p, targets):
            if torch.is_grad_enabled():
                KillingLoss.calls += 1
                if KillingLoss.calls == n:
                    _die()
            return super().__call__(p, targets)

    utils.loss.ComputeLoss = KillingLoss  # train.py's `from utils.loss import ComputeLoss` picks this up


HOOKS = {"save": _kill_in_save, "val": _kill_in_val, "batch": _kill_in_batch}


def main(argv: list) -> None:
    moment, n, sep, *train_args = argv
    if moment not in HOOKS or sep != "--":
        raise SystemExit(f"usage: crash_hooks.py {{{','.join(HOOKS)}}} N -- <train.py arguments>")
    sys.path.insert(0, str(ROOT))
    HOOKS[moment](int(n))
    sys.argv = [str(ROOT / "train.py"), *train_args]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")  # the real entry point, with its error handling


if __name__ == "__main__":
    main(sys.argv[1:])
