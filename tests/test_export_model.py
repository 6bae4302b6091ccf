"""export_model: any network of torch.nn and bnnlite.train.nn layers, traced with torch.fx,
exported, and run by bnnlite as PyTorch runs it; what has no bundle form is named."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bnnlite  # noqa: E402
from bnnlite.train.export import export_model  # noqa: E402
from bnnlite.train.lower import ExportError, lower  # noqa: E402
from bnnlite.train.nn import BinaryConv2d, BinaryLinear, RPReLU  # noqa: E402

from _models import randomize  # noqa: E402

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


class UserNet(nn.Module):
    """What a user might write: a real stem, binary convs with thresholds, a Bi-Real shortcut
    in one block and a channel-doubling one in another, a PReLU, an XNOR pair whose middle
    tensor is only ever binarised, and a normalised classifier."""

    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.b1 = BinaryConv2d(24, 24, 3, padding=1, scale="learned", learn_threshold=True,
                               input_quantizer="approx_sign")
        self.bn1 = nn.BatchNorm2d(24)
        self.act1 = RPReLU(24)
        self.b2 = BinaryConv2d(24, 48, 3, padding=1, scale="none", learn_threshold=True)
        self.bn2 = nn.BatchNorm2d(48)
        self.act2 = nn.PReLU(48)
        self.x1 = BinaryConv2d(48, 40, 3, padding=1)   # XNOR: output only binarised again
        self.xbn1 = nn.BatchNorm2d(40)
        self.x2 = BinaryConv2d(40, 40, 3, padding=1)
        self.xbn2 = nn.BatchNorm2d(40)
        self.drop = nn.Dropout(0.2)
        self.norm = nn.BatchNorm1d(40 * 4 * 4, affine=False)
        self.fc = nn.Linear(40 * 4 * 4, classes)

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 2)                       # 8x8
        x = self.act1(self.bn1(self.b1(x)) + x)
        x = self.act2(self.bn2(self.b2(x)) + x.repeat(1, 2, 1, 1))
        x = nn.functional.max_pool2d(self.xbn1(self.x1(x)), 2)  # 4x4, bits only
        x = self.drop(self.xbn2(self.x2(x)))
        return self.fc(self.norm(torch.flatten(x, 1)) * 0.5)


def _logits(model, images):
    from bnnlite.train.data import normalize
    with torch.no_grad():
        return model(normalize(torch.from_numpy(images), MEAN, STD)).numpy()


def test_a_user_defined_network_runs_as_in_pytorch(tmp_path):
    model = randomize(UserNet(), seed=3)
    out = tmp_path / "user.h5"
    metrics = export_model(model, out, mean=MEAN, std=STD, class_names=list("abcde"), input_size=16, probe=32,
                           log=lambda *a: None)
    assert metrics["export_agreement"] == 1.0
    ops = [o.op for o in lower(model, (16, 16, 3))]
    assert ops.count("bconv2d") == 4 and "bmaxpool2d" in ops  # the XNOR pair went through bits
    images = np.random.default_rng(0).integers(0, 256, (1000, 16, 16, 3), dtype=np.uint8)
    ref = _logits(model, images)
    m = bnnlite.Model.load(out)
    got = m.logits(images)
    assert m.class_names == list("abcde")
    assert np.mean(ref.argmax(1) == got.argmax(1)) == 1.0
    assert np.mean(np.abs(ref - got).max(1) <= 1e-3) >= 0.999


@pytest.mark.parametrize("layer, name", [
    (nn.GELU(), "GELU"),
    (nn.Sigmoid(), "Sigmoid"),
    (nn.Upsample(scale_factor=2), "Upsample"),
])
def test_a_module_with_no_bundle_form_is_named(layer, name):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer, nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ExportError, match=rf"{name}.*cannot be exported"):
        lower(model.eval(), (8, 8, 3))


def test_a_function_with_no_bundle_form_is_named_with_its_line():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            return self.fc(torch.tanh(self.conv(x)).flatten(1))

    with pytest.raises(ExportError, match=r"tanh \(node tanh, test_export_model.py:\d+: .*torch.tanh"):
        lower(Net().eval(), (8, 8, 3))


def test_data_dependent_python_is_refused_clearly():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 4 * 4, 2)

        def forward(self, x):
            if x.sum() > 0:
                x = x * 2
            return self.fc(x.flatten(1))

    with pytest.raises(ExportError, match="cannot trace Net with torch.fx"):
        lower(Net().eval(), (4, 4, 3))


def test_export_model_checks_its_arguments(tmp_path):
    model = randomize(UserNet(), seed=0)
    with pytest.raises(ValueError, match="input_size is needed"):
        export_model(model, tmp_path / "a.h5", log=lambda *a: None)
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        export_model(model, tmp_path / "a.h5", input_size=(16, 16), mean=[0.5], log=lambda *a: None)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("call, match", [
    (lambda x: F.avg_pool2d(x, 3), r"avg_pool2d .*only 2x2 average pooling with stride 2 exports"),
    (lambda x: F.avg_pool2d(x, 2, ceil_mode=True), "only 2x2 average pooling"),
    (lambda x: F.avg_pool2d(x, 2, divisor_override=3), "only 2x2 average pooling"),
    (lambda x: F.adaptive_avg_pool2d(x, 2), "adaptive_avg_pool2d .*only global average pooling"),
    (lambda x: x.mean(1, keepdim=True), "Tensor.mean .*only global average pooling"),
    (lambda x: torch.add(x, x, alpha=2), "add .*only the sum of two tensors of one shape"),
    (lambda x: x + 1.0, "add .*only the sum of two tensors of one shape"),
    (lambda x: torch.cat([x, x], dim=2), "cat .*only concatenating .* along dim 1"),
])
def test_pools_and_merges_that_do_not_export_are_named(call, match):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return call(self.conv(x)).flatten(1)

    with pytest.raises(ExportError, match=match):
        lower(Net().eval(), (8, 8, 3))


def test_mean_over_the_map_is_a_global_pool():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean((-1, -2)))

    assert [o.op for o in lower(Net().eval(), (8, 8, 3))] == ["conv2d", "global_avgpool", "flatten", "dense"]


def test_data_without_a_test_split_probes_random_images(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    model = randomize(UserNet(classes=2), seed=1)
    lines = []
    metrics = export_model(model, tmp_path / "m.h5", input_size=16, data=tmp_path / "imgs", probe=8,
                           log=lines.append)
    assert metrics["export_probe_images"] == 8 and "pytorch_test_acc" not in metrics
    assert any("has no test split" in line for line in lines)


class BinaryDenseNet(nn.Module):
    """Binary dense layers: one on a flattened 4x4 map (an HxW binary conv in the bundle), one
    on the vector it gives (a 1x1 conv of a 1x1 map), each with BatchNorm1d and an activation."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.MaxPool2d(2))
        self.d1 = BinaryLinear(16 * 4 * 4, 70, scale="learned")
        self.bn1 = nn.BatchNorm1d(70)
        self.act1 = nn.PReLU(70)
        self.d2 = BinaryLinear(70, 40, learn_threshold=True)
        self.bn2 = nn.BatchNorm1d(40)
        self.act2 = RPReLU(40)
        self.fc = nn.Linear(40, 3)

    def forward(self, x):
        x = torch.flatten(self.stem(x), 1)          # 8x8 -> 4x4 map, 256 features
        x = self.act1(self.bn1(self.d1(x)))
        return self.fc(self.act2(self.bn2(self.d2(x))))


def test_binary_dense_layers_run_as_in_pytorch(tmp_path):
    model = randomize(BinaryDenseNet(), seed=5)
    out = tmp_path / "bd.h5"
    export_model(model, out, mean=MEAN, std=STD, input_size=8, probe=16, log=lambda *a: None)
    ops = lower(model, (8, 8, 3))
    bconvs = [o for o in ops if o.op == "bconv2d"]
    assert [(o.attrs["kh"], o.attrs["cin"], o.attrs["cout"]) for o in bconvs] == [(4, 16, 70), (1, 70, 40)]
    images = np.random.default_rng(1).integers(0, 256, (1000, 8, 8, 3), dtype=np.uint8)
    ref, got = _logits(model, images), bnnlite.Model.load(out).logits(images)
    assert np.mean(ref.argmax(1) == got.argmax(1)) == 1.0
    assert np.mean(np.abs(ref - got).max(1) <= 1e-3) >= 0.999


def test_binary_dense_with_per_pixel_thresholds_is_refused():
    model = randomize(BinaryDenseNet(), seed=5)
    model.d1 = BinaryLinear(16 * 4 * 4, 70, learn_threshold=True)
    with torch.no_grad():
        model.d1.threshold.copy_(torch.arange(256.0) / 256)
    with pytest.raises(ExportError, match="thresholds differ within a channel"):
        lower(model.eval(), (8, 8, 3))
