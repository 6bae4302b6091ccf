"""Export a built-in architecture with random weights: a bundle for speed figures only.

    python tools/random_bundle.py birealresnet18 /tmp/r18.h5 [--overrides '{"widths": [...]}'] [--seed 0]
    python tools/random_bundle.py reactnet /tmp/rn.h5   # binary 1x1 convs too (train/reactnet.py)

Speed does not depend on the weights, so the bench's topology figures (docs/benchmarks.md)
need no trained model.  Weights are PyTorch's default initialisation; batch-norm running
statistics, affine parameters, thresholds and RPReLU parameters are drawn at random so the
binary activations are not degenerate; the export's own check against PyTorch still runs.
"""
import argparse
import json

import torch

from bnnlite.train.export import export_model
from bnnlite.train.models import build_model, default_config
from bnnlite.train.nn import RPReLU


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--overrides", default="{}", help="JSON merged into the model's default config")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    model = build_model({**default_config(a.model), **json.loads(a.overrides)})
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.3)
            elif isinstance(m, RPReLU):
                m.gamma.normal_(0, 0.2)
                m.zeta.normal_(0, 0.2)
            if getattr(m, "threshold", None) is not None and isinstance(m.threshold, torch.nn.Parameter):
                m.threshold.normal_(0, 0.3)
    export_model(model, a.out, probe=64)


if __name__ == "__main__":
    main()
