"""The training loop: one function, ``train(TrainConfig)``.

Public names: TrainConfig, train, evaluate, recipe_defaults.

What it guarantees
* Exact resume: the data order of epoch e is a permutation seeded by (seed, e)
  and the augmentation of step s by (seed, e, s), so a run resumed from any
  step boundary sees the same batches as one that never stopped.  Model,
  optimiser, scheduler, running epoch sums and history are in the checkpoint.
* Nothing lost: ``checkpoint.pth`` is rewritten atomically after every epoch
  and when SIGINT/SIGTERM arrives (the signal only sets a flag; the loop saves
  at the next step boundary and returns; a second Ctrl-C aborts at once).
* DDP: under ``torchrun`` (env WORLD_SIZE > 1) each rank trains on its shard
  of every epoch's permutation, gradients are averaged by
  DistributedDataParallel (gloo on CPU, nccl on CUDA), metrics are summed
  across ranks, rank 0 writes files.

Test hooks
* ``TrainConfig.model_overrides``: a dict merged into
  ``models.default_config(model)`` (e.g. ``{"widths": [8, 8, 16, 16, 32, 32]}``
  for a tiny network); unknown keys are a ValueError.  The merged config is
  what the checkpoints record, so export rebuilds the same network.
* env ``BNNLITE_DDP_DUMP=DIR``: at the end of a finished run every rank saves
  its final ``model.state_dict()`` to ``DIR/rank{r}.pth`` (to check that the
  ranks agree).
"""
from __future__ import annotations

import copy
import json
import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bnnlite._atomic import atomic_path, remove_stale

from . import checkpoint as ckpt_io
from .data import augment_batch, channel_stats, load_cifar, normalize, train_val_split
from .losses import kd_loss
from .models import build_model, clip_latent_weights, default_config, model_from_checkpoint

__all__ = ["TrainConfig", "train", "evaluate", "recipe_defaults"]

CHECKPOINT = "checkpoint.pth"
FINAL = "model.pth"
LOG = "log.jsonl"


def recipe_defaults(model: str) -> dict:
    """Optimiser recipe per model (what the README's table was trained with)."""
    # classifier_lr: the 8192-input classifier sees large positive features, so
    # one step at the conv learning rate moves logits by ~lr * |x|^2 and diverges.
    if model in ("fp32", "baseline"):
        return {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "compile": False, "classifier_lr": 0.01}
    return {"optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0, "compile": True, "classifier_lr": 0.1}


@dataclass
class TrainConfig:
    model: str
    data: str
    out: str
    epochs: int = 10
    lr: float | None = None
    batch_size: int = 64
    optimizer: str | None = None
    weight_decay: float | None = None
    kd: bool = False
    teacher_path: str | None = None
    kd_weight: float = 0.5
    temperature: float = 3.0
    val_size: int = 5000
    seed: int = 0
    bf16: bool | None = None  # None: bf16 autocast where the CPU computes bf16 natively
    channels_last: bool = True
    compile: bool | None = None
    threads: int | None = None
    resume: bool = False
    subset: int | None = None          # use only the first N train / test images (tests, smoke runs)
    interrupt_after_steps: int | None = None  # simulate Ctrl-C after this many steps (tests)
    progress: bool = True
    model_overrides: dict | None = None  # merged into models.default_config(model) (tests: tiny widths)
    extra: dict = field(default_factory=dict)


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves at the next step boundary."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.stop:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _dist_setup():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _sync_buffers(model, world):
    """Make every rank's buffers (BN running stats) rank 0's.

    DDP broadcasts buffers from rank 0 only at the start of each forward, so
    after an epoch's last step every rank holds its own last update; without
    this the ranks evaluate (and finish with) different models.
    """
    if world > 1:
        import torch.distributed as dist
        for b in model.buffers():
            dist.broadcast(b, 0)


def _all_sum(values, world):
    t = torch.tensor(values, dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(model, images, labels, mean, std, batch_size=500, bf16=False, rank=0, world=1):
    """(loss, accuracy) of ``model`` in eval mode on uint8 NHWC numpy images."""
    model.eval()
    idx = np.arange(len(labels))[rank::world]
    loss_sum = correct = 0.0
    for i in range(0, len(idx), batch_size):
        j = idx[i:i + batch_size]
        x = normalize(torch.from_numpy(images[j]), mean, std)
        y = torch.from_numpy(labels[j])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    loss_sum, correct, n = _all_sum([loss_sum, correct, len(idx)], world)
    return loss_sum / max(n, 1), correct / max(n, 1)


def _make_optimizer(cfg: TrainConfig, model, steps_total):
    rec = recipe_defaults(cfg.model)
    name = cfg.optimizer or rec["optimizer"]
    lr = cfg.lr if cfg.lr is not None else rec["lr"]
    wd = cfg.weight_decay if cfg.weight_decay is not None else rec["weight_decay"]
    # No weight decay on BN, biases, thresholds, alphas, RPReLU: only conv/linear weights.
    cls_mult = rec["classifier_lr"]
    groups = []
    for is_cls in (False, True):
        params = [(n, p) for n, p in model.named_parameters() if n.startswith("classifier.") == is_cls]
        for decay in (True, False):
            ps = [p for n, p in params if (p.ndim > 1) == decay]
            if ps:
                groups.append({"params": ps, "weight_decay": wd if decay else 0.0,
                               "lr": lr * (cls_mult if is_cls else 1.0)})
    if name == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    elif name == "adam":
        opt = torch.optim.Adam(groups, lr=lr)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=max(steps_total, 1), pct_start=0.15 if name == "sgd" else 0.1,
        anneal_strategy="cos", div_factor=10.0 if name == "sgd" else 20.0, final_div_factor=1e3,
        cycle_momentum=(name == "sgd"))
    return opt, sched, {"optimizer": name, "lr": lr, "weight_decay": wd, "classifier_lr_mult": cls_mult}


def _load_schedule(sched, saved, rank):
    """Restore the LR schedule's position; keep this run's length if --epochs changed.

    Same --epochs: exact resume. Different --epochs: the step counter carries over and the
    remaining steps follow the new one-cycle curve (a deliberate re-fit, printed).
    """
    total, phases = sched.total_steps, sched._schedule_phases
    sched.load_state_dict(saved)
    if saved["total_steps"] != total:
        if saved["last_epoch"] >= total:
            raise ValueError(f"--epochs is shorter than the {saved['last_epoch']} steps already trained")
        sched.total_steps, sched._schedule_phases = total, phases
        if rank == 0:
            print(f"--resume: schedule re-fitted from {saved['total_steps']} to {total} steps "
                  f"at step {saved['last_epoch']}")


def _load_teacher(path, mean, std):
    t = ckpt_io.load_checkpoint(path)
    model = model_from_checkpoint(t)
    for p in model.parameters():
        p.requires_grad_(False)
    tn = t["normalization"]
    same = np.allclose(tn["mean"], mean) and np.allclose(tn["std"], std)
    return model.to(memory_format=torch.channels_last), (None if same else (tn["mean"], tn["std"]))


def _write_log(path, history):
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(rec) + "\n" for rec in history))


def _plot_curves(history, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install bnnlite[train]): no curves PNG")
        return
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(ep, [h["val_loss"] for h in history], label="validation")
    a.set_xlabel("epoch"); a.set_ylabel("loss"); a.legend(); a.grid(alpha=.3)
    b.plot(ep, [100 * h["train_acc"] for h in history], label="train")
    b.plot(ep, [100 * h["val_acc"] for h in history], label="validation")
    b.set_xlabel("epoch"); b.set_ylabel("top-1 %"); b.legend(); b.grid(alpha=.3)
    fig.suptitle(Path(path).parent.name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _step_generator(seed, epoch, step):
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + step)


def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo") -> bool:
    """True where bf16 math runs natively (x86: AVX512_BF16 or AMX-BF16; Arm: BF16).

    Elsewhere PyTorch emulates bf16 and autocast is many times slower than FP32
    (measured on a Zen 3: 40 s vs 2.7 s per step).  Unknown platforms: True.
    """
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags = set(val.split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return True


def train(cfg: TrainConfig) -> dict:
    """Train per ``cfg``; returns the final metrics dict (also in model.pth)."""
    rank, world = _dist_setup()
    if cfg.bf16 is None:
        cfg = replace(cfg, bf16=cpu_has_native_bf16())
        if not cfg.bf16 and rank == 0:
            print("this CPU has no native bf16: training in FP32 (--bf16 forces autocast)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    train_full, test, classes = load_cifar(cfg.data)
    if cfg.subset:
        train_full, test = train_full.subset(slice(0, cfg.subset)), test.subset(slice(0, cfg.subset))
    train_set, val_set = train_val_split(train_full, min(cfg.val_size, len(train_full) // 10 or 1), cfg.seed)
    mean, std = channel_stats(train_set.images)
    model_cfg = default_config(cfg.model, len(classes))
    if cfg.model_overrides:
        unknown = sorted(set(cfg.model_overrides) - set(model_cfg))
        if unknown:
            raise ValueError(f"model_overrides: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(model_cfg))}")
        model_cfg.update(copy.deepcopy(cfg.model_overrides))
    model = build_model(model_cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    local_bs = max(1, cfg.batch_size // world)
    steps_per_epoch = len(train_set) // world // local_bs
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training images are fewer than one batch of {cfg.batch_size}")
    opt, sched, opt_info = _make_optimizer(cfg, model, steps_per_epoch * cfg.epochs)

    state = {"epoch": 0, "step": 0, "running": [0.0, 0.0, 0.0, 0.0], "history": [], "elapsed": 0.0}
    ckpt_path = out / CHECKPOINT
    if rank == 0:  # temporaries of a run killed outright (kill -9) by now have no writer
        for name in (CHECKPOINT, FINAL, LOG):
            remove_stale(out / name)
    if cfg.resume and ckpt_path.exists():
        ck = ckpt_io.load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        _load_schedule(sched, ck["scheduler"], rank)
        state = {k: ck[k] for k in state}
        if rank != 0:  # the checkpoint's running sums are the total over ranks: rank 0 carries them
            state["running"] = [0.0, 0.0, 0.0] + state["running"][3:]
        if rank == 0:
            print(f"resuming {ckpt_path} at epoch {state['epoch'] + 1}, step {state['step']}")
            _write_log(out / LOG, state["history"])  # what the checkpoint holds: each epoch once
    elif cfg.resume and rank == 0:
        print(f"--resume: no {ckpt_path} yet, starting fresh")

    teacher = teacher_norm = None
    if cfg.kd:
        if not cfg.teacher_path:
            raise ValueError("--kd needs --teacher-path CKPT")
        teacher, teacher_norm = _load_teacher(cfg.teacher_path, mean, std)

    use_compile = cfg.compile if cfg.compile is not None else recipe_defaults(cfg.model)["compile"]
    step_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        step_model = DDP(model)
    if use_compile:
        step_model = torch.compile(step_model)

    images_t = torch.from_numpy(train_set.images)
    labels_t = torch.from_numpy(train_set.labels)
    run_info = {"model": cfg.model, "epochs": cfg.epochs, "batch_size": cfg.batch_size, **opt_info,
                "kd": cfg.kd, "kd_weight": cfg.kd_weight, "temperature": cfg.temperature,
                "seed": cfg.seed, "bf16": cfg.bf16, "channels_last": cfg.channels_last,
                "compile": use_compile, "world_size": world, "threads": torch.get_num_threads(),
                "train_images": len(train_set), "val_images": len(val_set)}

    def header(metrics):
        return {"format": ckpt_io.FORMAT, "format_version": ckpt_io.FORMAT_VERSION, "config": model_cfg,
                "normalization": {"mean": mean, "std": std}, "class_names": classes,
                "metrics": metrics, "run": run_info}

    def save_resume_state():  # called on every rank (the running sums are all-reduced)
        running = _all_sum(state["running"][:3], world) + state["running"][3:]
        if rank == 0:
            ckpt_io.save_atomic({**header({}), "model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), **state, "running": running}, ckpt_path)

    steps_done_this_call = 0
    interrupted = False
    with _StopFlag() as flag:
        while state["epoch"] < cfg.epochs and not interrupted:
            epoch = state["epoch"]
            perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
            mine = perm[rank::world]
            model.train()
            t0 = time.time()
            bar = tqdm(range(state["step"], steps_per_epoch), total=steps_per_epoch, initial=state["step"],
                       desc=f"{cfg.model} {epoch + 1}/{cfg.epochs}", unit="step",
                       disable=not cfg.progress or rank != 0, mininterval=1.0 if os.isatty(2) else 30.0)
            seen_this_call = 0
            for step in bar:
                idx = mine[step * local_bs:(step + 1) * local_bs]
                g = _step_generator(cfg.seed, epoch, step * world + rank)
                x = normalize(augment_batch(images_t[idx], g), mean, std)
                y = labels_t[idx]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                    logits = step_model(x)
                    if teacher is not None:
                        with torch.no_grad():
                            tx = x if teacher_norm is None else normalize(augment_batch(images_t[idx], _step_generator(cfg.seed, epoch, step * world + rank)), *teacher_norm)
                            t_logits = teacher(tx)
                logits = logits.float()
                loss = (kd_loss(logits, t_logits, y, cfg.kd_weight, cfg.temperature) if teacher is not None
                        else F.cross_entropy(logits, y))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                clip_latent_weights(model)
                r = state["running"]
                r[0] += loss.item() * len(y); r[1] += (logits.argmax(1) == y).sum().item(); r[2] += len(y)
                seen_this_call += len(y)
                state["step"] = step + 1
                steps_done_this_call += 1
                el = time.time() - t0
                bar.set_postfix(loss=f"{r[0] / r[2]:.3f}", acc=f"{100 * r[1] / r[2]:.1f}",
                                img_s=f"{seen_this_call * world / max(el, 1e-9):.0f}", refresh=False)
                if cfg.interrupt_after_steps and steps_done_this_call >= cfg.interrupt_after_steps:
                    flag.stop = True
                stop = _all_sum([float(flag.stop)], world)[0] > 0 if world > 1 else flag.stop
                if stop:
                    interrupted = True
                    break
            bar.close()
            epoch_time = time.time() - t0
            state["elapsed"] += epoch_time
            r = state["running"]
            r[3] += epoch_time
            if interrupted:
                save_resume_state()
                if rank == 0:
                    print(f"interrupted: state saved to {ckpt_path} (epoch {epoch + 1}, step {state['step']}); "
                          f"continue with --resume")
                break
            _sync_buffers(model, world)
            tl, tc, tn = _all_sum(r[:3], world)
            ev0 = time.time()
            val_loss, val_acc = evaluate(model, val_set.images, val_set.labels, mean, std,
                                         bf16=cfg.bf16, rank=rank, world=world)
            state["elapsed"] += time.time() - ev0
            rec = {"epoch": epoch + 1, "train_loss": tl / tn, "train_acc": tc / tn, "val_loss": val_loss,
                   "val_acc": val_acc, "lr": sched.get_last_lr()[0], "epoch_seconds": round(r[3], 1),
                   "images_per_s": round(tn / max(r[3], 1e-9), 1), "wall_seconds": round(state["elapsed"], 1)}
            state["history"].append(rec)
            state.update(epoch=epoch + 1, step=0, running=[0.0, 0.0, 0.0, 0.0])
            save_resume_state()
            if rank == 0:  # after the checkpoint that holds this epoch (a kill between: resume rewrites it)
                with open(out / LOG, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"epoch {epoch + 1}/{cfg.epochs}: train {100 * rec['train_acc']:.2f}% "
                      f"val {100 * val_acc:.2f}% ({rec['images_per_s']:.0f} img/s, {rec['epoch_seconds']:.0f} s)",
                      flush=True)

    if interrupted:
        return {"interrupted": True, "epoch": state["epoch"], "step": state["step"]}

    # The test split is measured once, at the end, in FP32 eval (the export reference).
    test_loss, test_acc = evaluate(model, test.images, test.labels, mean, std, bf16=False, rank=rank, world=world)
    hist = state["history"]
    metrics = {"test_acc": test_acc, "test_loss": test_loss,
               "val_acc": hist[-1]["val_acc"] if hist else float("nan"),
               "epochs": len(hist), "wall_seconds": round(state["elapsed"], 1),
               "images_per_s": round(float(np.mean([h["images_per_s"] for h in hist])), 1) if hist else 0.0}
    if rank == 0:
        ckpt_io.save_atomic({**header(metrics), "model": model.state_dict(), "history": hist}, out / FINAL)
        with open(out / "metrics.json", "w") as f:
            json.dump({**metrics, "run": run_info}, f, indent=2)
        _plot_curves(hist, out / "curves.png")
        print(f"test top-1 {100 * test_acc:.2f}% after {len(hist)} epochs, {state['elapsed'] / 60:.1f} min")
    dump = os.environ.get("BNNLITE_DDP_DUMP")
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), Path(dump) / f"rank{rank}.pth")
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    return metrics
