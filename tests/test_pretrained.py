"""Loading torchvision ShuffleNetV2 weights (random, built offline) into the models/shufflenetv2 configs."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from conftest import ROOT
from models.yolo import DetectionModel
from models.pretrained import (IMAGENET_MEAN, IMAGENET_STD, load_shufflenet_backbone, pretrained_backbone_layers,
                              read_state_dict)

CFG_DIR = ROOT / "models" / "shufflenetv2"
SIZES = {"x0_5": torchvision.models.shufflenet_v2_x0_5, "x1_0": torchvision.models.shufflenet_v2_x1_0,
         "x1_5": torchvision.models.shufflenet_v2_x1_5, "x2_0": torchvision.models.shufflenet_v2_x2_0}
WIDTHS = {"x0_5": [48, 96, 192], "x1_0": [116, 232, 464], "x1_5": [176, 352, 704], "x2_0": [244, 488, 976]}
FEATURE_LAYERS = (2, 4, 6)  # our outputs of stage2, stage3, stage4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second thread only adds sync waits (7x slower on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def torchvision_net(size: str, seed: int = 0) -> torch.nn.Module:
    """A torchvision ShuffleNetV2 with random weights (weights=None: nothing is downloaded) and random BN stats."""
    torch.manual_seed(seed)
    net = SIZES[size](weights=None).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.copy_(torch.exp(torch.empty_like(m.running_var).uniform_(-6, 1)))  # 2.5e-3 .. 2.7
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net


def torchvision_features(net, x, pad_raw: bool = False):
    """stage2/3/4 outputs of net on x; with pad_raw, x is raw [0, 1] RGB padded with 0 before normalising."""
    if pad_raw:  # what our folded stem sees at the border: zero padding of the raw image
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        x = (F.pad(x, (1, 1, 1, 1)) - mean) / std
        net.conv1[0].padding = (0, 0)
    y, out = net.maxpool(net.conv1(x)), []
    for stage in (net.stage2, net.stage3, net.stage4):
        y = stage(y)
        out.append(y)
    return out


def our_features(model, x):
    out = []
    for i, m in enumerate(model.model[:7]):
        x = m(x)
        if i in FEATURE_LAYERS:
            out.append(x)
    return out


def assert_features_equal(ours, ref):
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.shape == b.shape, f"stage{i + 2}"
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()), msg=f"stage{i + 2}")


@pytest.mark.parametrize("size", list(SIZES))
def test_folded_backbone_matches_torchvision(size):
    """Ours on RGB/255 with the folded normalisation == torchvision on the normalised input (eval, everywhere)."""
    net = torchvision_net(size)
    model = DetectionModel(CFG_DIR / f"yolov5n_shufflenetv2_{size}.yaml").eval()
    n = load_shufflenet_backbone(model, net.state_dict())
    assert n == len(net.state_dict()) - 8  # all but conv5 (weight + 5 BN tensors) and fc (weight, bias)
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_features_equal(our_features(model, x), torchvision_features(net, x, pad_raw=True))


def test_folded_backbone_differs_only_near_the_border():
    """The documented caveat: with standard padding the folded model differs only in a border band."""
    net = torchvision_net("x0_5")
    model = DetectionModel(CFG_DIR / "yolov5n_shufflenetv2_x0_5.yaml").eval()
    load_shufflenet_backbone(model, net.state_dict())
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        ours, ref = our_features(model, x)[0], torchvision_features(net, (x - mean) / std)[0]
    # stride 8: the stem's first row/column reaches 4 rows/columns through the stride-2 unit and three 3x3 dw convs
    torch.testing.assert_close(ours[..., 4:, 4:], ref[..., 4:, 4:], rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert not torch.allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_unfolded_backbone_matches_torchvision_exactly():
    """normalize=False: the plain key mapping; both networks get the same normalised input."""
    net = torchvision_net("x1_0", seed=3)
    model = DetectionModel(CFG_DIR / "yolov5s_shufflenetv2_x1_0.yaml").eval()
    load_shufflenet_backbone(model, net.state_dict(), normalize=False)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert_features_equal(our_features(model, x), torchvision_features(net, x))


def test_depthwise_biases_zeroed_and_file_formats(tmp_path):
    """A .pth file (plain, {'state_dict': ...}, {'model': ...}, 'module.' prefixed) loads; dw biases become 0."""
    sd = torchvision_net("x0_5").state_dict()
    variants = {"plain": sd, "wrapped": {"state_dict": sd, "epoch": 3},
                "model": {"model": {f"module.{k}": v for k, v in sd.items()}}}
    for name, obj in variants.items():
        f = tmp_path / f"{name}.pth"
        torch.save(obj, f)
        model = DetectionModel(CFG_DIR / "yolov5n_shufflenetv2_x0_5.yaml")
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.5)
        assert load_shufflenet_backbone(model, f) == len(sd) - 8
        sdm = model.state_dict()
        assert float(sdm["model.1.branch1.0.bias"].abs().sum()) == 0
        assert float(sdm["model.2.0.branch2.3.bias"].abs().sum()) == 0
        assert float(sdm["model.6.2.branch2.3.bias"].abs().sum()) == 0
        assert torch.equal(sdm["model.4.6.branch2.5.weight"], sd["stage3.7.branch2.5.weight"])
        assert float(sdm["model.7.cv1.conv.weight"].mean()) == 0.5  # SPPF and head untouched


def test_width_mismatch_is_explained():
    sd = torchvision_net("x1_0").state_dict()
    with pytest.raises(ValueError, match=r"stage2 has 116 channels in the file but 120 in yolov5_shuffle.yaml: use a "
                                         r"config with torchvision's widths, e.g. .*yolov5s_shufflenetv2_x1_0.yaml"):
        load_shufflenet_backbone(DetectionModel("yolov5_shuffle.yaml"), sd)
    with pytest.raises(ValueError, match=r"stage2 has 116 channels in the file but 48 in "
                                         r"yolov5n_shufflenetv2_x0_5.yaml"):
        load_shufflenet_backbone(DetectionModel(CFG_DIR / "yolov5n_shufflenetv2_x0_5.yaml"), sd)
    with pytest.raises(ValueError, match=r"layer 0 is Conv, not Conv_maxpool"):
        load_shufflenet_backbone(DetectionModel("yolov5n.yaml"), sd)


def test_depth_mismatch_is_explained():
    sd = torchvision_net("x1_0").state_dict()
    cfg = DetectionModel(CFG_DIR / "yolov5n_shufflenetv2_x1_0.yaml").yaml
    cfg["depth_multiple"] = 0.33
    with pytest.raises(ValueError, match=r"stage2 has 4 units in the file but 2 in"):
        load_shufflenet_backbone(DetectionModel(cfg), sd)


def test_not_a_shufflenet_file_is_explained(tmp_path):
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    with pytest.raises(ValueError, match=r"resnet18.pth: not a torchvision ShuffleNetV2 state_dict: no conv1.0.weight"):
        read_state_dict(resnet)
    pickled = tmp_path / "yolo.pt"
    torch.save({"model": DetectionModel(CFG_DIR / "yolov5n_shufflenetv2_x0_5.yaml")}, pickled)
    with pytest.raises(ValueError, match=r"yolo.pt: not a plain state_dict .* a YOLOv5 checkpoint goes to --weights"):
        read_state_dict(pickled)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes.pth: not a plain state_dict"):
        read_state_dict(text)
    with pytest.raises(FileNotFoundError, match=r"missing.pth: backbone weights file not found"):
        read_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize("cfg", sorted(p.name for p in CFG_DIR.glob("*.yaml")))
def test_configs_build_with_torchvision_widths(cfg):
    model = DetectionModel(CFG_DIR / cfg)
    assert model.stride.tolist() == [8, 16, 32]
    assert model.model[0].conv[0].out_channels == 24
    size = "_".join(Path(cfg).stem.split("_")[-2:])  # yolov5n_shufflenetv2_x0_5 -> x0_5
    widths = [2 * model.model[i].branch2[5].out_channels for i in (1, 3, 5)]
    assert widths == WIDTHS[size]
    assert [len(model.model[i]) for i in (2, 4, 6)] == [3, 7, 3]
    assert pretrained_backbone_layers(model) == 7  # --freeze 7 freezes exactly the pretrained layers


def test_no_pretrained_layers_in_a_darknet_model():
    assert pretrained_backbone_layers(DetectionModel("yolov5n.yaml")) == 0
