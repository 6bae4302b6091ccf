"""Issue 19, acceptance 1: ResNet-style BNNs export and run in bnnlite as in PyTorch.

* Bi-Real ResNet-18 (CIFAR stem) trained one epoch by ``bnnlite-train`` on a small subset
  (reduced widths: the full ones train too slowly for CI) and exported by ``bnnlite-export``;
  the full-width one with random weights through ``export_checkpoint``;
* a ResNet-style network defined from the layers and standard modules
  (``_models.merge_net_class``: avgpool2d, global_avgpool, add, concat), random weights and
  BN statistics.

Each: the same class as PyTorch eval on every image, every logit within 1e-3 on >= 99.9%
of them, and the binary parts bit-exact: the packed input bits of every binary conv equal
``x < threshold`` of PyTorch's own input to that layer (so every float tensor before them
is PyTorch's too, to the bit).  What remains is the classifier's BLAS summation order.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402
from torch import nn  # noqa: E402

import bnnlite  # noqa: E402
from bnnlite.bitpack import pack_bits  # noqa: E402
from bnnlite.bundle import read_bundle  # noqa: E402
from bnnlite.train import cli as train_cli  # noqa: E402
from bnnlite.train import export as export_cli  # noqa: E402
from bnnlite.train.data import normalize  # noqa: E402
from bnnlite.train.export import export_checkpoint, export_model  # noqa: E402
from bnnlite.train.nn import BinaryConv2d  # noqa: E402
from bnnlite.train.resnet import BiRealResNet, birealresnet_config  # noqa: E402

import _models  # noqa: E402

SMALL_WIDTHS = [16, 32, 48, 64]


@pytest.fixture(autouse=True)
def _one_thread(torch1):
    pass


def _images(n, size, seed=5):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _assert_agrees(model, path, images, mean, std):
    """Classes, logits and the binary convs' input bits of bundle ``path`` vs PyTorch eval."""
    m = bnnlite.Model.load(path)
    got = m.logits(images)
    with torch.no_grad():
        ref = np.concatenate([model(normalize(torch.from_numpy(images[i:i + 100]), mean, std)).numpy()
                              for i in range(0, len(images), 100)])
    diff = np.abs(ref - got).max(axis=1)
    assert np.mean(ref.argmax(1) == got.argmax(1)) == 1.0
    assert np.mean(diff <= 1e-3) >= 0.999, diff.max()
    # Bits: PyTorch's input to each binary conv, thresholded, against the runtime's packed tensor.
    calls = []
    hooks = [mod.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp[0])))
             for mod in model.modules() if isinstance(mod, (nn.Conv2d, BinaryConv2d))]
    few = images[:50]
    with torch.no_grad():
        model(normalize(torch.from_numpy(few), mean, std))
    for h in hooks:
        h.remove()
    buf = m.graph.input_buffer(len(few))
    m._normalize_into(few, buf)
    m.graph.run(buf, 1)
    tensors = m.graph.plan(len(few)).tensors
    ops = {r.name: r for r in read_bundle(path).ops}
    checked = 0
    for i, (mod, x) in enumerate(calls):  # layer i of the trace is bundle op bconv{i}
        if isinstance(mod, BinaryConv2d):
            t = 0.0 if mod.threshold is None else mod.threshold.detach().numpy()
            want = pack_bits(x.permute(0, 2, 3, 1).numpy(), t)
            assert np.array_equal(tensors[ops[f"bconv{i}"].inputs[0]], want), f"input bits of bconv{i}"
            checked += 1
    assert checked == sum(isinstance(mod, BinaryConv2d) for mod in model.modules())
    return ref, got


def _train_one_epoch_and_export(arch, overrides, subset, data_dir, tmp_path):
    """``bnnlite-train --model arch`` for one epoch on ``subset`` images, then
    ``bnnlite-export``: (the trained model, its bundle, its checkpoint)."""
    out = tmp_path / "run"
    r = CliRunner().invoke(train_cli.main, [
        "--model", arch, "--data", str(data_dir), "--out", str(out), "--epochs", "1",
        "--subset", str(subset), "--val-size", "32", "--batch-size", "32", "--no-compile", "--no-bf16",
        "--no-progress", "--threads", "1", "--model-overrides", json.dumps(overrides)])
    assert r.exit_code == 0, r.output
    ckpt = out / "model.pth"
    bundle = tmp_path / "model.h5"
    r = CliRunner().invoke(export_cli.main, [str(ckpt), str(bundle), "--probe", "64"])
    assert r.exit_code == 0, r.output
    from bnnlite.train.checkpoint import load_checkpoint
    from bnnlite.train.models import model_from_checkpoint
    c = load_checkpoint(ckpt)
    assert c["config"]["arch"] == arch
    return model_from_checkpoint(c), bundle, c


def test_birealresnet18_trained_one_epoch_exports_and_runs(data_dir, tmp_path):
    model, bundle, c = _train_one_epoch_and_export("birealresnet18", {"widths": SMALL_WIDTHS}, 160,
                                                   data_dir, tmp_path)
    ops = [o.op for o in read_bundle(bundle).ops]
    assert ops.count("avgpool2d") == 3 and ops.count("global_avgpool") == 1 and ops.count("bconv2d") == 16
    _assert_agrees(model, bundle, _images(1000, 32), c["normalization"]["mean"], c["normalization"]["std"])


def test_full_width_birealresnet18_random_weights(tmp_path):
    model = _models.randomize(BiRealResNet(birealresnet_config(_models.NUM_CLASSES)), seed=2)
    with torch.no_grad():
        model.classifier.weight.mul_(0.5)
    ckpt = _models.write_checkpoint(model, tmp_path / "r18.pt")
    export_checkpoint(ckpt, tmp_path / "r18.h5", probe=32, log=lambda *a: None)
    _assert_agrees(model, tmp_path / "r18.h5", _images(200, 32), _models.MEAN, _models.STD)


def test_a_user_defined_resnet_style_network_runs_as_in_pytorch(tmp_path):
    model = _models.make_mergenet(seed=4)
    path = tmp_path / "merge.h5"
    export_model(model, path, mean=_models.MEAN, std=_models.STD, probe=32, log=lambda *a: None)
    ops = [o.op for o in read_bundle(path).ops]
    for op in ("avgpool2d", "global_avgpool", "add", "concat"):
        assert op in ops, op
    _assert_agrees(model, path, _images(1000, _models.IMAGE_SIZE), _models.MEAN, _models.STD)


def test_the_onnx_translation_and_the_pytorch_mirror_of_the_new_ops(tmp_path):
    """ONNX (onnxruntime) of the ResNet-style bundle, and the bench's PyTorch mirror of a
    real-valued one with the same merges and pools, give bnnlite's logits."""
    from bnnlite.bench.engines import torch_from_bundle
    images = _images(16, _models.IMAGE_SIZE)
    x = (images / np.float32(255) - np.float32(_models.MEAN)) / np.float32(_models.STD)
    x = np.ascontiguousarray(x.astype(np.float32).transpose(0, 3, 1, 2))
    path = _models.write_plain_bundle(_models.make_mergenet(seed=6), tmp_path / "merge.h5")
    want = bnnlite.Model.load(path).logits(images)
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from bnnlite.onnx_export import bundle_to_onnx
    bundle_to_onnx(path, tmp_path / "merge.onnx")
    sess = ort.InferenceSession(str(tmp_path / "merge.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)

    class RealNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = {"arch": "realnet", "image_size": _models.IMAGE_SIZE, "in_channels": 3}
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
            self.fc = nn.Linear(16, _models.NUM_CLASSES)

        def forward(self, x):
            a, b = self.a(x), self.b(x)
            y = nn.functional.avg_pool2d(torch.cat([a + b, b], 1), 2)
            return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))

    model = _models.randomize(RealNet(), seed=7)
    path = _models.write_plain_bundle(model, tmp_path / "real.h5")
    with torch.no_grad():
        got = torch_from_bundle(read_bundle(path))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, bnnlite.Model.load(path).logits(images), rtol=1e-5, atol=1e-5)
