"""YOLOv5 v7.0 training loss: target assignment to anchors and neighbour cells, CIoU box loss, IoU-weighted
objectness and BCE classification. Predictions are raw logits (bs, na, ny, nx, nc + 5) per level."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from utils.boxes import bbox_iou
from utils.torch_utils import de_parallel

# Objectness weight of each level, small strides first (P3, P4, P5 / P3..P7).
BALANCE = {3: [4.0, 1.0, 0.4]}
BALANCE_DEFAULT = [4.0, 1.0, 0.25, 0.06, 0.02]

# A target's own cell, then the left, upper, right and lower neighbours (x, y), before scaling by g = 0.5.
NEIGHBOURS = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1))

REQUIRED_HYP = ("box", "obj", "cls", "cls_pw", "obj_pw", "anchor_t", "fl_gamma")


def smooth_BCE(eps: float = 0.1) -> Tuple[float, float]:
    """Label-smoothed BCE targets (positive, negative) = (1 - eps/2, eps/2)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal loss around a BCEWithLogitsLoss: loss * alpha_t * (1 - p_t)**gamma, reduced like the wrapped loss."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # the focal weights apply per element, before reducing

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        prob = torch.sigmoid(pred)
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


class ComputeLoss:
    """YOLOv5 loss for a DetectionModel whose `hyp` holds already-scaled gains (train.py scales box/obj/cls)."""

    sort_obj_iou = False  # write objectness targets in rising IoU order, so the best match wins a shared cell

    def __init__(self, model: nn.Module, autobalance: bool = False):
        hyp = getattr(model, "hyp", None) or getattr(de_parallel(model), "hyp", None)  # set on a DDP wrapper or not
        missing = [k for k in REQUIRED_HYP if not isinstance(hyp, dict) or k not in hyp]
        if missing:
            raise ValueError(f"ComputeLoss: model.hyp lacks {', '.join(missing)}; expected the keys of a "
                             f"hyp yaml such as data/hyps/hyp.scratch-low.yaml ({', '.join(REQUIRED_HYP)})")
        device = next(model.parameters()).device
        det = de_parallel(model).model[-1]  # Detect

        self.BCEcls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["cls_pw"]], device=device))
        self.BCEobj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["obj_pw"]], device=device))
        if hyp["fl_gamma"] > 0:
            self.BCEcls = FocalLoss(self.BCEcls, hyp["fl_gamma"])
            self.BCEobj = FocalLoss(self.BCEobj, hyp["fl_gamma"])
        self.cp, self.cn = smooth_BCE(eps=hyp.get("label_smoothing", 0.0))

        self.hyp, self.gr, self.autobalance, self.device = hyp, 1.0, autobalance, device
        self.nc, self.nl, self.na = int(det.nc), int(det.nl), int(det.na)
        self.anchors = det.anchors  # (nl, na, 2) in grid units of each level
        self.balance = list(BALANCE.get(self.nl, BALANCE_DEFAULT))
        self.ssi = [float(s) for s in det.stride].index(16.0) if autobalance else 0  # stride-16 level anchors 1.0

    def __call__(self, p: Sequence[torch.Tensor], targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Loss of predictions p (nl tensors (bs, na, ny, nx, no)) against targets (n, 6) [img, cls, x, y, w, h]
        normalised. Returns (total * bs, detached (3,) [lbox, lobj, lcls]) with the hyp gains applied."""
        lbox = torch.zeros(1, device=self.device)
        lobj = torch.zeros(1, device=self.device)
        lcls = torch.zeros(1, device=self.device)
        tcls, tbox, indices, anchors = self.build_targets(p, targets)

        for i, pi in enumerate(p):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=self.device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pbox = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * anchors[i]), 1)
                iou = bbox_iou(pbox, tbox[i], CIoU=True).squeeze(-1)
                lbox = lbox + (1.0 - iou).mean()

                iou = iou.detach().clamp(0).type(tobj.dtype)
                if self.sort_obj_iou:
                    order = iou.argsort()
                    b, a, gj, gi, iou = b[order], a[order], gj[order], gi[order], iou[order]
                if self.gr < 1:
                    iou = (1.0 - self.gr) + self.gr * iou
                tobj[b, a, gj, gi] = iou  # cells claimed twice keep the last write

                if self.nc > 1:  # a single class is covered by objectness alone
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=self.device), tcls[i]] = self.cp
                    lcls = lcls + self.BCEcls(pcls, t)

            obji = self.BCEobj(pi[..., 4], tobj)
            lobj = lobj + obji * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()

        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        bs = p[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, p: Sequence[torch.Tensor], targets: torch.Tensor):
        """Assign targets to (level, anchor, cell). Per level returns tcls (m,), tbox (m, 4) [x, y, w, h] in grid
        units with xy relative to the cell (in [-0.5, 1.5]), indices (b, a, gj, gi) and the matched anchors (m, 2)."""
        na, nt = self.na, targets.shape[0]
        dtype = targets.dtype
        anchor_idx = torch.arange(na, device=self.device, dtype=dtype).view(na, 1, 1).expand(na, nt, 1)
        per_anchor = torch.cat((targets.expand(na, nt, 6), anchor_idx), 2)  # (na, nt, 7) [.., anchor index]
        g = 0.5
        neighbour_off = torch.tensor(NEIGHBOURS, device=self.device, dtype=dtype) * g  # (5, 2)

        tcls: List[torch.Tensor] = []
        tbox: List[torch.Tensor] = []
        indices: List[Tuple[torch.Tensor, ...]] = []
        anch: List[torch.Tensor] = []
        for i in range(self.nl):
            anchors = self.anchors[i]
            ny, nx = p[i].shape[2], p[i].shape[3]
            gain = torch.tensor([1, 1, nx, ny, nx, ny, 1], device=self.device, dtype=dtype)
            t = per_anchor * gain  # xywh in grid units of this level
            if nt:
                t, offsets = self._match(t, anchors, nx, ny, neighbour_off, g)
            else:
                t, offsets = per_anchor[0], 0.0

            img, cls = t[:, 0].long(), t[:, 1].long()
            gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 6].long()
            gij = (gxy - offsets).long()
            gi = gij[:, 0].clamp(0, nx - 1)
            gj = gij[:, 1].clamp(0, ny - 1)
            indices.append((img, a, gj, gi))
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
            anch.append(anchors[a])
            tcls.append(cls)
        return tcls, tbox, indices, anch

    def _match(self, t: torch.Tensor, anchors: torch.Tensor, nx: int, ny: int, neighbour_off: torch.Tensor,
               g: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keep (anchor, target) pairs within anchor_t in w/h ratio; add the up-to-two nearest neighbour cells.
        t is (na, nt, 7); returns matched rows (m, 7) and their cell offsets (m, 2), grouped by offset."""
        r = t[..., 4:6] / anchors[:, None]  # (na, nt, 2) target/anchor size ratios
        keep = torch.max(r, 1 / r).max(2)[0] < self.hyp["anchor_t"]
        t = t[keep]

        gxy = t[:, 2:4]
        gxy_inv = torch.tensor([nx, ny], device=t.device, dtype=t.dtype) - gxy  # distance from right/bottom edge
        left, up = ((gxy % 1 < g) & (gxy > 1)).T
        right, down = ((gxy_inv % 1 < g) & (gxy_inv > 1)).T
        use = torch.stack((torch.ones_like(left), left, up, right, down))  # (5, m)
        rows = t.repeat((5, 1, 1))[use]
        offsets = (torch.zeros_like(gxy)[None] + neighbour_off[:, None])[use]
        return rows, offsets
