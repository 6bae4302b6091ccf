"""``fastres``: a small, fast-training CIFAR network used as the KD teacher.

Public names: FastRes, fastres_config.

Why a second network: distillation pays for the teacher's forward pass on
every student step.  VGG-small fp32 as a teacher costs as much per image as
the student's own forward pass; this network costs about a quarter of
VGG-small's multiply-accumulates (~152 M vs ~607 M per 32x32 image) and,
trained with label smoothing and a short warm-up/linear-decay SGD schedule,
is more accurate than VGG-small fp32 (docs/training.md).  It follows the
shape of the published fast CIFAR-10 recipes: few, wide 3x3 layers, a 2x2
max-pool inside every stage, GELU, global max pooling and a fixed logit
scale.

Topology (widths ``stem`` and ``widths``, defaults 32 / 64-256-256)::

    conv3x3(3 -> stem) BN GELU
    per stage w:  conv3x3 -> max-pool 2 -> BN -> GELU -> [conv3x3 -> BN -> GELU] + residual
    global max-pool -> linear (no bias) -> * logit_scale

The residual adds the stage's pooled activation to its second conv's output.
It is never exported to a bundle (the runtime has no GELU): it only teaches.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FastRes", "fastres_config"]

_DEFAULT = {"arch": "fastres", "stem": 32, "widths": [64, 256, 256], "in_channels": 3,
            "image_size": 32, "num_classes": 10, "logit_scale": 0.125}


def fastres_config(num_classes: int = 10) -> dict:
    return {**copy.deepcopy(_DEFAULT), "num_classes": num_classes}


def _conv_bn(cin, cout):
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)


class _Stage(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout)
        self.conv2, self.bn2 = _conv_bn(cout, cout)

    def forward(self, x):
        x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return x + F.gelu(self.bn2(self.conv2(x)))


class FastRes(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.config = copy.deepcopy(cfg)
        self.stem, self.stem_bn = _conv_bn(cfg["in_channels"], cfg["stem"])
        stages, cin = [], cfg["stem"]
        for w in cfg["widths"]:
            stages.append(_Stage(cin, w))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(cin, cfg["num_classes"], bias=False)
        self.logit_scale = float(cfg["logit_scale"])

    def forward(self, x):
        x = F.gelu(self.stem_bn(self.stem(x)))
        for s in self.stages:
            x = s(x)
        x = torch.amax(x, dim=(2, 3))
        return self.classifier(x) * self.logit_scale
