"""bnnlite.train: the PyTorch side (training and export).  Needs torch.

Shipped as the subpackage ``bnnlite.train`` from the folder ``train/``; the
runtime (``import bnnlite``) never imports it.

Modules: data (CIFAR readers, augmentation), quantizers (sign + STE),
models (VGG-small fp32 / xnor / birealnet), losses (KD), checkpoint
(atomic save, header), engine (the loop), cli (bnnlite-train), export
(bnnlite-export).
"""
