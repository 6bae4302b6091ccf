"""``bnnlite-train``: the training command (also ``python -m bnnlite.train``)."""
from __future__ import annotations

import json

import click

from .engine import TrainConfig, train
from .models import ARCHS, CLASSIFIER_NORMS


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--model", "model", type=click.Choice(list(ARCHS) + ["baseline"]), required=True,
              help="fp32 (alias baseline): VGG-small FP32 reference; xnor: XNOR-Net; birealnet: Bi-Real; "
                   "birealresnet18: Bi-Real ResNet-18; reactnet: ReActNet-A (binary 3x3 and 1x1 convs); "
                   "fastres: the small fast residual network used as KD teacher.")
@click.option("--data", type=click.Path(exists=True), required=True,
              help="cifar-10-binary.tar.gz / cifar-10-python.tar.gz, or their extracted folder.")
@click.option("--out", type=click.Path(), required=True, help="Run folder: checkpoints, log.jsonl, curves.png.")
@click.option("--epochs", type=click.IntRange(1), default=10)
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: per model recipe].")
@click.option("--batch-size", type=click.IntRange(1), default=64)
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None,
              help="[default: sgd for fp32, adam for binary models]")
@click.option("--weight-decay", type=float, default=None)
@click.option("--kd", is_flag=True, help="Distil from --teacher-path.")
@click.option("--teacher-path", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--kd-weight", "--lambda", "kd_weight", type=click.FloatRange(0, 1), default=0.5,
              help="lambda in (1-lambda)*CE + lambda*T^2*KL.")
@click.option("--temperature", "-T", type=click.FloatRange(min=0, min_open=True), default=3.0)
@click.option("--val-size", type=click.IntRange(0), default=5000, help="Training images held out for validation.")
@click.option("--seed", type=int, default=0)
@click.option("--bf16/--no-bf16", default=None,
              help="bfloat16 autocast on CPU [default: on where the CPU has native bf16].")
@click.option("--channels-last/--no-channels-last", default=True)
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the model [default: on for binary models].")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch intra-op threads.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pth exactly where it stopped.")
@click.option("--subset", type=click.IntRange(1), default=None, hidden=True)
@click.option("--interrupt-after-steps", type=click.IntRange(1), default=None, hidden=True)
@click.option("--model-overrides", default=None, hidden=True,
              help='JSON object merged into the model config (tests: \'{"widths": [8, 8, 16, 16, 32, 32]}\').')
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              help="auto: CUDA where PyTorch sees one, else CPU.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0)
@click.option("--schedule", type=click.Choice(["onecycle", "linear"]), default="onecycle",
              help="onecycle: cosine one-cycle; linear: warm-up (--warmup-epochs) then linear decay to zero.")
@click.option("--warmup-epochs", type=click.FloatRange(0), default=0.0, help="Linear schedule's warm-up.")
@click.option("--ema", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="EMA of the weights with this decay per step (validation, test and model.pth use it).")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Checkpoint whose tensors of matching name and shape initialise the model "
                   "(a binary student from a trained fp32).")
@click.option("--classifier-norm", type=click.Choice(list(CLASSIFIER_NORMS)), default=None,
              help="BatchNorm1d before the classifier, bn-scaled: times 8/sqrt(features) (folded into it at "
                   "export) [default: the model's].")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs still written).")
def main(model, data, out, epochs, lr, batch_size, optimizer, weight_decay, kd, teacher_path, kd_weight,
         temperature, val_size, seed, bf16, channels_last, compile_, threads, resume, subset,
         interrupt_after_steps, model_overrides, device, label_smoothing, schedule, warmup_epochs, ema,
         init_from, classifier_norm, no_progress):
    """Train a VGG-small (fp32, XNOR-Net or Bi-Real), Bi-Real ResNet-18, ReActNet-A or the fastres teacher
    on CIFAR-10-layout data."""
    if kd and not teacher_path:
        raise click.UsageError("--kd needs --teacher-path CKPT")
    if model_overrides is not None:
        try:
            model_overrides = json.loads(model_overrides)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--model-overrides") from e
        if not isinstance(model_overrides, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--model-overrides")
    cfg = TrainConfig(model="fp32" if model == "baseline" else model, data=data, out=out, epochs=epochs,
                      lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay, kd=kd,
                      teacher_path=teacher_path, kd_weight=kd_weight, temperature=temperature,
                      val_size=val_size, seed=seed, bf16=bf16, channels_last=channels_last,
                      compile=compile_, threads=threads, resume=resume, subset=subset,
                      interrupt_after_steps=interrupt_after_steps, model_overrides=model_overrides,
                      device=device, label_smoothing=label_smoothing, schedule=schedule,
                      warmup_epochs=warmup_epochs, ema=ema, init_from=init_from, classifier_norm=classifier_norm,
                      progress=not no_progress)
    try:
        train(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    main()
