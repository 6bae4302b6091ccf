"""bnnlite.train: the PyTorch side (training and export).  Needs torch.

Shipped as the subpackage ``bnnlite.train`` from the folder ``train/``; the
runtime (``import bnnlite``) never imports it.

Modules: data (CIFAR readers, augmentation), nn (the layers for your own
networks), quantizers (sign + STE), models (VGG-small fp32 / xnor /
birealnet; resnet: Bi-Real ResNet-18; reactnet: ReActNet-A), losses (KD), checkpoint (atomic save, header), engine (the
loop), fitting (``fit``: your own network through that loop), cli
(bnnlite-train), export (bnnlite-export, ``export_model``).

``bnnlite.train.fit`` is ``fitting.fit`` (imported on first use).
"""

__all__ = ["fit"]


def __getattr__(name):
    if name == "fit":
        from .fitting import fit
        return fit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
