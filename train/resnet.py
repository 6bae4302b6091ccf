"""Bi-Real ResNet-18 (Liu et al. 2018, https://arxiv.org/abs/1808.00278), built from bnnlite.train.nn.

Public names: BiRealResNet, birealresnet_config.

Every binary 3x3 conv has its own real-valued shortcut (Bi-Real's "one
shortcut per conv")::

    unit(x) = act(BN(BinaryConv2d(x)) + shortcut(x))

``shortcut`` is the identity, or where the unit halves the map / changes the
width, Bi-Real's downsampling shortcut: 2x2 average pool (stride 2), real 1x1
conv, BN.  ``act`` is RPReLU (ReActNet) or nothing (the original).  Stages of
widths 64-128-256-512 with 4 such units each (2 basic blocks of 2 convs); the
first unit of stages 2-4 has stride 2.  Stem: ``"cifar"`` = 3x3 conv stride 1
+ BN (32x32 inputs), ``"imagenet"`` = 7x7 conv stride 2 + BN + 3x3 max-pool
stride 2.  Head: global average pool, linear.  First conv and classifier
are real-valued, as usual for BNNs.
"""
from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import nn

from .nn import BinaryConv2d, RPReLU

__all__ = ["BiRealResNet", "birealresnet_config"]

_DEFAULT = {"arch": "birealresnet18", "stem": "cifar", "widths": [64, 128, 256, 512], "units": [4, 4, 4, 4],
            "in_channels": 3, "image_size": 32, "num_classes": 10, "input_quantizer": "approx_sign",
            "scale": "none", "learn_threshold": True, "rprelu": True}


def birealresnet_config(num_classes: int = 10) -> dict:
    return {**copy.deepcopy(_DEFAULT), "num_classes": num_classes}


class Downsample(nn.Module):
    """Bi-Real's shortcut where a unit changes shape: [2x2 average pool] -> real 1x1 conv -> BN."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else None
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        if self.pool is not None:
            x = self.pool(x)
        return self.bn(self.conv(x))


class BiRealUnit(nn.Module):
    """act(BN(BinaryConv2d 3x3(x)) + shortcut(x))."""

    def __init__(self, cin, cout, stride, cfg):
        super().__init__()
        self.conv = BinaryConv2d(cin, cout, 3, stride=stride, padding=1, input_quantizer=cfg["input_quantizer"],
                                 scale=cfg["scale"], learn_threshold=cfg["learn_threshold"])
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = Downsample(cin, cout, stride) if (stride != 1 or cin != cout) else None
        self.act = RPReLU(cout) if cfg["rprelu"] else None

    def forward(self, x):
        y = self.bn(self.conv(x)) + (x if self.shortcut is None else self.shortcut(x))
        return y if self.act is None else self.act(y)


class BiRealResNet(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.config = copy.deepcopy(cfg)
        w0 = cfg["widths"][0]
        if cfg["stem"] == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(cfg["in_channels"], w0, 3, padding=1, bias=False), nn.BatchNorm2d(w0))
        elif cfg["stem"] == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(cfg["in_channels"], w0, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(w0), nn.MaxPool2d(3, 2, padding=1))
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {cfg['stem']!r}")
        if len(cfg["widths"]) != len(cfg["units"]):
            raise ValueError("widths and units need one entry per stage")
        units, cin = [], w0
        for s, (w, n) in enumerate(zip(cfg["widths"], cfg["units"])):
            for i in range(n):
                units.append(BiRealUnit(cin, w, 2 if (s > 0 and i == 0) else 1, cfg))
                cin = w
        self.units = nn.Sequential(*units)
        self.classifier = nn.Linear(cin, cfg["num_classes"])

    def forward(self, x):
        x = self.units(self.stem(x))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))
