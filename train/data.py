"""Training data: the CIFAR readers (from bnnlite.cifar) plus batch augmentation.

Public names: Split, load_cifar, train_val_split, channel_stats,
augment_batch, normalize.
"""
from __future__ import annotations

import numpy as np

from bnnlite.cifar import Split, load_cifar

__all__ = ["Split", "load_cifar", "train_val_split", "channel_stats",
           "augment_batch", "normalize"]


def train_val_split(train: Split, val_size: int, seed: int = 0) -> tuple[Split, Split]:
    """Hold out ``val_size`` training images, chosen by a fixed-seed permutation."""
    if val_size <= 0:
        return train, Split(train.images[:0], train.labels[:0])
    perm = np.random.default_rng(seed).permutation(len(train))
    return train.subset(np.sort(perm[val_size:])), train.subset(np.sort(perm[:val_size]))


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0-1 scale (the normalisation stored with a model)."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(0).round(6).tolist(), x.std(0).round(6).tolist()


def augment_batch(images, generator, pad: int = 4):
    """Random crop with ``pad`` zero pixels each side and a random horizontal flip.

    ``images`` is a uint8 torch tensor (B, H, W, C) on any device; the whole
    batch is done with two gathers, no Python loop per image.  Returns uint8 (B, H, W, C).
    """
    import torch
    b, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.arange(w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + ox[:, None]
    rows = torch.arange(h)[None, :] + oy[:, None]
    bi = torch.arange(b)[:, None, None]
    # The random numbers come from the CPU generator on every device (same batches); the gather runs where
    # the images are.
    dev = images.device
    return padded[bi.to(dev), rows[:, :, None].to(dev), cols[:, None, :].to(dev)]


def normalize(images_u8, mean, std):
    """uint8 NHWC tensor -> float32 NCHW (channels_last memory), (x/255 - mean)/std."""
    import torch
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)
