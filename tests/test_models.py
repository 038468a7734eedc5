"""Model core: configs build with the published sizes, ShuffleNetV2 blocks behave, fuse/trace/export work."""

from copy import deepcopy

import pytest
import torch
import yaml

from conftest import ROOT, write_yaml
from models.common import ShuffleNetV2_InvertedResidual, channel_shuffle, max_pool_3x3_s2
from models.yolo import Detect, DetectionModel, parse_model

CONFIGS = sorted(p.name for p in (ROOT / "models").glob("*.yaml"))

# Parameter counts at nc=80, as YOLOv5 v7.0 builds these configs (with the seed's patch for *_shuffle).
SPEC_PARAMS = {
    "yolov5n.yaml": 1_872_157, "yolov5s.yaml": 7_235_389, "yolov5m.yaml": 21_190_557,
    "yolov5l.yaml": 46_563_709, "yolov5x.yaml": 86_749_405,
    "yolov5n_shuffle.yaml": 917_157, "yolov5s_shuffle.yaml": 3_395_541, "yolov5m_shuffle.yaml": 9_880_397,
    "yolov5l_shuffle.yaml": 21_644_789, "yolov5x_shuffle.yaml": 40_388_253, "yolov5_shuffle.yaml": 21_644_789,
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cfg", sorted(SPEC_PARAMS))
def test_parameter_counts_match_spec(cfg):
    d = yaml.safe_load((ROOT / "models" / cfg).read_text())
    with torch.device("meta"):  # structure only: no memory, no init cost
        layers, save = parse_model(d, ch=[3])
    assert n_params(layers) == SPEC_PARAMS[cfg]
    assert save == ([2, 4, 8, 12, 15, 18, 21] if "shuffle" in cfg else [4, 6, 10, 14, 17, 20, 23])


def test_model_summary_numbers():
    model = DetectionModel("yolov5n_shuffle.yaml")
    layers, params, grads, gflops = model.info()
    assert params == grads == SPEC_PARAMS["yolov5n_shuffle.yaml"]
    assert gflops == pytest.approx(1.88, abs=0.01)  # thop at 640, as YOLOv5 v7.0 reports it


@pytest.mark.parametrize("cfg", CONFIGS)
def test_every_config_builds_with_strides_and_head_shapes(cfg):
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=3)
    assert model.stride.tolist() == [8, 16, 32]
    detect = model.model[-1]
    assert isinstance(detect, Detect) and detect.no == 8
    x = torch.rand(2, 3, 64, 96)
    train_out = model.train()(x)
    assert [tuple(t.shape) for t in train_out] == [(2, 3, 8, 12, 8), (2, 3, 4, 6, 8), (2, 3, 2, 3, 8)]
    pred, levels = model.eval()(x)
    assert pred.shape == (2, 3 * (96 + 24 + 6), 8)
    assert len(levels) == 3


@pytest.mark.parametrize("cfg, widths", [
    ("yolov5_shuffle.yaml", [24, 120, 120, 232, 232, 464, 464]),
    ("yolov5n_shuffle.yaml", [8, 32, 32, 64, 64, 120, 120]),
    ("yolov5s_shuffle.yaml", [16, 64, 64, 120, 120, 232, 232]),
])
def test_shuffle_backbone_stage_shapes(cfg, widths):
    model = DetectionModel(cfg).eval()
    x = torch.rand(1, 3, 64, 64)
    strides = [4, 8, 8, 16, 16, 32, 32]
    with torch.no_grad():
        for i in range(7):
            x = model.model[i](x)
            assert tuple(x.shape) == (1, widths[i], 64 // strides[i], 64 // strides[i]), f"layer {i}"


def test_shuffle_depth_scaling_repeats():
    model = DetectionModel("yolov5n_shuffle.yaml")  # 3 -> round(0.99) = 1, 7 -> round(2.31) = 2
    assert isinstance(model.model[2], ShuffleNetV2_InvertedResidual)
    assert isinstance(model.model[6], ShuffleNetV2_InvertedResidual)
    assert len(model.model[4]) == 2
    keys = model.state_dict().keys()
    assert "model.4.1.branch2.3.bias" in keys and "model.1.branch1.0.bias" in keys


def test_channel_shuffle_is_the_reshape_transpose_permutation():
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).view(2, 8, 3, 3)
    y = channel_shuffle(x, 2)
    # groups of 4: channel order becomes 0,4,1,5,2,6,3,7
    assert torch.equal(y, x[:, [0, 4, 1, 5, 2, 6, 3, 7]])
    assert torch.equal(y, x.reshape(2, 2, 4, 3, 3).transpose(1, 2).reshape(2, 8, 3, 3))
    # the inverse of a 2-group shuffle of c channels is a (c/2)-group shuffle
    assert torch.equal(channel_shuffle(y, 4), x)
    assert not torch.equal(y, x)


def test_stride1_block_passes_first_half_through():
    torch.manual_seed(0)
    block = ShuffleNetV2_InvertedResidual(16, 16, 1).eval()
    x = torch.randn(1, 16, 8, 8)
    y = block(x)
    assert torch.equal(y[:, 0::2], x[:, :8])  # after the shuffle the untouched half sits on the even channels
    assert not torch.allclose(y[:, 1::2], x[:, 8:])


def _seed_forward(block, x):
    """The seed's forward, written out: concatenate the branches, then channel_shuffle(., 2)."""
    if block.stride == 1:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, block.branch2(x2)), 1), 2)
    return channel_shuffle(torch.cat((block.branch1(x), block.branch2(x)), 1), 2)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("inp,oup,stride", [(16, 16, 1), (8, 24, 2)])
def test_shuffle_block_trains_exactly_as_cat_then_shuffle(inp, oup, stride, channels_last):
    """The single interleaving copy gives the seed's values and gradients bit for bit, in both memory layouts."""
    torch.manual_seed(0)
    block = ShuffleNetV2_InvertedResidual(inp, oup, stride).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    block.to(memory_format=fmt)
    x = torch.randn(2, inp, 12, 10).to(memory_format=fmt)
    g = torch.randn(2, oup, 12 // stride, 10 // stride)
    results = []
    for fn in (block, lambda t: _seed_forward(block, t)):
        xi = x.clone().requires_grad_(True)
        block.zero_grad()
        y = fn(xi)
        y.backward(g)
        results.append((y.detach(), xi.grad, [p.grad.clone() for p in block.parameters()]))
    (y1, gx1, gp1), (y2, gx2, gp2) = results
    assert torch.equal(y1, y2) and torch.equal(gx1, gx2) and all(torch.equal(a, b) for a, b in zip(gp1, gp2))
    assert y1.is_contiguous(memory_format=fmt)  # the layout the next conv wants is kept


def test_shuffle_block_structure_and_keys():
    b = ShuffleNetV2_InvertedResidual(24, 120, 2)
    keys = set(b.state_dict())
    for k in ("branch1.0.weight", "branch1.0.bias", "branch1.2.weight", "branch1.3.running_var",
              "branch2.0.weight", "branch2.3.bias", "branch2.5.weight", "branch2.6.weight"):
        assert k in keys
    assert "branch1.2.bias" not in keys and "branch2.0.bias" not in keys
    assert len(ShuffleNetV2_InvertedResidual(120, 120, 1).branch1) == 0


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov5n_shuffle.yaml"])
def test_fused_matches_unfused(cfg):
    torch.manual_seed(0)
    model = DetectionModel(cfg)
    # give BN layers non-trivial statistics so fusing has something to fold
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 64, 64))
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0]
        fused = deepcopy(model).fuse()
        out = fused(x)[0]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)


def test_fuse_keeps_a_half_model_half():
    """benchmarks.py --half makes the model FP16 before fuse(): the folded convs (bias included) must stay FP16, or
    the first conv fails with 'Input type (c10::Half) and bias type (float)' (seen on CUDA). The folding itself
    is done in float32, so the FP16 model matches the FP32 one within FP16's precision."""
    torch.manual_seed(0)
    model = DetectionModel("yolov5n_shuffle_cpu.yaml", nc=8)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 64, 64))
    model.eval()
    ref = deepcopy(model).fuse(verbose=False)
    half = model.half().fuse(verbose=False)
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out, ref = half(x.half())[0].float(), ref(x)[0]
    torch.testing.assert_close(out[..., 4:], ref[..., 4:], rtol=0, atol=0.01)  # scores
    torch.testing.assert_close(out[..., :4], ref[..., :4], rtol=0.01, atol=0.1)  # boxes, pixels of a 64 px image


@pytest.mark.parametrize("shape", [(2, 8, 32, 48), (1, 3, 2, 2), (1, 4, 7, 10), (1, 4, 10, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_stem_max_pool_equals_torch(shape, channels_last):
    x = torch.randn(shape) - 0.5  # negative values: no padding value may leak into a window
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(max_pool_3x3_s2(x), torch.nn.functional.max_pool2d(x, 3, 2, 1))


@pytest.mark.parametrize("nc", [3, 80])
def test_detect_export_graph_gives_the_eval_values(nc):
    # the export graph splits each level's conv into box and score rows; nc=3: both parts have 4 channels per anchor
    torch.manual_seed(0)
    model = DetectionModel("yolov5n_shuffle.yaml", nc=nc).eval()
    detect = model.model[-1]
    for conv in detect.m:  # spread the logits so that boxes and scores take varied values
        torch.nn.init.normal_(conv.weight, std=0.3)
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        ref = model(x)[0]
        detect.export = True
        out = model(x)[0]
    assert out.shape == ref.shape == (2, 3 * (12 * 16 + 6 * 8 + 3 * 4), nc + 5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    (wb, bb), (ws, bs) = detect.export_head_convs(0)  # the rows, re-interleaved per anchor, are the conv's
    w = torch.cat((wb.view(3, 4, -1), ws.view(3, nc + 1, -1)), 1).view_as(detect.m[0].weight)
    assert torch.equal(w, detect.m[0].weight) and torch.equal(torch.cat((bb.view(3, 4), bs.view(3, -1)), 1).view(-1),
                                                               detect.m[0].bias)


def test_torchscript_trace_and_onnx_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = DetectionModel("yolov5n_shuffle.yaml", nc=3).eval()
    model.model[-1].export = True
    x = torch.rand(1, 3, 64, 64)
    model(x)  # dry run: builds the Detect grids, so the traced graph is the steady-state one
    traced = torch.jit.trace(model, x, strict=False)
    torch.testing.assert_close(traced(x)[0], model(x)[0])
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    f = tmp_path / "m.onnx"
    torch.onnx.export(model, x, str(f), opset_version=12, input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}}, dynamo=False)
    onnx.checker.check_model(onnx.load(str(f)))
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    for bs in (1, 2):
        xb = torch.rand(bs, 3, 64, 64)
        (out,) = sess.run(None, {"images": xb.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), model(xb)[0], rtol=1e-3, atol=1e-3)


# ---- bad model yaml files: each error names the file, the layer and what is accepted ----

def _shuffle_cfg(tmp_path, edit):
    cfg = yaml.safe_load((ROOT / "models" / "yolov5n_shuffle.yaml").read_text())
    edit(cfg)
    return write_yaml(tmp_path / "custom.yaml", cfg)


def test_unknown_module_lists_known_ones(tmp_path):
    f = _shuffle_cfg(tmp_path, lambda c: c["backbone"][7].__setitem__(2, "C3x2"))
    with pytest.raises(ValueError, match=r"custom.yaml, layer 7: unknown module 'C3x2'. Known: .*Conv.*SPPF"):
        DetectionModel(f)


@pytest.mark.parametrize("name, fn", [("nn.Hardswish", torch.nn.functional.hardswish),
                                      ("nn.ReLU", torch.nn.functional.relu), ("nn.SiLU", torch.nn.functional.silu)])
def test_activation_row_applies_to_the_layer_before(tmp_path, name, fn):
    """A standalone activation row (for after an Add) keeps the width and applies its function to its input."""
    d = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": [[10, 13, 16, 30, 33, 23]] * 3,
         "backbone": [[-1, 1, "Conv", [16, 3, 2, None, 1, 1, False]], [-1, 1, name, []]],
         "head": [[[1, 1, 1], 1, "Detect", ["nc", "anchors"]]]}
    model = DetectionModel(write_yaml(tmp_path / "act.yaml", d)).eval()
    assert model.model[-1].m[0].in_channels == 16
    x = torch.rand(1, 3, 64, 64) * 4 - 2
    with torch.inference_mode():
        linear = model.model[0](x)
        want = fn(linear)  # first: the model's activations may work in place, as YOLOv5's do
        assert linear.min() < 0  # so that every one of these functions changes something
        torch.testing.assert_close(model.model[1](linear), want)


def test_stride1_shuffle_row_with_changed_channels(tmp_path):
    f = _shuffle_cfg(tmp_path, lambda c: c["backbone"][2].__setitem__(3, [200, 1]))
    with pytest.raises(ValueError, match=r"custom.yaml, layer 2 .*inp=32, oup=56, stride=1"):
        DetectionModel(f)


def test_stride1_shuffle_block_with_odd_channels():
    with pytest.raises(ValueError, match=r"inp=15, oup=15, stride=1.*even"):
        ShuffleNetV2_InvertedResidual(15, 15, 1)


@pytest.mark.parametrize("bad_from", [5, 30, [-1, 9]])
def test_from_index_forward_or_out_of_range(tmp_path, bad_from):
    f = _shuffle_cfg(tmp_path, lambda c: c["backbone"][3].__setitem__(0, bad_from))
    with pytest.raises(ValueError, match=r"custom.yaml, layer 3: `from` .* points forward or out of range"):
        DetectionModel(f)


def test_missing_top_level_keys(tmp_path):
    f = _shuffle_cfg(tmp_path, lambda c: (c.pop("head"), c.pop("anchors")))
    with pytest.raises(ValueError, match=r"custom.yaml: missing top-level key\(s\) anchors, head"):
        DetectionModel(f)


def test_yaml_that_does_not_parse(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("nc: 80\nbackbone: [[-1, 1, Conv, [64, 3]]\n  head: [\n")
    with pytest.raises(ValueError, match=r"broken.yaml: not valid YAML"):
        DetectionModel(f)


def test_unknown_cfg_name():
    with pytest.raises(FileNotFoundError, match="no_such_model.yaml"):
        DetectionModel("no_such_model.yaml")


def test_activation_key_is_local_to_the_model(tmp_path):
    f = _shuffle_cfg(tmp_path, lambda c: c.__setitem__("activation", "nn.LeakyReLU(0.1)"))
    model = DetectionModel(f)
    assert isinstance(model.model[7].cv1.act, torch.nn.LeakyReLU)
    assert isinstance(DetectionModel("yolov5n.yaml").model[0].act, torch.nn.SiLU)
