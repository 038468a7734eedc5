"""The *_shuffle_cpu configs (issue 14): their blocks, fuse, exports, and benchmarks/pareto.py's quick mode."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, write_yaml
from models.common import Add, DWSepConv, ShuffleUnit, interleave_channels
from models.yolo import Detect, DetectionModel

CPU_CFGS = sorted(p.name for p in (ROOT / "models").glob("*_shuffle_cpu.yaml"))
DW_EXPERIMENT = str(ROOT / "models" / "experiments" / "yolov5n_shuffle_dw.yaml")  # the depth-wise design that lost
P3_EXPERIMENT = str(ROOT / "models" / "experiments" / "yolov5n_shuffle_cpu_p3.yaml")  # a 1x1 before the P3 3x3
# a second 3x3 s2 conv instead of the stem's max-pool, at n and s scale
STEM_EXPERIMENTS = [str(ROOT / "models" / "experiments" / f"yolov5{s}_shuffle_cpu_convstem.yaml") for s in "ns"]
ADD_EXPERIMENT = str(ROOT / "models" / "experiments" / "yolov5n_shuffle_cpu_addp3.yaml")  # a sum at the P3 node
PAN96_EXPERIMENT = str(ROOT / "models" / "experiments" / "yolov5s_shuffle_cpu_pan96.yaml")  # the first s design
# a 48-channel PAN, and a 48-channel P3 node only
NARROW_EXPERIMENTS = [str(ROOT / "models" / "experiments" / f"yolov5n_shuffle_cpu_{s}.yaml")
                      for s in ("pan48", "p3w48")]
# the stem at 16 and at 32 channels instead of 24
STEM_WIDTH_EXPERIMENTS = [str(ROOT / "models" / "experiments" / f"yolov5n_shuffle_cpu_stem{c}.yaml") for c in (16, 32)]
# the second s design: a 96-channel top-down path and 5 units in the 192-channel stage
TD96_EXPERIMENT = str(ROOT / "models" / "experiments" / "yolov5s_shuffle_cpu_td96.yaml")
# the n scale's bottom-up PAN widened (96 at P4, 128 at P5), paid for by two fewer units in the 128-channel stage
BU_EXPERIMENT = str(ROOT / "models" / "experiments" / "yolov5n_shuffle_cpu_bu.yaml")
# bu with an FPN-style P3 node: a 3x3 on the backbone's P3 plus the top-down node's 1x1, upsampled
BUFPN_EXPERIMENT = str(ROOT / "models" / "experiments" / "yolov5n_shuffle_cpu_bufpn.yaml")
# bufpn with linear P3 convs and one activation after their sum
BUFPN_ACT_EXPERIMENT = str(ROOT / "models" / "experiments" / "yolov5n_shuffle_cpu_bufpn_act.yaml")
# bufpn_act with a 3x3 instead of the 1x1 on the top-down node before the upsample
BUFPN_K3_EXPERIMENT = str(ROOT / "models" / "experiments" / "yolov5n_shuffle_cpu_bufpn_k3.yaml")
# bufpn with 2 stride-1 units in the 128-channel stage instead of 1
BUFPN_U2_EXPERIMENT = str(ROOT / "models" / "experiments" / "yolov5n_shuffle_cpu_bufpn_u2.yaml")
# yolov5s_shuffle_cpu with bufpn_k3's P3 node; that with 5 stride-1 units in the 192-channel stage instead of 3; with
# the P3 node at 128 channels instead of 96; and that with 1 unit in the 192 stage
S_FPN_EXPERIMENTS = [str(ROOT / "models" / "experiments" / f"yolov5s_shuffle_cpu_fpn_k3{s}.yaml")
                     for s in ("", "_u5", "_w128", "_w128_u1")]


def units(model, i: int) -> int:
    """How many ShuffleUnits layer i of a model holds (one row of the yaml, any repeat count)."""
    return sum(isinstance(u, ShuffleUnit) for u in model.model[i].modules())


def changed_layers(a, b, skip: int = None) -> list:
    """Layer indices (as strings, sorted) whose tensors differ in shape between two models, layer `skip` (if any) left
    out."""
    shapes = [{k: v.shape for k, v in m.state_dict().items()
               if skip is None or not k.startswith(f"model.{skip}.")} for m in (a, b)]
    return sorted({k.split(".")[1] for k in shapes[0] if shapes[1].get(k) != shapes[0][k]})


def layer_outputs(model, layers, x) -> dict:
    """{i: output of layer i} for one eval forward of x."""
    seen = {}
    hooks = [model.model[i].register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, out)) for i in layers]
    model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def fpn_sum(lateral, top_down, seen) -> torch.Tensor:
    """An FPN-style P3 node recomputed from hooked outputs: lateral(backbone P3, layer 2) + the top-down conv of layer
    10's output, upsampled 2x (nearest)."""
    with torch.inference_mode():
        return lateral(seen[2]) + torch.nn.functional.interpolate(top_down(seen[10]), scale_factor=2.0)


def fused_copy(model):
    from copy import deepcopy
    return deepcopy(model).eval().fuse()


def test_both_scales_exist():
    assert CPU_CFGS == ["yolov5n_shuffle_cpu.yaml", "yolov5s_shuffle_cpu.yaml"]


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("s, shape_out", [(1, (2, 16, 12, 10)), (2, (2, 24, 6, 5))])
def test_shuffle_unit_shapes(s, shape_out, dense):
    unit = ShuffleUnit(16, shape_out[1], s, 3, dense)
    assert tuple(unit(torch.rand(2, 16, 12, 10)).shape) == shape_out


def test_dense_unit_has_dense_3x3_branches():
    unit = ShuffleUnit(16, 32, 2, 3, dense=True)
    convs = [m for m in unit.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.groups, c.stride) for c in convs] == [((3, 3), 1, (2, 2)), ((1, 1), 1, (1, 1)),
                                                                     ((3, 3), 1, (2, 2))]
    dw = ShuffleUnit(16, 32, 2, 5)  # the depth-wise unit: 5x5 with one group per channel
    assert [(c.kernel_size, c.groups) for c in dw.modules() if isinstance(c, torch.nn.Conv2d)] == [
        ((5, 5), 16), ((1, 1), 1), ((1, 1), 1), ((5, 5), 16), ((1, 1), 1)]


@pytest.mark.parametrize("dense", [False, True])
def test_stride1_unit_passes_first_half_through_interleaved(dense):
    torch.manual_seed(0)
    unit = ShuffleUnit(8, 8, 1, 3, dense).eval()
    x = torch.rand(1, 8, 6, 6)
    y = unit(x)
    torch.testing.assert_close(y[:, 0::2], x[:, :4])  # even output channels are the untouched first half
    torch.testing.assert_close(y[:, 1::2], unit.branch2(x[:, 4:]))


def test_interleave_is_cat_then_shuffle_in_both_memory_formats():
    a, b = torch.rand(1, 6, 5, 4), torch.rand(1, 6, 5, 4)
    want = torch.cat((a, b), 1).view(1, 2, 6, 5, 4).transpose(1, 2).reshape(1, 12, 5, 4)
    torch.testing.assert_close(interleave_channels(a, b), want)
    cl = torch.channels_last
    torch.testing.assert_close(interleave_channels(a.to(memory_format=cl), b.to(memory_format=cl)), want)


@pytest.mark.parametrize("args, words", [
    ((16, 24, 1), "c1 == c2"), ((16, 15, 2), "c2 must be even"), ((16, 16, 3), "stride must be 1 or 2"),
    ((16, 16, 1, 4), "kernel must be 3, 5 or 7")])
def test_shuffle_unit_bad_arguments(args, words):
    with pytest.raises(ValueError, match=words):
        ShuffleUnit(*args)


def test_bad_row_names_file_and_layer(tmp_path):
    d = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": [[10, 13, 16, 30, 33, 23]] * 3,
         "backbone": [[-1, 1, "Conv_maxpool", [24]], [-1, 1, "ShuffleUnit", [48, 2]], [-1, 1, "ShuffleUnit", [64, 1]]],
         "head": [[[0, 1, 2], 1, "Detect", ["nc", "anchors"]]]}
    with pytest.raises(ValueError, match=r"bad\.yaml, layer 2 \(ShuffleUnit .*c1 == c2"):
        DetectionModel(write_yaml(tmp_path / "bad.yaml", d))


def test_add_block_sums_equal_widths_and_names_unequal_ones(tmp_path):
    a, b = torch.rand(2, 8, 5, 4), torch.rand(2, 8, 5, 4)
    assert torch.equal(Add()([a, b]), a + b) and torch.equal(Add()([a, b, a]), a + b + a)
    model = DetectionModel(ADD_EXPERIMENT, nc=2)
    add = model.model[12]
    assert isinstance(add, Add) and add.f == [-1, 2] and model.model[13].conv.in_channels == 64  # 128 with a Concat
    d = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": [[10, 13, 16, 30, 33, 23]] * 3,
         "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [32, 3, 2]], [[-1, 0], 1, "Add", []]],
         "head": [[[0, 1, 1], 1, "Detect", ["nc", "anchors"]]]}
    with pytest.raises(ValueError, match=r"bad\.yaml, layer 2 \(Add\): .*widths \[32, 16\].*1x1 Conv"):
        DetectionModel(write_yaml(tmp_path / "bad.yaml", d))
    d["backbone"][2] = [-1, 1, "Add", []]  # one input: nothing to add
    with pytest.raises(ValueError, match=r"bad\.yaml, layer 2 \(Add\): Add sums two or more"):
        DetectionModel(write_yaml(tmp_path / "bad.yaml", d))


def test_dwsep_conv_shapes_and_fuse():
    torch.manual_seed(0)
    m = DWSepConv(8, 12, 5, 2)
    for _ in range(2):  # give the BNs running statistics that are not the identity
        m.train()(torch.rand(4, 8, 16, 16) * 3)
    m.eval()
    x = torch.rand(1, 8, 16, 16)
    y = m(x)
    assert y.shape == (1, 12, 8, 8)
    m.dw.fuse(), m.pw.fuse()
    assert not hasattr(m.dw, "bn") and m.dw.conv.groups == 8 and m.dw.conv.kernel_size == (5, 5)
    torch.testing.assert_close(m(x), y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cfg", CPU_CFGS + [DW_EXPERIMENT, P3_EXPERIMENT, ADD_EXPERIMENT, PAN96_EXPERIMENT] +
                         STEM_EXPERIMENTS + NARROW_EXPERIMENTS + STEM_WIDTH_EXPERIMENTS +
                         [TD96_EXPERIMENT, BU_EXPERIMENT, BUFPN_EXPERIMENT, BUFPN_ACT_EXPERIMENT,
                          BUFPN_K3_EXPERIMENT, BUFPN_U2_EXPERIMENT] + S_FPN_EXPERIMENTS)
def test_config_builds_fuses_and_matches(cfg):
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=5)
    assert model.stride.tolist() == [8, 16, 32]
    units = [m for m in model.modules() if isinstance(m, ShuffleUnit)]
    assert units and all(isinstance(m.act, torch.nn.Hardswish) for u in units for m in u.modules() if hasattr(m, "act")
                         and not isinstance(m.act, torch.nn.Identity))
    assert isinstance(model.model[-1], Detect) and model.model[-1].no == 10
    model.train()
    for _ in range(2):  # running BN statistics, so that fusing them changes the weights
        model(torch.rand(2, 3, 96, 96) * 2)
    model.eval()
    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        want = model(x)[0]
        got = fused_copy(model)(x)[0]
    assert got.shape == want.shape == (2, 3 * (12 * 16 + 6 * 8 + 3 * 4), 10)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    assert not any(hasattr(m, "bn") for m in fused_copy(model).modules() if type(m).__name__ == "Conv")


def test_s_second_design_widens_bottom_up_over_the_first():
    """td96 (the second s design) is the PAN-96 design with its bottom-up P4 and P5 nodes at 128 and 192 channels."""
    new, old = DetectionModel(TD96_EXPERIMENT, nc=5), DetectionModel(PAN96_EXPERIMENT, nc=5)
    assert [c.in_channels for c in new.model[-1].m] == [96, 128, 192]
    assert [c.in_channels for c in old.model[-1].m] == [96, 96, 96]
    shapes = [{(int(k.split(".")[1]), k): v.shape for k, v in m.state_dict().items()} for m in (new, old)]
    backbone = [{k: v for k, v in d.items() if k[0] < 7} for d in shapes]
    assert backbone[0] == backbone[1]
    differ = sorted({k[0] for k, v in shapes[0].items() if shapes[1][k] != v})
    assert differ == [16, 17, 19, 20]  # the two bottom-up convs at P4, the P5 node, and Detect reading them


def test_narrow_pans_change_only_the_head_convs_and_detect():
    """The pan48 experiment narrows every 3x3 conv of yolov5n_shuffle_cpu's PAN to 48 channels, p3w48 only the P3 node;
    the backbone and layer 7 (P5 to 64 channels) are the same tensors."""
    base = DetectionModel("yolov5n_shuffle_cpu.yaml", nc=5)
    pan, p3 = (DetectionModel(cfg, nc=5) for cfg in NARROW_EXPERIMENTS)
    assert [c.in_channels for c in base.model[-1].m] == [64, 64, 64]
    assert [c.in_channels for c in pan.model[-1].m] == [48, 48, 48] and pan.model[13].conv.in_channels == 48 + 64
    assert [c.in_channels for c in p3.model[-1].m] == [48, 64, 64] and p3.model[14].conv.in_channels == 48
    shapes = [{(int(k.split(".")[1]), k): v.shape for k, v in m.state_dict().items()} for m in (base, pan, p3)]
    assert sorted({k[0] for k, v in shapes[0].items() if shapes[1][k] != v}) == [10, 13, 14, 16, 17, 19, 20]
    assert sorted({k[0] for k, v in shapes[0].items() if shapes[2][k] != v}) == [13, 14, 20]


def test_stem_width_experiments_change_only_the_stem_and_its_readers():
    """stem16/stem32: yolov5n_shuffle_cpu with 16 / 32 stem filters; only layer 0 and the first unit's two convs that
    read the stem change shape; every later tensor keeps its shape."""
    base = DetectionModel("yolov5n_shuffle_cpu.yaml", nc=5)
    shapes = [{k: v.shape for k, v in m.state_dict().items()}
              for m in [base] + [DetectionModel(cfg, nc=5) for cfg in STEM_WIDTH_EXPERIMENTS]]
    for width, other in zip((16, 32), shapes[1:]):
        assert other.keys() == shapes[0].keys()
        changed = sorted(k for k, v in other.items() if v != shapes[0][k])
        assert {k.split(".")[1] for k in changed} == {"0", "1"}, changed
        assert other["model.0.conv.0.weight"] == (width, 3, 3, 3) and shapes[0]["model.0.conv.0.weight"][0] == 24
        readers = [k for k in changed if k.startswith("model.1.") and k.endswith("conv.weight")]
        assert len(readers) == 2 and all(other[k][1] == width for k in readers), readers


def test_s_widens_top_down_and_drops_two_units_over_the_second_design():
    """yolov5s_shuffle_cpu is td96 (the second s design) with the P5 1x1 and the P4 top-down node at 128 channels
    (so the P3 node reads 128 + 96) and 3 stride-1 units instead of 5 in the 192-channel stage; everything else
    keeps its shape."""
    base, td = DetectionModel(TD96_EXPERIMENT, nc=5), DetectionModel("yolov5s_shuffle_cpu.yaml", nc=5)
    assert (units(base, 4), units(td, 4)) == (5, 3)
    assert [td.model[i].conv.out_channels for i in (7, 10, 13)] == [128, 128, 96]
    assert [base.model[i].conv.out_channels for i in (7, 10, 13)] == [96, 96, 96]
    assert td.model[13].conv.in_channels == 128 + 96 and td.model[16].conv.in_channels == 96 + 128
    assert [c.in_channels for c in td.model[-1].m] == [c.in_channels for c in base.model[-1].m] == [96, 128, 192]
    assert changed_layers(base, td, skip=4) == ["10", "13", "16", "19", "7"]


def test_n_bu_experiment_widens_bottom_up_and_drops_two_units():
    """bu: yolov5n_shuffle_cpu with the P4 node and the stride-2 conv after it at 96 channels and the P5 node at 128,
    and 1 stride-1 unit instead of 3 in the 128-channel stage; the top-down path and the P3 node keep their shapes."""
    base, bu = DetectionModel("yolov5n_shuffle_cpu.yaml", nc=5), DetectionModel(BU_EXPERIMENT, nc=5)
    assert (units(base, 4), units(bu, 4)) == (3, 1)
    assert [bu.model[i].conv.out_channels for i in (13, 16, 17, 19)] == [64, 96, 96, 128]
    assert bu.model[19].conv.in_channels == 96 + 64
    assert [c.in_channels for c in bu.model[-1].m] == [64, 96, 128]
    assert changed_layers(base, bu, skip=4) == ["16", "17", "19", "20"]


def test_n_bufpn_experiment_sums_a_lateral_3x3_and_an_upsampled_1x1_at_p3():
    """bufpn: bu with its P3 node (a 3x3 conv over the concat of the upsampled top-down node and the backbone's P3)
    replaced by the sum of a 3x3 conv on the backbone's P3 and the top-down node's 1x1 conv, upsampled; the
    backbone, the top-down P4 node, the bottom-up path and Detect keep bu's shapes. The P3 output at a 640 input
    is 80x80 and depends on both the backbone's P3 and the top-down path."""
    bu, fpn = DetectionModel(BU_EXPERIMENT, nc=5), DetectionModel(BUFPN_EXPERIMENT, nc=5)
    one_by_one, lateral, add = fpn.model[11], fpn.model[13], fpn.model[14]
    assert isinstance(add, Add) and add.f == [-1, 12] and lateral.f == 2 and fpn.model[12].f == -1
    assert (one_by_one.conv.kernel_size, one_by_one.conv.in_channels, one_by_one.conv.out_channels) == ((1, 1), 64, 64)
    assert (lateral.conv.kernel_size, lateral.conv.in_channels, lateral.conv.out_channels) == ((3, 3), 64, 64)
    assert bu.model[13].conv.in_channels == 128  # the concat it replaces
    shapes = [[v.shape for k, v in m.state_dict().items() if int(k.split(".")[1]) < 11] for m in (bu, fpn)]
    assert shapes[0] == shapes[1]  # backbone, P5 1x1 and the top-down P4 node
    assert [c.in_channels for c in fpn.model[-1].m] == [c.in_channels for c in bu.model[-1].m] == [64, 96, 128]
    assert [fpn.model[i].conv.out_channels for i in (15, 17, 18, 20)] == [64, 96, 96, 128]
    seen = layer_outputs(fpn, (2, 10, 14), torch.rand(1, 3, 640, 640))
    assert seen[14].shape == (1, 64, 80, 80) and seen[10].shape == (1, 64, 40, 40) and seen[2].shape[-1] == 80
    u2 = DetectionModel(BUFPN_U2_EXPERIMENT, nc=5)
    assert (units(fpn, 4), units(u2, 4)) == (1, 2) and changed_layers(fpn, u2, skip=4) == []
    want = fpn_sum(lateral, one_by_one, seen)  # the sum, recomputed from its two inputs
    torch.testing.assert_close(seen[14], want)


def test_n_bufpn_act_experiment_activates_the_sum_of_two_linear_convs():
    """bufpn_act: bufpn whose two P3 convs are linear (BN kept, no activation), followed by an `nn.Hardswish` row
    after their sum; every tensor keeps bufpn's shape, layers after the sum move up by one."""
    fpn, act = DetectionModel(BUFPN_EXPERIMENT, nc=5), DetectionModel(BUFPN_ACT_EXPERIMENT, nc=5)
    one_by_one, lateral, add, hswish = (act.model[i] for i in (11, 13, 14, 15))
    assert isinstance(one_by_one.act, torch.nn.Identity) and isinstance(lateral.act, torch.nn.Identity)
    assert isinstance(fpn.model[11].act, torch.nn.Hardswish) and isinstance(fpn.model[13].act, torch.nn.Hardswish)
    assert isinstance(add, Add) and add.f == [-1, 12] and isinstance(hswish, torch.nn.Hardswish) and hswish.f == -1
    assert act.model[-1].f == [15, 18, 21] and fpn.model[-1].f == [14, 17, 20]
    assert [v.shape for v in act.state_dict().values()] == [v.shape for v in fpn.state_dict().values()]
    seen = layer_outputs(act, (2, 10, 15), torch.rand(1, 3, 128, 128))
    want = torch.nn.functional.hardswish(fpn_sum(lateral, one_by_one, seen))
    assert seen[15].shape == (1, 64, 16, 16) and seen[15].min() < 0  # H-Swish dips below 0; a ReLU would not
    torch.testing.assert_close(seen[15], want)


def test_n_bufpn_k3_experiment_gives_the_top_down_input_a_3x3_before_the_upsample():
    """bufpn_k3: bufpn_act whose linear conv on the top-down node (row 11, before the upsample) is 3x3 instead of 1x1;
    every other tensor keeps bufpn_act's shape, and the P3 output is still the activation of the sum."""
    act, k3 = DetectionModel(BUFPN_ACT_EXPERIMENT, nc=5), DetectionModel(BUFPN_K3_EXPERIMENT, nc=5)
    top_down, lateral = k3.model[11], k3.model[13]
    assert top_down.conv.kernel_size == (3, 3) and act.model[11].conv.kernel_size == (1, 1)
    assert (top_down.conv.in_channels, top_down.conv.out_channels) == (64, 64) and top_down.f == -1
    assert isinstance(top_down.act, torch.nn.Identity) and isinstance(k3.model[15], torch.nn.Hardswish)
    assert changed_layers(act, k3) == ["11"]
    seen = layer_outputs(k3, (2, 10, 15), torch.rand(1, 3, 128, 128))
    want = torch.nn.functional.hardswish(fpn_sum(lateral, top_down, seen))
    torch.testing.assert_close(seen[15], want)
    with torch.inference_mode():  # a 3x3 sees its neighbours: one input pixel moves the outputs next to it only
        x = seen[10].clone()
        base = top_down(x)
        x[..., 3, 3] += 1.0
        moved = (top_down(x) - base).abs().sum(1)[0]
    assert moved[3, 4] > 0 and moved[4, 4] > 0 and moved[3, 5] == 0


def test_s_fpn_k3_experiments_replace_the_p3_concat_conv_by_the_activated_sum_of_two_linear_3x3s():
    """s fpn_k3: yolov5s_shuffle_cpu whose P3 node (a 3x3 conv over the concat of the upsampled 128-channel top-down
    node and the backbone's 96-channel P3) is H-Swish of the sum of a linear 3x3 on the backbone's P3 (96 -> 96) and
    the upsampled linear 3x3 of the top-down node (128 -> 96, on the 40x40 map at 640); every layer before and after
    it keeps its shape (two rows later). fpn_k3_u5 is that with 5 stride-1 units instead of 3 in the 192 stage;
    fpn_k3_w128 that with the P3 node and the stride-2 conv after it at 128 channels; fpn_k3_w128_u1 that with 1 unit
    in the 192 stage."""
    td, fpn, u5, w128, u1 = (DetectionModel(cfg, nc=5) for cfg in ["yolov5s_shuffle_cpu.yaml"] + S_FPN_EXPERIMENTS)
    top_down, lateral, add, hswish = (fpn.model[i] for i in (11, 13, 14, 15))
    assert td.model[13].conv.in_channels == 128 + 96 and td.model[13].conv.kernel_size == (3, 3)
    for conv, c_in in ((top_down, 128), (lateral, 96)):
        assert (conv.conv.kernel_size, conv.conv.in_channels, conv.conv.out_channels) == ((3, 3), c_in, 96)
        assert isinstance(conv.act, torch.nn.Identity)
    assert lateral.f == 2 and add.f == [-1, 12] and isinstance(hswish, torch.nn.Hardswish)
    assert fpn.model[-1].f == [15, 18, 21] and td.model[-1].f == [13, 16, 19]

    def rows(m, keep):
        return [(int(k.split(".")[1]), v.shape) for k, v in m.state_dict().items() if keep(int(k.split(".")[1]))]
    assert rows(fpn, lambda i: i <= 10) == rows(td, lambda i: i <= 10)  # backbone and top-down path
    assert [v for _, v in rows(fpn, lambda i: i >= 16)] == [v for _, v in rows(td, lambda i: i >= 14)]  # bottom-up
    assert (units(fpn, 4), units(u5, 4)) == (3, 5) and changed_layers(fpn, u5, skip=4) == []
    assert changed_layers(fpn, w128) == ["11", "13", "16", "18", "22"]  # the P3 node, its readers and Detect
    assert [w128.model[i].conv.out_channels for i in (11, 13, 16)] == [128] * 3
    assert w128.model[18].conv.in_channels == 128 + 128 and w128.model[-1].m[0].in_channels == 128
    assert (units(w128, 4), units(u1, 4)) == (3, 1) and changed_layers(w128, u1, skip=4) == []
    seen = layer_outputs(fpn, (2, 10, 15), torch.rand(1, 3, 128, 128))
    want = torch.nn.functional.hardswish(fpn_sum(lateral, top_down, seen))
    assert seen[15].shape == (1, 96, 16, 16)
    torch.testing.assert_close(seen[15], want)


def test_td128_experiment_is_the_adopted_s_design():
    """experiments/yolov5s_shuffle_cpu_td128.yaml, which the README's training commands name, is yolov5s_shuffle_cpu
    layer for layer."""
    import yaml
    models = ROOT / "models"
    files = (models / "yolov5s_shuffle_cpu.yaml", models / "experiments" / "yolov5s_shuffle_cpu_td128.yaml")
    a, b = (yaml.safe_load(Path(f).read_text()) for f in files)
    assert a == b


@pytest.mark.parametrize("cfg", CPU_CFGS + [ADD_EXPERIMENT, BUFPN_EXPERIMENT, BUFPN_ACT_EXPERIMENT,
                                 BUFPN_K3_EXPERIMENT, S_FPN_EXPERIMENTS[-1]])
def test_config_exports_onnx_openvino_ncnn(tmp_path, cfg):
    """export.py on the n- and s-scale models: ONNX (dynamic batch) and, as CI installs them, OpenVINO and ncnn."""
    import export
    from detect_helpers import save_own
    from inference.backends import DetectMultiBackend
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=3).eval()
    model.names = {0: "a", 1: "b", 2: "c"}
    w = save_own(model, tmp_path / "dw.pt")
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        want = DetectMultiBackend(w)(x)[0]
    onnx_file = export.run(weights=str(w), imgsz=(64, 64), include=["onnx"], dynamic=True)[0]
    torch.testing.assert_close(DetectMultiBackend(onnx_file)(x)[0], want, atol=2e-2, rtol=1e-3)
    files = export.run(weights=str(w), imgsz=[64], include=["openvino", "ncnn"])
    assert [f.name for f in files] == ["dw.onnx", "dw_openvino_model", "dw_ncnn_model"]
    for f in files[1:]:
        torch.testing.assert_close(DetectMultiBackend(f)(x[:1])[0], want[:1], atol=2e-2, rtol=1e-3)


def test_pareto_quick_on_a_tiny_dataset(tmp_path):
    """The whole command: two trainings, each validated and timed at two sizes, latency, table, plot and json."""
    from test_export import make_dataset
    data = make_dataset(tmp_path / "data", n=4)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pareto.py"), "--quick", "--data", str(data), "--img", "64",
           "--smaller", "32", "--smaller-cfg", "yolov5n.yaml", "yolov5n_shuffle_cpu.yaml", "--latency-size", "96",
           "--epochs", "1", "--batch", "4", "--workers", "0",
           "--runs", "2", "--warmup", "1", "--project", str(tmp_path / "runs"), "--name", "q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "q"
    points = json.loads((out / "results.json").read_text())["points"]
    assert [(p["config"], p["img"]) for p in points] == [("yolov5n", 64), ("yolov5n", 32),
                                                          ("yolov5n_shuffle_cpu", 64), ("yolov5n_shuffle_cpu", 32)]
    for p in points:
        assert set(p["ms"]) == set(p["ms_big"]) == {"pytorch", "onnx"}
        assert all(v > 0 for v in list(p["ms"].values()) + list(p["ms_big"].values()))
        assert 0 <= p["map"] <= p["map50"] <= 1 and p["train_s"] > 0
    for big, small in (points[0:2], points[2:4]):
        assert small["ms_big"] == big["ms_big"] and small["train_s"] == big["train_s"]  # one network, one training
        assert small["ms"] != big["ms"]  # but timed at its own size
    md = (out / "pareto.md").read_text()
    assert "| yolov5n_shuffle_cpu / yolov5n |" in md and "| yolov5n @32 | 32 |" in md
    assert "| yolov5n_shuffle_cpu @32 / yolov5n |" in md  # against the stock model at the same size
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "Saved" in proc.stdout


def test_pareto_default_list_resolves_and_every_design_has_its_stock_model(monkeypatch):
    """The default run's configs resolve (as pareto.py's check resolves them), name distinct table rows, and each design
    of ours gets a ratio row: the stock model of its scale (the stem's prefix) is in the list."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import pareto
    from utils.files import check_yaml
    stems = [Path(check_yaml(c)).stem for c in pareto.DEFAULT_CFGS]
    assert len(set(stems)) == len(stems)
    stock = {s for s in stems if "_" not in s}
    assert stock == {"yolov5n", "yolov5s"}
    assert all(s.split("_")[0] in stock for s in stems)
    assert {"yolov5n_shuffle_cpu_bufpn_k3", "yolov5s_shuffle_cpu_fpn_k3_w128_u1"} <= set(stems)  # the recommendations


def test_pareto_refuses_bad_flags_before_training(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pareto.py"), "--cfg", "nope.yaml", "--project",
           str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "nope.yaml" in proc.stderr.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())  # nothing written
    proc = subprocess.run(cmd[:2] + ["--backends", "tensorrt"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "tensorrt" in proc.stderr


def test_seeds_trains_every_config_at_every_seed_and_reports_failures(tmp_path):
    """benchmarks/seeds.py: 3 configs x 2 seeds, 3 at a time; one config cannot build, so its runs fail, are marked
    and named, and the others still train, validate and enter the table and the differences row."""
    from test_export import make_dataset
    data = make_dataset(tmp_path / "data", n=4)
    bad = write_yaml(tmp_path / "broken.yaml", {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0,
                                                "anchors": [[10, 13, 16, 30, 33, 23]] * 3,
                                                "backbone": [[-1, 1, "NoSuchBlock", [16]]], "head": []})
    cmd = [sys.executable, str(ROOT / "benchmarks" / "seeds.py"), "--cfg", "yolov5n.yaml", "yolov5n_shuffle_cpu.yaml",
           str(bad), "--seeds", "0", "1", "--parallel", "3", "--data", str(data), "--img", "64", "--epochs", "1",
           "--batch", "4", "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "s"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "2 of 6 runs failed: broken seed 0" in last and "broken_seed1.log" in last
    out = tmp_path / "runs" / "s"
    runs = json.loads((out / "results.json").read_text())["runs"]
    configs = ("yolov5n", "yolov5n_shuffle_cpu", "broken")
    assert [(r["config"], r["seed"]) for r in runs] == [(c, s) for s in (0, 1) for c in configs]
    good = {(r["config"], r["seed"]): r for r in runs if "error" not in r}
    assert len(good) == 4 and all(0 <= r["map"] <= r["map50"] <= 1 and Path(r["weights"]).is_file()
                                  for r in good.values())
    assert "NoSuchBlock" in (out / "train" / "broken_seed0.log").read_text()
    md = (out / "seeds.md").read_text()
    assert "| broken | failed | failed | - | - | - | - |" in md
    diffs = [good["yolov5n_shuffle_cpu", s]["map"] - good["yolov5n", s]["map"] for s in (0, 1)]
    assert (f"| yolov5n_shuffle_cpu - yolov5n | {diffs[0]:+.3f} | {diffs[1]:+.3f} | {sum(diffs) / 2:+.3f} | "
            f"{min(diffs):+.3f} |") in md


def test_seeds_refuses_bad_flags_before_training(tmp_path):
    base = [sys.executable, str(ROOT / "benchmarks" / "seeds.py"), "--project", str(tmp_path)]
    for extra, words in ((["--cfg", "nope.yaml"], "nope.yaml"),
                         (["--cfg", "yolov5n.yaml", "--seeds", "1", "1"], "a seed given twice"),
                         (["--cfg", "yolov5n.yaml", "--parallel", "0"], "--parallel 0")):
        proc = subprocess.run(base + extra, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 1 and words in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert not any(tmp_path.iterdir())  # nothing written
