"""Folding arithmetic shared by the lowering rules (lower.py): PyTorch values to bundle arrays.

Public names: f32, f64, bn_as_fma, int_threshold (the weight packing is
``bnnlite.ops.binary.pack_conv_weight``, beside the op it feeds).

Per output channel co, batch-norm in eval mode becomes one multiplier and one
bias, computed in float32 exactly as PyTorch's CPU kernel does, which the
runtime applies as one FMA:  a = gamma * (1 / sqrt(var + eps)),
b = fma(-mean, a, beta),  BN(y) = fma(y, a, b).  Keeping that form (instead of
folding a into the weights) makes the runtime round like PyTorch, bit for bit.
A binary conv whose output only feeds sign() again (XNOR-Net) needs no float
at all: its sign decisions become integer thresholds on the conv sum
(``int_threshold``).
"""
from __future__ import annotations

import numpy as np
import torch

from bnnlite.floatmath import fma32

__all__ = ["f32", "f64", "bn_as_fma", "int_threshold"]


def f64(t) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def f32(t) -> np.ndarray:
    """PyTorch's own float32 values (what its eval forward computes with)."""
    return t.detach().to(torch.float32).cpu().numpy()


@torch.no_grad()
def bn_as_fma(bn, log=None):
    """float32 (a, b) with PyTorch's eval BatchNorm == fma(y, a, b) (its CPU kernel's own
    arithmetic); checked on a probe, with a note if this PyTorch build rounds otherwise."""
    inv = (np.float32(1) / np.sqrt(f32(bn.running_var) + np.float32(bn.eps))).astype(np.float32)
    a = (f32(bn.weight) * inv).astype(np.float32)
    b = fma32(-f32(bn.running_mean), a, f32(bn.bias))
    spatial = (8, 8) if isinstance(bn, torch.nn.BatchNorm2d) else (8,)  # BatchNorm1d takes (N, C, L)
    probe = torch.randn((2, a.size) + spatial, generator=torch.Generator().manual_seed(0)) * 4
    got = bn(probe).numpy()
    shape = (1, -1) + (1,) * len(spatial)
    want = fma32(probe.numpy(), a.reshape(shape), b.reshape(shape))
    if log is not None and not np.array_equal(got, want):
        log(f"note: this PyTorch's BatchNorm rounds differently from fma(y, a, b) on "
            f"{np.mean(got != want):.1%} of a probe; expect last-bit differences")
    return a, b


@torch.no_grad()
def int_threshold(scale, bn, t_next, flip, k_bits):
    """Integer thresholds that reproduce PyTorch's own sign decisions bit for bit.

    PyTorch computes the next layer's input bit of channel co as
    ``bn(acc * scale)[co] < t_next[co]`` in float32 (acc = the exact integer conv
    sum; ``bn`` may be None). Solving that in float64 disagrees with float32
    rounding whenever the boundary falls within an ulp of an integer, and then
    every pixel with that acc flips. So the decisions are taken from PyTorch
    itself, for every possible acc in [-k_bits-1, k_bits+1]: float32 rounding is
    monotone, so they form one run per channel, and the runtime's rule
    ``acc' < thr[co]`` (acc' = -acc where the weights were flipped) reproduces it.
    """
    accs = torch.arange(-k_bits - 1, k_bits + 2, dtype=torch.float32)
    y = accs.view(1, 1, -1, 1) * scale.detach().float().view(1, -1, 1, 1)
    if bn is not None:
        y = bn(y)
    neg = (y < torch.as_tensor(t_next, dtype=torch.float32).view(1, -1, 1, 1))[0, :, :, 0].numpy()
    n_neg = neg.sum(axis=1)  # how many acc values give bit 1 (-1)
    # Not flipped: bit 1 for the n_neg smallest acc -> thr = lowest acc + n_neg.
    # Flipped (acc' = -acc): bit 1 for the n_neg largest acc -> the same count from the other end.
    thr = -(k_bits + 1) + n_neg
    runs = np.where(flip[:, None], neg[:, ::-1], neg)
    if not np.array_equal(runs, np.arange(neg.shape[1])[None, :] < n_neg[:, None]):
        raise RuntimeError("PyTorch's sign decisions are not monotone in the conv sum: cannot fold "
                           "them into integer thresholds")
    return np.clip(thr, -(k_bits + 1), k_bits + 1).astype(np.int32)
