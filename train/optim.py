"""Optimiser, learning-rate schedule and weight EMA for the training loop.

Public names: recipe_defaults, make_optimizer, make_schedule, load_schedule, Ema.

Parameter groups: weight decay only on real conv / linear weights, never on
batch-norm, biases, thresholds, scales, RPReLU, nor on the latent weights of
binary convs and linears (their sign is all that is used; decay only pulls them towards
a sign flip).  Without classifier normalisation the classifier keeps its own
learning-rate multiplier (models.py says why).

Schedules (per optimiser step):

* ``onecycle`` -- PyTorch's OneCycleLR, cosine (the first recipe).
* ``linear``   -- linear warm-up from lr/10 over ``warmup`` steps, then linear
  decay to zero at the last step.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["recipe_defaults", "make_optimizer", "make_schedule", "load_schedule", "Ema"]


def recipe_defaults(model: str) -> dict:
    """Optimiser recipe per model when the command line does not say."""
    # classifier_lr applies only without classifier normalisation (see models.py).
    if model in ("fp32", "baseline"):
        return {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "compile": False, "classifier_lr": 0.01}
    if model in ("birealresnet18", "reactnet"):
        return {"optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0, "compile": True, "classifier_lr": 1.0}
    if model == "fastres":
        return {"optimizer": "sgd", "lr": 0.4, "weight_decay": 5e-4, "compile": False, "classifier_lr": 1.0}
    return {"optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0, "compile": True, "classifier_lr": 0.1}


def _is_latent_binary(module_of, name):
    from .nn import BINARY_LAYERS
    owner = module_of.get(name.rsplit(".", 1)[0])
    return isinstance(owner, BINARY_LAYERS) and name.endswith(".weight")


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, classifier_mult: float):
    """SGD (Nesterov, momentum 0.9) or Adam over the groups described above."""
    modules = dict(model.named_modules())
    groups = []
    for is_cls in (False, True):
        params = [(n, p) for n, p in model.named_parameters() if n.startswith("classifier.") == is_cls]
        for decay in (True, False):
            ps = [p for n, p in params if (p.ndim > 1 and not _is_latent_binary(modules, n)) == decay]
            if ps:
                groups.append({"params": ps, "weight_decay": weight_decay if decay else 0.0,
                               "lr": lr * (classifier_mult if is_cls else 1.0)})
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def make_schedule(opt, kind: str, total_steps: int, warmup_steps: int = 0):
    total = max(total_steps, 1)
    if kind == "onecycle":
        sgd = isinstance(opt, torch.optim.SGD)
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total, pct_start=0.15 if sgd else 0.1,
            anneal_strategy="cos", div_factor=10.0 if sgd else 20.0, final_div_factor=1e3, cycle_momentum=sgd)
    if kind == "linear":
        warm = min(max(warmup_steps, 0), total - 1)

        def factor(step):  # the factor for the step about to run (0-based)
            if step < warm:
                return 0.1 + 0.9 * step / warm
            return max(0.0, (total - step) / (total - warm))
        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    raise ValueError(f"schedule must be 'onecycle' or 'linear', got {kind!r}")


def load_schedule(sched, saved, rank=0):
    """Restore the LR schedule's position; keep this run's length if --epochs changed.

    Same --epochs: exact resume. Different --epochs (OneCycleLR only): the step
    counter carries over and the remaining steps follow the new curve (a
    deliberate re-fit, printed).  A linear schedule's length is part of the
    run: resuming it with another --epochs is refused.
    """
    if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
        if "total_steps" in saved:
            raise ValueError("the checkpoint was trained with the onecycle schedule, not linear")
        sched.load_state_dict(saved)
        return
    if "total_steps" not in saved:
        raise ValueError("the checkpoint was trained with the linear schedule, not onecycle")
    total, phases = sched.total_steps, sched._schedule_phases
    sched.load_state_dict(saved)
    if saved["total_steps"] != total:
        if saved["last_epoch"] >= total:
            raise ValueError(f"--epochs is shorter than the {saved['last_epoch']} steps already trained")
        sched.total_steps, sched._schedule_phases = total, phases
        if rank == 0:
            print(f"--resume: schedule re-fitted from {saved['total_steps']} to {total} steps "
                  f"at step {saved['last_epoch']}")


def _warm_ema_fn(decay: float):
    """EMA with the usual warm-up (as TensorFlow's ``ExponentialMovingAverage``
    with ``num_updates``): update n uses ``min(decay, (1 + n) / (10 + n))``.
    Without it the first weights keep a share of ``decay ** steps``: 0.999 over
    a 700-step screen leaves half of the average at initialisation."""
    @torch.no_grad()
    def update(ema_params, model_params, n_averaged):
        d = min(decay, (1.0 + float(n_averaged)) / (10.0 + float(n_averaged)))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, model_params, 1.0 - d)
        else:  # integer buffers (BN's num_batches_tracked): follow the model
            for e, m in zip(ema_params, model_params):
                e.copy_(m)
    return update


class Ema:
    """Exponential moving average of the weights and buffers (BN statistics).

    ``decay`` per optimiser step, warmed up (``_warm_ema_fn``); ``model`` is the
    averaged copy used for validation, the test split and the saved model when
    EMA is on.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = AveragedModel(model, multi_avg_fn=_warm_ema_fn(decay), use_buffers=True)

    def update(self, model: nn.Module) -> None:
        self.model.update_parameters(model)

    def module(self) -> nn.Module:
        return self.model.module

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
