r"""Binarisation for training: forward ops with their pseudo-gradients.

Public names: ste_sign, approx_sign, SteSign, ApproxSign, RSign, QUANTIZERS.

Both quantizers share the forward op of ``bnnlite.bitpack.sign``:

.. math:: q(x) = \begin{cases} +1 & x \ge 0 \\ -1 & x < 0 \end{cases}

(sign(0) = +1, the convention the runtime reproduces bit for bit).  They
differ in the gradient they pass back:

* ``ste_sign`` -- straight-through estimator clipped at 1 (Courbariaux et al.
  2016, https://arxiv.org/abs/1602.02830):
  :math:`\partial q / \partial x = 1_{|x| \le 1}`.
* ``approx_sign`` -- Bi-Real Net's piecewise-quadratic approximation (Liu et
  al. 2018, https://arxiv.org/abs/1808.00278):
  :math:`\partial q / \partial x = (2 - 2|x|) \cdot 1_{|x| \le 1}`.
"""
from __future__ import annotations

import torch

__all__ = ["ste_sign", "approx_sign", "SteSign", "ApproxSign", "RSign", "QUANTIZERS"]


def _sign(x: torch.Tensor) -> torch.Tensor:
    # torch.sign(0) is 0; ours is +1.
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _SteSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, clip_value):
        ctx.save_for_backward(x)
        ctx.clip_value = clip_value
        return _sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= ctx.clip_value).to(grad.dtype), None


class _ApproxSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (2.0 - 2.0 * x.abs()).clamp_(min=0.0).to(grad.dtype)


def ste_sign(x: torch.Tensor, clip_value: float = 1.0) -> torch.Tensor:
    """sign(x) forward, gradient passed where |x| <= clip_value."""
    return _SteSignFn.apply(x, clip_value)


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x) forward, Bi-Real's (2 - 2|x|)+ gradient."""
    return _ApproxSignFn.apply(x)


class SteSign(torch.nn.Module):
    """Module form of :func:`ste_sign`; ``precision`` tells other code it binarises."""
    precision = 1

    def __init__(self, clip_value: float = 1.0):
        super().__init__()
        self.clip_value = clip_value

    def forward(self, x):
        return ste_sign(x, self.clip_value)

    def extra_repr(self):
        return f"clip_value={self.clip_value}"


class ApproxSign(torch.nn.Module):
    """Module form of :func:`approx_sign`."""
    precision = 1

    def forward(self, x):
        return approx_sign(x)


class RSign(torch.nn.Module):
    r"""ReActNet's RSign: sign with a learnable threshold per channel (dimension 1).

    .. math:: q(x_c) = \operatorname{sign}(x_c - b_c)

    with the gradient of ``base`` (``"ste_sign"`` or ``"approx_sign"``) for
    both x and b (db = -dx summed over the other dimensions).
    """
    precision = 1

    def __init__(self, channels: int, base: str = "approx_sign"):
        super().__init__()
        if base not in ("ste_sign", "approx_sign"):
            raise ValueError(f"base must be 'ste_sign' or 'approx_sign', got {base!r}")
        self.base = base
        self.threshold = torch.nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        t = x - self.threshold.view((1, -1) + (1,) * (x.dim() - 2))
        return approx_sign(t) if self.base == "approx_sign" else ste_sign(t)

    def extra_repr(self):
        return f"{self.threshold.shape[0]}, base={self.base}"


QUANTIZERS = {"ste_sign": SteSign, "approx_sign": ApproxSign}
