"""What knowledge distillation adds to a student's training step.

    python tools/kd_cost.py [--student birealnet] [--teacher fastres|fp32] [--rounds 6] [--steps 10]

Times the training step of a full-size VGG-small student (augmentation,
normalisation, forward, loss, backward, optimiser step, as engine.py does it,
with bf16 autocast where the CPU has it natively) with and without a teacher's
forward pass, in alternating rounds so that drift in the machine's speed falls
on both alike.  Prints the median step time of each and their ratio (the
acceptance line: KD at most 1.15x the plain step).  Random weights: the cost
does not depend on them.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bnnlite.train.data import augment_batch, normalize
from bnnlite.train.engine import native_bf16
from bnnlite.train.losses import kd_loss
from bnnlite.train.models import build_model, clip_latent_weights, default_config
from bnnlite.train.optim import make_optimizer, recipe_defaults


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default="birealnet")
    ap.add_argument("--teacher", default="fastres")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="steps per round and mode")
    ap.add_argument("--compile", action="store_true", help="torch.compile the student (the binary recipe's default)")
    a = ap.parse_args(argv)
    bf16 = native_bf16(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4096, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (4096,), generator=g)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]

    student = build_model(dict(default_config(a.student), classifier_norm="bn")).to(memory_format=torch.channels_last)
    rec = recipe_defaults(a.student)
    opt = make_optimizer(student, rec["optimizer"], rec["lr"], rec["weight_decay"], 1.0)
    step_model = torch.compile(student) if a.compile else student
    teacher = build_model(default_config(a.teacher)).eval().to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)

    def step(i, kd):
        idx = torch.randint(0, len(images), (a.batch_size,), generator=g)
        x = normalize(augment_batch(images[idx], torch.Generator().manual_seed(i)), mean, std)
        y = labels[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = step_model(x)
            if kd:
                with torch.no_grad():
                    t_logits = teacher(x)
        logits = logits.float()
        loss = kd_loss(logits, t_logits, y, 0.9, 2.0) if kd else F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clip_latent_weights(student)

    for i in range(3):  # warm-up: oneDNN primitives, compile
        step(i, False)
        step(i, True)
    times = {False: [], True: []}
    for r in range(a.rounds):
        for kd in ((False, True) if r % 2 == 0 else (True, False)):
            t0 = time.perf_counter()
            for i in range(a.steps):
                step(i, kd)
            times[kd].append((time.perf_counter() - t0) / a.steps)
    plain, with_kd = statistics.median(times[False]), statistics.median(times[True])
    print(f"student {a.student}, teacher {a.teacher}, batch {a.batch_size}, bf16 {bf16}, "
          f"threads {torch.get_num_threads()}, compile {a.compile}")
    print(f"plain step {1e3 * plain:.1f} ms ({a.batch_size / plain:.1f} img/s), "
          f"with KD {1e3 * with_kd:.1f} ms ({a.batch_size / with_kd:.1f} img/s): KD costs {with_kd / plain:.3f}x "
          f"(median of {a.rounds} rounds of {a.steps} steps each)")


if __name__ == "__main__":
    main()
