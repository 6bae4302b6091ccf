"""How far PyTorch's own FP32 logits move from its FP64 logits, per image.

The yardstick for "bnnlite agrees with PyTorch within 1e-3": a network with
sign thresholds amplifies float32 rounding wherever an activation sits within
an ulp of a threshold, in PyTorch itself as in any other implementation.

    python tools/float_sensitivity.py models/birealnet.pth [--data DATA]

Default images: the 1,000-image test sample shipped in bnnlite/data.
"""
import click
import numpy as np
import torch

from bnnlite.train.checkpoint import load_checkpoint
from bnnlite.train.data import load_cifar, normalize
from bnnlite.train.models import model_from_checkpoint


@click.command()
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", type=click.Path(exists=True), default=None, help="CIFAR-10 data: use the whole test split.")
@click.option("--tol", type=float, default=1e-3, show_default=True)
def main(ckpt, data, tol):
    if data:
        images = load_cifar(data)[1].images
    else:
        from importlib import resources
        with resources.as_file(resources.files("bnnlite") / "data" / "cifar10_test_sample.npz") as p:
            images = np.load(p)["images"]
    ck = load_checkpoint(ckpt)
    model = model_from_checkpoint(ck)
    x = normalize(torch.from_numpy(images), ck["normalization"]["mean"], ck["normalization"]["std"])
    with torch.no_grad():
        l32 = torch.cat([model(x[i:i + 250]) for i in range(0, len(x), 250)]).numpy()
        model = model.double()
        l64 = torch.cat([model(x[i:i + 250].double()) for i in range(0, len(x), 250)]).numpy()
    diff = np.abs(l32 - l64).max(axis=1)
    click.echo(f"{ckpt}: PyTorch FP32 vs FP64 on {len(images)} images: every logit within {tol:g} on "
               f"{100 * np.mean(diff <= tol):.2f}%, max |diff| {diff.max():.3g}, "
               f"same class {100 * np.mean(l32.argmax(1) == l64.argmax(1)):.2f}%")


if __name__ == "__main__":
    main()
