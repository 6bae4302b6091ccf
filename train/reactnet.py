"""ReActNet-A (Liu et al. 2020, https://arxiv.org/abs/2003.03488), built from bnnlite.train.nn.

Public names: ReActNet, ReActBlock, reactnet_config.

ReActNet binarises MobileNetV1: each depthwise-separable block becomes a
binary 3x3 conv followed by binary 1x1 (pointwise) convs, every binary conv
with its own real-valued shortcut.  One block of stride ``s``, ``cin`` ->
``cout`` channels::

    out1 = act1(BN(BinaryConv2d 3x3, stride s, cin->cin)(x) + shortcut(x))
    out  = act2(BN(BinaryConv2d 1x1, cin->cin)(out1) + out1)              if cout == cin
    out  = concat(act2a(BN(BinaryConv2d 1x1, cin->cin)(out1) + out1),
                  act2b(BN(BinaryConv2d 1x1, cin->cin)(out1) + out1))     if cout == 2 cin

``shortcut`` is the identity, or where the block halves the map a 2x2 average
pool (stride 2): no real conv anywhere in the shortcuts.  A block that doubles
the width has ReActNet's two pointwise convs, their outputs concatenated.
``act`` is RPReLU.  ReActNet puts one RPReLU on the concatenation; an RPReLU
is per channel, so over a concat it equals per-branch RPReLUs of the two
halves, which is how it is written here: each one then fuses into its conv's
epilogue at export (train/lower.py), as does each BN and residual add, so
every binary conv, 1x1 ones included, is a single ``bconv2d`` op.

The binary convs binarise their input with a learnable per-channel threshold
(``learn_threshold``: ReActNet's RSign) and the ApproxSign pseudo-gradient;
their weight scale is ``"none"``, BN follows (nn.py's docstring says why).
ReActNet's two pointwise convs share one RSign; here each has its own
threshold (a superset; the export then packs the sign bits of ``out1`` once
per distinct threshold).

Config: ``stem_width`` and ``blocks``, a list of ``[cout, stride]`` (each
``cout`` equal to or twice the block's input width, stride 1 or 2).  The
default is a CIFAR-sized ReActNet-A: MobileNetV1's block sequence up to
width 512 with two 512 blocks (8 blocks: 8 binary 3x3 convs, 12 binary 1x1
convs).  ImageNet's ReActNet-A is ``stem="imagenet"``, ``image_size=224``,
``blocks=IMAGENET_BLOCKS``.  Stem: ``"cifar"`` = 3x3 conv stride 1 + BN
(32x32 inputs), ``"imagenet"`` = 3x3 conv stride 2 + BN (ReActNet's).  Head:
global average pool, linear.  Stem conv and classifier are real-valued, as
usual for BNNs.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .nn import BinaryConv2d, RPReLU

__all__ = ["ReActNet", "ReActBlock", "reactnet_config", "IMAGENET_BLOCKS"]

CIFAR_BLOCKS = [[64, 1], [128, 2], [128, 1], [256, 2], [256, 1], [512, 2], [512, 1], [512, 1]]
# ReActNet-A on ImageNet (MobileNetV1's widths and strides), after a 32-wide stride-2 stem.
IMAGENET_BLOCKS = [[64, 1], [128, 2], [128, 1], [256, 2], [256, 1], [512, 2]] + [[512, 1]] * 5 + \
    [[1024, 2], [1024, 1]]

_DEFAULT = {"arch": "reactnet", "stem": "cifar", "stem_width": 32, "blocks": CIFAR_BLOCKS,
            "in_channels": 3, "image_size": 32, "num_classes": 10, "input_quantizer": "approx_sign",
            "scale": "none", "learn_threshold": True}


def reactnet_config(num_classes: int = 10) -> dict:
    return {**copy.deepcopy(_DEFAULT), "num_classes": num_classes}


def _bconv(cin, cout, k, stride, cfg):
    return BinaryConv2d(cin, cout, k, stride=stride, padding=k // 2, input_quantizer=cfg["input_quantizer"],
                        scale=cfg["scale"], learn_threshold=cfg["learn_threshold"])


class _PointwiseBranch(nn.Module):
    """act(BN(BinaryConv2d 1x1 (c->c)(x)) + x)."""

    def __init__(self, c, cfg):
        super().__init__()
        self.conv = _bconv(c, c, 1, 1, cfg)
        self.bn = nn.BatchNorm2d(c)
        self.act = RPReLU(c)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) + x)


class ReActBlock(nn.Module):
    """ReActNet-A block (module docstring): binary 3x3 with its shortcut, then one binary 1x1
    (cout == cin) or two concatenated ones (cout == 2 cin), each with its shortcut."""

    def __init__(self, cin, cout, stride, cfg):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"a block's stride must be 1 or 2, got {stride}")
        if cout not in (cin, 2 * cin):
            raise ValueError(f"a block's width must stay ({cin}) or double ({2 * cin}), got {cin}->{cout}")
        self.conv = _bconv(cin, cin, 3, stride, cfg)
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else None
        self.act = RPReLU(cin)
        self.pointwise = nn.ModuleList(_PointwiseBranch(cin, cfg) for _ in range(cout // cin))

    def forward(self, x):
        out1 = self.act(self.bn(self.conv(x)) + (x if self.pool is None else self.pool(x)))
        if len(self.pointwise) == 1:
            return self.pointwise[0](out1)
        return torch.cat([p(out1) for p in self.pointwise], 1)


class ReActNet(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.config = copy.deepcopy(cfg)
        w0, side = cfg["stem_width"], cfg["image_size"]
        if cfg["stem"] == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(cfg["in_channels"], w0, 3, padding=1, bias=False), nn.BatchNorm2d(w0))
        elif cfg["stem"] == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(cfg["in_channels"], w0, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(w0))
            side = (side + 1) // 2
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {cfg['stem']!r}")
        blocks, cin = [], w0
        for i, b in enumerate(cfg["blocks"]):
            if not isinstance(b, (list, tuple)) or len(b) != 2:
                raise ValueError(f"blocks[{i}] must be [cout, stride], got {b!r}")
            cout, stride = int(b[0]), int(b[1])
            if stride == 2:
                if side % 2:  # the 3x3 conv rounds an odd side up, the 2x2 average pool down
                    raise ValueError(f"blocks[{i}] halves a {side}x{side} map: the side must be even there")
                side //= 2
            blocks.append(ReActBlock(cin, cout, stride, cfg))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(cin, cfg["num_classes"])

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))
