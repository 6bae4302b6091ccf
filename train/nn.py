r"""Binary layers for your own networks (PyTorch): ``bnnlite.train.nn``.

Public names: BinaryConv2d, BinaryLinear, BINARY_LAYERS, RPReLU, and the quantizers
SteSign, ApproxSign, RSign (from quantizers.py).

Conventions shared with the runtime (docs/conventions.md): sign(0) = +1, a
binary value +1 is bit 0, and a binary conv pads its *binarised* input with
+1 (bit 0, free in a bit-packed kernel), not with 0.

Binary convolution (``BinaryConv2d``), per output channel o:

.. math:: y_o = \alpha_o \sum_{c, i, j} \operatorname{pad}_{+1}\!\big(q(x_c - t_c)\big)_{s p + i,\, s r + j}
          \cdot \operatorname{sign}(W_{o c i j})

with the input quantizer q (sign forward; its pseudo-gradient is the
quantizer's), an optional learnable threshold t per input channel
(``learn_threshold``, ReActNet's RSign), stride s, and the weight scale
alpha: ``"mean"`` = mean |W_o| (XNOR-Net), ``"learned"`` (a parameter), or
``"none"`` (1).  The latent weights W are real; only their signs are used
(keep them in [-1, 1] with ``clip_latent_weights``).  A scale directly
followed by batch-norm is a no-op: BN(alpha z) = sign(alpha) BN(z) in
training and its running statistics absorb alpha in eval, so use ``"none"``
there (docs/training.md).

``BinaryLinear`` is the same with a dense product instead of a convolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import QUANTIZERS, ApproxSign, RSign, SteSign, ste_sign

__all__ = ["BinaryConv2d", "BinaryLinear", "BINARY_LAYERS", "RPReLU", "SteSign", "ApproxSign", "RSign"]

SCALES = ("mean", "learned", "none")


class _Binary(nn.Module):
    """What BinaryConv2d and BinaryLinear share: quantizer, threshold, scale."""
    precision = 1

    def _setup(self, in_features, out_features, input_quantizer, scale, learn_threshold):
        if input_quantizer not in QUANTIZERS:
            raise ValueError(f"input_quantizer must be one of {', '.join(QUANTIZERS)}, got {input_quantizer!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        self.input_quantizer = QUANTIZERS[input_quantizer]()
        self.scale_mode = scale
        if scale == "learned":
            self.alpha = nn.Parameter(self._mean_abs_weight().detach())
        self.threshold = nn.Parameter(torch.zeros(in_features)) if learn_threshold else None

    def _mean_abs_weight(self):
        return self.weight.abs().mean(dim=tuple(range(1, self.weight.dim())))

    def scale(self) -> torch.Tensor:
        """alpha per output channel (ones for ``scale="none"``)."""
        if self.scale_mode == "learned":
            return self.alpha
        if self.scale_mode == "mean":
            return self._mean_abs_weight()
        return torch.ones(self.weight.shape[0], dtype=self.weight.dtype, device=self.weight.device)

    def _binarise_input(self, x, channel_dim_view):
        if self.threshold is not None:
            x = x - self.threshold.view(channel_dim_view)
        return self.input_quantizer(x)


class BinaryConv2d(_Binary):
    """Binary 2-D convolution (module docstring: the maths).

    ``BinaryConv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, *,
    input_quantizer="ste_sign", scale="mean", learn_threshold=False)``;
    ``kernel_size`` and ``padding`` are ints (square), stride 1 or 2.

    # Input shape:  (N, Cin, H, W)
    # Output shape: (N, Cout, (H + 2p - k) // s + 1, (W + 2p - k) // s + 1)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *,
                 input_quantizer="ste_sign", scale="mean", learn_threshold=False):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if kernel_size < 1 or padding < 0:
            raise ValueError(f"kernel_size must be >= 1 and padding >= 0, got {kernel_size}, {padding}")
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self._setup(in_channels, out_channels, input_quantizer, scale, learn_threshold)

    def forward(self, x):
        xb = self._binarise_input(x, (1, -1, 1, 1))
        p = self.padding
        if p:
            xb = F.pad(xb, (p, p, p, p), value=1.0)
        y = F.conv2d(xb, ste_sign(self.weight).to(xb.dtype), stride=self.stride)
        return y * self.scale().to(y.dtype).view(1, -1, 1, 1)

    def extra_repr(self):
        cout, cin = self.weight.shape[:2]
        return (f"{cin}, {cout}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"scale={self.scale_mode}, threshold={self.threshold is not None}")


class BinaryLinear(_Binary):
    """Binary dense layer: y = alpha * (q(x - t) @ sign(W).T).

    # Input shape:  (N, in_features)    # Output shape: (N, out_features)
    """

    def __init__(self, in_features, out_features, *, input_quantizer="ste_sign", scale="mean",
                 learn_threshold=False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self._setup(in_features, out_features, input_quantizer, scale, learn_threshold)

    def forward(self, x):
        xb = self._binarise_input(x, (1, -1))
        y = F.linear(xb, ste_sign(self.weight).to(xb.dtype))
        return y * self.scale().to(y.dtype).view(1, -1)

    def extra_repr(self):
        cout, cin = self.weight.shape
        return f"{cin}, {cout}, scale={self.scale_mode}, threshold={self.threshold is not None}"


BINARY_LAYERS = (BinaryConv2d, BinaryLinear)  # the layers whose ``weight`` is latent (sign only)


class RPReLU(nn.Module):
    r"""ReActNet's RPReLU, per channel: y = PReLU(x - gamma; slope beta) + zeta.

    .. math:: y = \begin{cases} x - \gamma + \zeta & x \ge \gamma \\ \beta (x - \gamma) + \zeta & x < \gamma \end{cases}
    """

    def __init__(self, channels):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.full((channels,), 0.25))
        self.zeta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        t = x - self.gamma.view(shape)
        t = torch.where(t >= 0, t, self.beta.view(shape) * t)
        return t + self.zeta.view(shape)
