"""VGG-small for CIFAR-10 in three flavours, built from one config dict.

Public names: ARCHS, default_config, build_model, model_from_checkpoint,
init_from_checkpoint, BinaryConv2d, RPReLU, clip_latent_weights.

Topology (all three): six 3x3 convs of widths 128-128-256-256-512-512, a 2x2
max-pool after every second conv, then one linear classifier on the flattened
512x4x4 map.  The first conv and the classifier are always real-valued.

* ``fp32``      -- conv -> BN -> ReLU everywhere (the teacher and FP32 reference).
* ``xnor``      -- XNOR-Net: convs 1-5 binary, alpha = mean|W| per output
  channel, conv -> BN -> (pool); no shortcut, no ReLU between binary layers.
* ``birealnet`` -- Bi-Real: every binary conv has a real-valued shortcut
  (``y = BN(conv(sign(x - t))) + x``; channel doubling repeats the input
  channels), learnable per-channel alpha and sign thresholds ``t``, and an
  RPReLU on the real path.

Binary convs pad their *binarised* input with +1 (bit 0): the runtime's
padding convention, free in a bit-packed kernel (docs/conventions.md).

Classifier normalisation.  Without it the classifier's 8192 inputs are large
and positive, and a step at the conv layers' learning rate moves the logits
by ~lr * |x|^2 (why the old recipe needed a 10-100x smaller classifier
learning rate).  ``classifier_norm="bn"`` puts a BatchNorm1d (no affine) on
the flattened features: zero mean, unit variance, but |x|^2 is still the
feature count.  ``"bn-scaled"`` multiplies that by the fixed
``8 / sqrt(features)``, so |x|^2 = 64 per image whatever the width: an SGD
step moves a logit by ~64 lr / batch per image.  Export folds either into the
dense weights, so the runtime is unchanged.

The KD teacher ``fastres`` lives in fastres.py, the Bi-Real ResNet-18 in
resnet.py and ReActNet-A in reactnet.py; build_model picks by ``config["arch"]``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .fastres import FastRes, fastres_config
from .nn import BINARY_LAYERS, BinaryConv2d, RPReLU
from .reactnet import ReActNet, reactnet_config
from .resnet import BiRealResNet, birealresnet_config

__all__ = ["ARCHS", "default_config", "build_model", "model_from_checkpoint", "init_from_checkpoint",
           "BinaryConv2d", "RPReLU", "clip_latent_weights"]

ARCHS = ("fp32", "xnor", "birealnet", "birealresnet18", "reactnet", "fastres")
CLASSIFIER_NORMS = ("none", "bn", "bn-scaled")
ARCH_ALIASES = {"baseline": "fp32"}

_BASE = {"widths": [128, 128, 256, 256, 512, 512], "pool_after": [1, 3, 5],
         "in_channels": 3, "image_size": 32, "num_classes": 10, "classifier_norm": "none"}
_BINARY = {
    "xnor": {"input_quantizer": "ste_sign", "scale": "mean", "learn_threshold": False,
             "shortcut": False, "rprelu": False},
    "birealnet": {"input_quantizer": "approx_sign", "scale": "learned", "learn_threshold": True,
                  "shortcut": True, "rprelu": True},
}


def default_config(arch: str, num_classes: int = 10) -> dict:
    arch = ARCH_ALIASES.get(arch, arch)
    if arch not in ARCHS:
        raise ValueError(f"unknown model {arch!r}; expected one of {', '.join(ARCHS)} (or 'baseline')")
    if arch == "fastres":
        return fastres_config(num_classes)
    if arch == "birealresnet18":
        return birealresnet_config(num_classes)
    if arch == "reactnet":
        return reactnet_config(num_classes)
    cfg = {"arch": arch, **copy.deepcopy(_BASE), "num_classes": num_classes}
    cfg.update(copy.deepcopy(_BINARY.get(arch, {})))
    return cfg


class RealBlock(nn.Module):
    """conv3x3 -> BN -> [ReLU] -> [max-pool 2]."""

    def __init__(self, cin, cout, pool, relu):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu
        self.pool = pool

    def forward(self, x):
        x = self.bn(self.conv(x))
        if self.relu:
            x = F.relu(x)
        return F.max_pool2d(x, 2) if self.pool else x


class BinaryBlock(nn.Module):
    """BinaryConv2d -> BN -> [+ shortcut] -> [RPReLU] -> [max-pool 2]."""

    def __init__(self, cin, cout, pool, cfg):
        super().__init__()
        if cfg["shortcut"] and cout % cin:
            raise ValueError(f"shortcut needs cout a multiple of cin, got {cin}->{cout}")
        self.conv = BinaryConv2d(cin, cout, 3, padding=1, input_quantizer=cfg["input_quantizer"], scale=cfg["scale"],
                                 learn_threshold=cfg["learn_threshold"])
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = cfg["shortcut"]
        self.act = RPReLU(cout) if cfg["rprelu"] else None
        self.pool = pool

    def forward(self, x):
        y = self.bn(self.conv(x))
        if self.shortcut:
            # Channel doubling repeats the input: channel c of the shortcut is x[c % cin].
            y = y + x.repeat(1, y.shape[1] // x.shape[1], 1, 1)
        if self.act is not None:
            y = self.act(y)
        return F.max_pool2d(y, 2) if self.pool else y


class VGGSmall(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.config = copy.deepcopy(cfg)
        widths, pools = cfg["widths"], set(cfg["pool_after"])
        binary = cfg["arch"] != "fp32"
        blocks, cin = [], cfg["in_channels"]
        for i, cout in enumerate(widths):
            if i == 0 or not binary:
                blocks.append(RealBlock(cin, cout, i in pools, relu=not binary))
            else:
                blocks.append(BinaryBlock(cin, cout, i in pools, cfg))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        if cfg["image_size"] % (2 ** len(pools)):
            raise ValueError(f"VGG-small halves the image {len(pools)} times: the image size must be a multiple "
                             f"of {2 ** len(pools)}, got {cfg['image_size']}")
        side = cfg["image_size"] // (2 ** len(pools))
        norm = cfg.get("classifier_norm", "none")
        if norm not in CLASSIFIER_NORMS:
            raise ValueError(f"classifier_norm must be one of {', '.join(CLASSIFIER_NORMS)}, got {norm!r}")
        features = cin * side * side
        self.classifier_norm = nn.BatchNorm1d(features, affine=False) if norm != "none" else None
        self.classifier_scale = 8.0 / features ** 0.5 if norm == "bn-scaled" else 1.0
        self.classifier = nn.Linear(cin * side * side, cfg["num_classes"])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        x = torch.flatten(x, 1)
        if self.classifier_norm is not None:
            x = self.classifier_norm(x)
            if self.classifier_scale != 1.0:
                x = x * self.classifier_scale
        return self.classifier(x)


def build_model(cfg: dict) -> nn.Module:
    if cfg.get("arch") == "custom":  # a network trained with fit(): its class is the user's
        raise ValueError(f"this checkpoint holds your own network ({cfg.get('model_class', '?')}), not a built-in "
                         f"one: build it, load_state_dict(checkpoint['model']) and export it with export_model")
    if cfg.get("arch") == "fastres":
        return FastRes(cfg)
    if cfg.get("arch") == "birealresnet18":
        return BiRealResNet(cfg)
    if cfg.get("arch") == "reactnet":
        return ReActNet(cfg)
    return VGGSmall(cfg)


@torch.no_grad()
def init_from_checkpoint(model: nn.Module, state: dict) -> list[str]:
    """Copy every tensor of ``state`` whose name and shape match into ``model``.

    Used to start a binary VGG-small from a trained fp32 one: the convs,
    the first layer, the batch-norm affine parameters and the classifier have
    the same names and shapes.  Batch-norm running statistics of binary
    blocks are skipped (binary conv outputs have another scale; train mode
    re-estimates them).  Returns the names copied.
    """
    own = model.state_dict()
    binary_bn = {n.rsplit(".conv", 1)[0] + ".bn." for n, m in model.named_modules() if isinstance(m, BinaryConv2d)}
    copied = []
    for name, t in state.items():
        if name not in own or own[name].shape != t.shape or not t.is_floating_point():
            continue
        if any(name.startswith(p) for p in binary_bn) and name.rsplit(".", 1)[-1] in ("running_mean", "running_var"):
            continue
        own[name].copy_(t.float())
        copied.append(name)
    for m in model.modules():  # latent weights live in [-1, 1]; a learned alpha restarts at mean|W|
        if isinstance(m, BinaryConv2d):
            m.weight.clamp_(-1.0, 1.0)
            if m.scale_mode == "learned":
                m.alpha.copy_(m.weight.abs().mean(dim=(1, 2, 3)))
    return copied


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """The checkpoint's network in FP32 and eval mode (weights may be stored in half precision)."""
    model = build_model(ckpt["config"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()})
    return model.eval()


@torch.no_grad()
def clip_latent_weights(model: nn.Module, bound: float = 1.0) -> None:
    """Keep the latent weights of binary convs and binary linears in [-bound, bound] (after each step)."""
    for m in model.modules():
        if isinstance(m, BINARY_LAYERS):
            m.weight.clamp_(-bound, bound)
