"""The training loop: one function, ``train(TrainConfig, model=None, data=None)``.

Public names: TrainConfig, TrainData, prepare_data, check_model, train,
evaluate, recipe_defaults, resolve_device, native_bf16.

Two callers: ``bnnlite-train`` (a built-in architecture, built from the
config) and ``fit`` (fitting.py: the user's own ``nn.Module``, passed as
``model``; its checkpoints record ``config = {"arch": "custom",
"model_class", "input_size", "num_classes"}`` and resuming one checks that
the model passed is of that class).  ``data``: a TrainData from
``prepare_data`` (else the loop loads ``cfg.data`` itself).

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
* Devices: ``device`` "auto" (CUDA where available), "cpu" or "cuda".  The
  model, the data set, the batches and their augmentation live on the device;
  the random numbers of the augmentation come from the same CPU generators on
  every device, so the batches are the same images.  bf16 autocast is on by
  default where the device computes bf16 natively (CUDA with bf16, CPUs with
  AVX512-BF16 or AMX); elsewhere it is emulated and slower than FP32.
* Recipe pieces: label smoothing, a linear warm-up/decay schedule, an EMA of
  the weights (``ema`` decay per step: validation, test and the saved model
  use the average), initialisation from another checkpoint's matching
  tensors (``init_from``), classifier normalisation (models.py).

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
from bnnlite.cifar import Split
from bnnlite.datasets import load_dataset

from .data import augment_batch, channel_stats, normalize, train_val_split
from .losses import kd_loss
from .models import build_model, clip_latent_weights, default_config, init_from_checkpoint, model_from_checkpoint
from .optim import Ema, load_schedule, make_optimizer, make_schedule, recipe_defaults

__all__ = ["TrainConfig", "TrainData", "prepare_data", "check_model", "train", "evaluate", "recipe_defaults",
           "resolve_device", "native_bf16"]

CHECKPOINT = "checkpoint.pth"
FINAL = "model.pth"
LOG = "log.jsonl"


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
    device: str = "auto"               # auto | cpu | cuda
    label_smoothing: float = 0.0
    schedule: str = "onecycle"         # onecycle | linear (warm-up, then linear decay to zero)
    warmup_epochs: float = 0.0         # linear schedule only
    ema: float | None = None           # EMA decay per step; None: no EMA
    init_from: str | None = None       # checkpoint whose matching tensors initialise the model
    classifier_norm: str | None = None  # none | bn; None: the model's default
    extra: dict = field(default_factory=dict)


@dataclass
class TrainData:
    """What the loop trains on: uint8 NHWC splits, the class names and the normalisation
    (per-channel mean and std of ``x / 255`` over the training split, validation held out)."""
    train: Split
    val: Split
    test: Split
    classes: list
    mean: list
    std: list

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(H, W, C) of the images."""
        h, w, c = self.train.images.shape[1:]
        return int(h), int(w), int(c)


def prepare_data(cfg: TrainConfig, dataset=None) -> TrainData:
    """Split and measure ``dataset`` ((train, test, class_names), as ``load_dataset`` returns;
    default: ``load_dataset(cfg.data)``) per ``cfg.subset``, ``cfg.val_size`` and ``cfg.seed``."""
    train_full, test, classes = dataset if dataset is not None else load_dataset(cfg.data)
    if cfg.subset:
        train_full, test = train_full.subset(slice(0, cfg.subset)), test.subset(slice(0, cfg.subset))
    train_set, val_set = train_val_split(train_full, min(cfg.val_size, len(train_full) // 10 or 1), cfg.seed)
    mean, std = channel_stats(train_set.images)
    return TrainData(train_set, val_set, test, list(classes), mean, std)


@torch.no_grad()
def check_model(model: torch.nn.Module, data: TrainData, device="cpu") -> None:
    """ValueError unless ``model`` takes ``data``'s images and gives one logit per class:
    one forward pass of two images in eval mode (no running statistic moves)."""
    h, w, c = data.input_size
    name = type(model).__name__
    x = normalize(torch.from_numpy(data.train.images[:2]).to(device), data.mean, data.std)
    was_training = model.training
    model.eval()
    try:
        out = model(x)
    except (RuntimeError, ValueError, IndexError) as e:
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ValueError(f"{name} cannot take the data's {h}x{w} images with {c} channel(s) "
                         f"(N, {c}, {h}, {w}): {msg}") from e
    finally:
        model.train(was_training)
    n = len(data.classes)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != n:
        got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} gives {got} per image; the data have {n} classes "
                         f"({', '.join(map(str, data.classes[:5]))}{', ...' if n > 5 else ''}): "
                         f"its last layer needs {n} outputs")


def _builtin_model(cfg: TrainConfig, data: TrainData, rank: int):
    """(model, config, init_info) of the built-in architecture ``cfg.model``."""
    model_cfg = default_config(cfg.model, len(data.classes))
    h, w, c = data.input_size
    if h != w:
        raise ValueError(f"{cfg.data}: images are {w}x{h}; the built-in models take square images")
    model_cfg.update(image_size=int(h), in_channels=int(c))
    if cfg.model_overrides:
        unknown = sorted(set(cfg.model_overrides) - set(model_cfg))
        if unknown:
            raise ValueError(f"model_overrides: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(model_cfg))}")
        model_cfg.update(copy.deepcopy(cfg.model_overrides))
    if cfg.classifier_norm is not None:
        if "classifier_norm" not in model_cfg:
            raise ValueError(f"--classifier-norm: model {cfg.model} has no classifier normalisation option")
        model_cfg["classifier_norm"] = cfg.classifier_norm
    model = build_model(model_cfg)
    init_info = None
    if cfg.init_from:
        src = ckpt_io.load_checkpoint(cfg.init_from)
        copied = init_from_checkpoint(model, src["model"])
        if not copied:
            raise ValueError(f"--init-from {cfg.init_from}: no tensor matches this model's names and shapes")
        init_info = {"path": str(cfg.init_from), "arch": src["config"].get("arch"), "tensors": len(copied)}
        if rank == 0:
            print(f"initialised {len(copied)} tensors from {cfg.init_from}")
    return model, model_cfg, init_info


def _user_model_config(cfg: TrainConfig, model, data: TrainData) -> dict:
    for key in ("model_overrides", "init_from", "classifier_norm"):
        if getattr(cfg, key) is not None:
            raise ValueError(f"{key} applies to the built-in models only, not to your own network")
    cls = type(model)
    return {"arch": "custom", "model_class": f"{cls.__module__}.{cls.__qualname__}",
            "input_size": list(data.input_size), "num_classes": len(data.classes)}


def _check_resumable(ck: dict, model_cfg: dict, path) -> None:
    """A fit() checkpoint resumes only into a model of the class, input size and classes it recorded."""
    saved = ck["config"] if isinstance(ck["config"], dict) else {}
    if model_cfg.get("arch") != "custom" and saved.get("arch") != "custom":
        return
    keys = ("arch", "model_class", "input_size", "num_classes")
    theirs, ours = [saved.get(k) for k in keys], [model_cfg.get(k) for k in keys]
    if theirs != ours:
        raise ValueError(f"{path}: written for {dict(zip(keys, theirs))}, not this run's {dict(zip(keys, ours))}: "
                         f"resume needs the same network class and data")


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


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA where available, else CPU; "cuda" without CUDA is a ValueError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this PyTorch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """True where bf16 math runs natively on ``device``.

    CUDA: what torch reports.  CPU: AVX512-BF16 or AMX as torch's own CPU
    probe sees them; anything else (AVX2-only x86, Arm, unknown) is False:
    there bf16 autocast is emulated (on a Zen 3, 40 s vs 2.7 s per step).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(p() for p in probes if p is not None)


def _dist_setup(device_name="auto"):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
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
        if dist.get_backend() == "nccl":  # nccl reduces device tensors only
            t = t.cuda()
        dist.all_reduce(t)
        t = t.cpu()
    return t.tolist()


@torch.no_grad()
def evaluate(model, images, labels, mean, std, batch_size=500, bf16=False, rank=0, world=1, device="cpu"):
    """(loss, accuracy) of ``model`` in eval mode on uint8 NHWC numpy images."""
    device = torch.device(device)
    model.eval()
    idx = np.arange(len(labels))[rank::world]
    loss_sum = correct = 0.0
    for i in range(0, len(idx), batch_size):
        j = idx[i:i + batch_size]
        x = normalize(torch.from_numpy(images[j]).to(device), mean, std)
        y = torch.from_numpy(labels[j]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    loss_sum, correct, n = _all_sum([loss_sum, correct, len(idx)], world)
    return loss_sum / max(n, 1), correct / max(n, 1)


def _load_teacher(path, mean, std, device):
    t = ckpt_io.load_checkpoint(path)
    model = model_from_checkpoint(t)
    for p in model.parameters():
        p.requires_grad_(False)
    tn = t["normalization"]
    same = np.allclose(tn["mean"], mean) and np.allclose(tn["std"], std)
    acc = t.get("metrics", {}).get("val_acc")
    info = {"path": str(path), "arch": t["config"].get("arch"), "val_acc": acc}
    return (model.to(device, memory_format=torch.channels_last), (None if same else (tn["mean"], tn["std"])), info)


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


def train(cfg: TrainConfig, model: torch.nn.Module | None = None, data: TrainData | None = None) -> dict:
    """Train per ``cfg``; returns the final metrics dict (also in model.pth).

    ``model``: your own network, trained in place (else the built-in ``cfg.model`` is built);
    ``data``: from ``prepare_data`` (else ``cfg.data`` is loaded)."""
    rank, world = _dist_setup(cfg.device)
    device = resolve_device(cfg.device)
    if cfg.bf16 is None:
        cfg = replace(cfg, bf16=native_bf16(device))
        if not cfg.bf16 and rank == 0:
            print(f"{device.type}: no native bf16, training in FP32 (--bf16 forces autocast)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    data = data if data is not None else prepare_data(cfg)
    train_set, val_set, test, classes, mean, std = data.train, data.val, data.test, data.classes, data.mean, data.std
    user_model = model is not None
    if user_model:
        model_cfg, init_info = _user_model_config(cfg, model, data), None
    else:
        model, model_cfg, init_info = _builtin_model(cfg, data, rank)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if user_model:
        check_model(model, data, device)

    local_bs = max(1, cfg.batch_size // world)
    steps_per_epoch = len(train_set) // world // local_bs
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training images are fewer than one batch of {cfg.batch_size}")
    rec = recipe_defaults(cfg.model)
    opt_name = cfg.optimizer or rec["optimizer"]
    lr = cfg.lr if cfg.lr is not None else rec["lr"]
    wd = cfg.weight_decay if cfg.weight_decay is not None else rec["weight_decay"]
    cls_mult = 1.0 if user_model or model_cfg.get("classifier_norm", "none") != "none" else rec["classifier_lr"]
    opt = make_optimizer(model, opt_name, lr, wd, cls_mult)
    sched = make_schedule(opt, cfg.schedule, steps_per_epoch * cfg.epochs, round(cfg.warmup_epochs * steps_per_epoch))
    opt_info = {"optimizer": opt_name, "lr": lr, "weight_decay": wd, "classifier_lr_mult": cls_mult,
                "schedule": cfg.schedule, "warmup_epochs": cfg.warmup_epochs,
                "label_smoothing": cfg.label_smoothing, "ema": cfg.ema, "init_from": init_info}
    ema = Ema(model, cfg.ema) if cfg.ema else None

    state = {"epoch": 0, "step": 0, "running": [0.0, 0.0, 0.0, 0.0], "history": [], "elapsed": 0.0}
    ckpt_path = out / CHECKPOINT
    if rank == 0:  # temporaries of a run killed outright (kill -9) by now have no writer
        for name in (CHECKPOINT, FINAL, LOG):
            remove_stale(out / name)
    if cfg.resume and ckpt_path.exists():
        ck = ckpt_io.load_checkpoint(ckpt_path)
        _check_resumable(ck, model_cfg, ckpt_path)
        try:
            model.load_state_dict(ck["model"])
        except RuntimeError as e:  # other names or shapes: another network
            raise ValueError(f"{ckpt_path}: its weights do not fit this network: "
                             f"{str(e).strip().splitlines()[0][:300]}") from e
        opt.load_state_dict(ck["optimizer"])
        load_schedule(sched, ck["scheduler"], rank)
        if (ema is None) != (ck.get("ema") is None):
            raise ValueError(f"{ckpt_path}: --ema differs from the run being resumed")
        if ema is not None:
            ema.load_state_dict(ck["ema"])
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
        teacher, teacher_norm, teacher_info = _load_teacher(cfg.teacher_path, mean, std, device)
        opt_info["teacher"] = teacher_info

    use_compile = cfg.compile if cfg.compile is not None else recipe_defaults(cfg.model)["compile"]
    step_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        step_model = DDP(model)
    if use_compile:
        step_model = torch.compile(step_model)

    images_t = torch.from_numpy(train_set.images).to(device)
    labels_t = torch.from_numpy(train_set.labels).to(device)
    run_info = {"model": cfg.model, "epochs": cfg.epochs, "batch_size": cfg.batch_size, **opt_info,
                "kd": cfg.kd, "kd_weight": cfg.kd_weight, "temperature": cfg.temperature,
                "seed": cfg.seed, "device": str(device), "bf16": cfg.bf16, "channels_last": cfg.channels_last,
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
                                 "scheduler": sched.state_dict(), "ema": ema.state_dict() if ema else None,
                                 **state, "running": running}, ckpt_path)

    def eval_model():  # what validation, the test split and model.pth see
        return ema.module() if ema is not None else model

    steps_done_this_call = 0
    interrupted = False
    with _StopFlag() as flag:
        while state["epoch"] < cfg.epochs and not interrupted:
            epoch = state["epoch"]
            perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch)).to(device)
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
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    logits = step_model(x)
                    if teacher is not None:
                        with torch.no_grad():
                            tx = x if teacher_norm is None else normalize(augment_batch(images_t[idx], _step_generator(cfg.seed, epoch, step * world + rank)), *teacher_norm)
                            t_logits = teacher(tx)
                logits = logits.float()
                loss = (kd_loss(logits, t_logits, y, cfg.kd_weight, cfg.temperature, cfg.label_smoothing)
                        if teacher is not None else F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                clip_latent_weights(model)
                if ema is not None:
                    ema.update(model)
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
            val_loss, val_acc = evaluate(eval_model(), val_set.images, val_set.labels, mean, std,
                                         bf16=cfg.bf16, rank=rank, world=world, device=device)
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
    if user_model and ema is not None:  # the caller's model ends as model.pth: the average
        model.load_state_dict(ema.module().state_dict())

    # The test split is measured once, at the end, in FP32 eval (the export reference).
    test_loss = test_acc = None
    if len(test):
        test_loss, test_acc = evaluate(eval_model(), test.images, test.labels, mean, std, bf16=False, rank=rank,
                                       world=world, device=device)
    hist = state["history"]
    metrics = {"test_acc": test_acc, "test_loss": test_loss,
               "val_acc": hist[-1]["val_acc"] if hist else float("nan"),
               "epochs": len(hist), "wall_seconds": round(state["elapsed"], 1),
               "images_per_s": round(float(np.mean([h["images_per_s"] for h in hist])), 1) if hist else 0.0}
    if rank == 0:
        ckpt_io.save_atomic({**header(metrics), "model": eval_model().state_dict(), "history": hist}, out / FINAL)
        with open(out / "metrics.json", "w") as f:
            json.dump({**metrics, "run": run_info}, f, indent=2)
        _plot_curves(hist, out / "curves.png")
        print((f"test top-1 {100 * test_acc:.2f}%" if test_acc is not None else "no test split")
              + f" after {len(hist)} epochs, {state['elapsed'] / 60:.1f} min")
    dump = os.environ.get("BNNLITE_DDP_DUMP")
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), Path(dump) / f"rank{rank}.pth")
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    return metrics
