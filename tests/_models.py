"""Tiny VGG-small models with random, non-trivial weights for the runtime tests.

Shared by the test modules through the fixtures in ``conftest.py``.  Only
``make_model`` / ``write_checkpoint`` / ``export`` import torch (lazily), so a
module that only reads bundles stays torch-free.

The configs are chosen to exercise the awkward paths of the runtime:

* channel counts that are not multiples of the word width, some above it
  (packing tails, multi-word inner loops): 8, 20, 24, 70, 72, 130, 144;
* ``pool_after`` [1, 3, 5] on 16x16 images: 2x2 maps at the classifier;
* BN with random running stats and gamma of random sign, so some folded BN
  multipliers are negative (XNOR-Net's weight-flip path of the bits output);
* Bi-Real: random sign thresholds, alphas and RPReLU parameters, shortcuts
  with channel tripling/doubling (24 -> 72, 72 -> 144).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ARCHS = ("fp32", "xnor", "birealnet")
FUZZ_ARCHS = ARCHS + ("mergenet",)  # + a ResNet-style net (pools, add, concat): the fuzzers' bases
IMAGE_SIZE = 16
NUM_CLASSES = 7
WIDTHS = {
    "fp32": [8, 20, 70, 70, 130, 72],
    "xnor": [8, 20, 70, 70, 130, 72],
    # Bi-Real shortcuts need cout to be a multiple of cin.
    "birealnet": [8, 24, 24, 72, 72, 144],
}
MEAN = [0.49, 0.48, 0.45]
STD = [0.25, 0.24, 0.26]
CLASS_NAMES = [f"class{i}" for i in range(NUM_CLASSES)]


def tiny_config(arch: str) -> dict:
    from bnnlite.train.models import default_config
    cfg = default_config(arch, num_classes=NUM_CLASSES)
    cfg.update(widths=list(WIDTHS[arch]), pool_after=[1, 3, 5], image_size=IMAGE_SIZE)
    return cfg


def make_model(arch: str, seed: int = 0):
    """A VGGSmall in eval mode with random weights, BN stats and binary parameters
    (arch "mergenet": ``make_mergenet``)."""
    import torch
    if arch == "mergenet":
        return make_mergenet(seed)
    from bnnlite.train.models import build_model
    torch.manual_seed(seed)  # the classifier keeps its seeded default init
    model = randomize(build_model(tiny_config(arch)), seed, linear=False)
    with torch.no_grad():  # keep the logits O(1) so an absolute tolerance is meaningful
        model.classifier.weight.mul_(0.5)
    return model


def randomize(model, seed: int = 0, linear: bool = True):
    """Random, non-trivial parameters and BN statistics for any network built from torch.nn
    and bnnlite.train.nn layers (Linear layers keep theirs with ``linear=False``); returns it
    in eval mode."""
    import torch
    from bnnlite.train.nn import BinaryConv2d, BinaryLinear, RPReLU

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.5 * randn(c))
                m.running_var.copy_(0.5 + 1.5 * rand(c))
                sign = torch.where(rand(c) < 0.3, -1.0, 1.0)  # ~30% negative multipliers
                m.weight.copy_(sign * (0.5 + rand(c)))
                m.bias.copy_(0.3 * randn(c))
            elif isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(0.5 * randn(m.num_features))
                m.running_var.copy_(0.5 + 1.5 * rand(m.num_features))
            elif isinstance(m, torch.nn.Conv2d) or (linear and isinstance(m, torch.nn.Linear)):
                # He init: the signal neither dies nor explodes through the real layers.
                fan_in = m.weight[0].numel()
                m.weight.copy_(randn(*m.weight.shape) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * randn(*m.bias.shape))
            elif isinstance(m, (BinaryConv2d, BinaryLinear)):
                m.weight.copy_(2 * rand(*m.weight.shape) - 1)
                if m.scale_mode == "learned":
                    m.alpha.copy_(0.05 + 0.2 * rand(m.alpha.shape[0]))
                if m.threshold is not None:
                    m.threshold.copy_(0.3 * randn(m.threshold.shape[0]))
            elif isinstance(m, RPReLU):
                c = m.gamma.shape[0]
                m.gamma.copy_(0.2 * randn(c))
                m.beta.copy_(0.5 * randn(c))   # negative slopes too
                m.zeta.copy_(0.2 * randn(c))
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(0.5 * randn(*m.weight.shape))
    return model.eval()


def write_checkpoint(model, path) -> Path:
    """Save ``model`` in the bnnlite checkpoint format (train/checkpoint.py)."""
    import torch
    from bnnlite.train.checkpoint import FORMAT, FORMAT_VERSION
    path = Path(path)
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": dict(model.config),
                "normalization": {"mean": list(MEAN), "std": list(STD)},
                "class_names": list(CLASS_NAMES), "metrics": {"test_acc": 0.5, "epoch": 3},
                "model": model.state_dict()}, path)
    return path


def export(model, out_dir, name) -> Path:
    """Checkpoint + ``export_checkpoint`` (which refuses a bundle that disagrees with PyTorch)."""
    from bnnlite.train.export import export_checkpoint
    out_dir = Path(out_dir)
    ckpt = write_checkpoint(model, out_dir / f"{name}.pt")
    out = out_dir / f"{name}.h5"
    export_checkpoint(ckpt, out, probe=64, log=lambda *a: None)
    return out


def random_images(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def torch_logits(model, images: np.ndarray) -> np.ndarray:
    """PyTorch eval-mode FP32 logits of uint8 NHWC images, normalised as the bundle does."""
    import torch
    from bnnlite.train.data import normalize
    with torch.no_grad():
        return model(normalize(torch.from_numpy(images), MEAN, STD)).float().numpy()


def write_plain_bundle(model, path) -> Path:
    """``lower`` + ``write_bundle`` with a fixed header: byte-for-byte the same file
    on every machine (no measured metrics in it), so seeded byte mutations are reproducible."""
    from bnnlite.bundle import write_bundle
    from bnnlite.train.lower import lower
    cfg = model.config
    header = {"producer": "bnnlite tests", "architecture": cfg["arch"],
              "input_shape": [cfg["image_size"], cfg["image_size"], cfg["in_channels"]], "input_layout": "NHWC",
              "normalization_mean": MEAN, "normalization_std": STD, "class_names": CLASS_NAMES,
              "config": cfg, "metrics": {"note": "test bundle"}}
    write_bundle(path, header, lower(model, header["input_shape"]))
    return Path(path)


def make_mergenet(seed: int = 0, classes: int = NUM_CLASSES):
    """A ResNet-style network as a user would define it (``merge_net_class``), random weights."""
    import torch
    torch.manual_seed(seed)
    return randomize(merge_net_class()(classes), seed)


def merge_net_class():
    """The class of a small ResNet-style BNN written from bnnlite.train.nn layers and standard
    modules: every op kind of such networks (avgpool2d, global_avgpool, add, concat, stride-2
    and 1x1 binary convs, a Bi-Real downsampling shortcut, two binary branches summed)."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from bnnlite.train.nn import BinaryConv2d, RPReLU

    class MergeNet(nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.config = {"arch": "mergenet", "image_size": IMAGE_SIZE, "in_channels": 3, "num_classes": classes}
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
            self.b1 = BinaryConv2d(16, 16, 3, padding=1, learn_threshold=True, input_quantizer="approx_sign")
            self.bn1, self.act1 = nn.BatchNorm2d(16), RPReLU(16)
            self.b2 = BinaryConv2d(16, 32, 3, stride=2, padding=1, scale="learned")
            self.bn2 = nn.BatchNorm2d(32)
            self.down = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
            self.p, self.pbn = BinaryConv2d(32, 24, 1), nn.BatchNorm2d(24)            # 1x1 binary
            self.q, self.qbn = BinaryConv2d(32, 24, 3, padding=1), nn.BatchNorm2d(24)
            self.r, self.rbn = nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32)    # real branch
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(56, classes)

        def forward(self, x):
            x = self.stem(x)                                           # 16x16x16
            x = self.act1(self.bn1(self.b1(x)) + x)
            x = self.bn2(self.b2(x)) + self.down(x)                    # 8x8x32, stride 2
            y = self.pbn(self.p(x)) + self.qbn(self.q(x))              # two binary branches
            z = F.relu(self.rbn(self.r(x))) + x                        # a standalone add
            v = F.avg_pool2d(torch.cat([y, z], dim=1), 2)              # 4x4x56
            return self.fc(torch.flatten(self.gap(v), 1) + v.mean((2, 3)))

    return MergeNet
