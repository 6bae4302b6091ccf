r"""Training losses.

Public names: kd_loss.

Knowledge distillation (Hinton et al. 2015, https://arxiv.org/abs/1503.02531):

.. math:: L = (1 - \lambda)\,CE(s, y) + \lambda\,T^2\,KL(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T))

with student logits s, teacher logits t; the T^2 factor keeps the soft-target
gradients on the scale of the hard ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_loss"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            weight: float = 0.5, temperature: float = 3.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """(1 - weight) * CE + weight * T^2 * KL(teacher || student), batch mean.

    ``label_smoothing`` applies to the CE term only (the teacher's targets are already soft).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"KD weight must be in [0, 1], got {weight}")
    if not temperature > 0:  # also rejects NaN
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = student_logits.float()
    t = teacher_logits.float()
    ce = F.cross_entropy(s, labels, label_smoothing=label_smoothing)
    kl = F.kl_div(F.log_softmax(s / temperature, dim=1), F.log_softmax(t / temperature, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - weight) * ce + weight * temperature ** 2 * kl
