"""The training recipe's pieces (issue: accuracy): classifier normalisation folded at export,
devices, the linear schedule, EMA and exact resume with it, init from a checkpoint, the
fastres teacher in KD, parameter groups.
"""
import json

import numpy as np
import pytest
import torch

import _models
from _cifar_files import tiny_train_config
from bnnlite.train.engine import native_bf16, resolve_device, train
from bnnlite.train.models import BinaryConv2d, build_model, default_config, init_from_checkpoint
from bnnlite.train.optim import Ema, make_optimizer, make_schedule

TINY = {"widths": [8, 8, 16, 16, 32, 32]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _cfg(model, data, out, **kw):
    return tiny_train_config(model, data, out, **kw)


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


# ---------------------------------------------------------------- classifier normalisation

@pytest.mark.parametrize("norm", ["bn", "bn-scaled"])
@pytest.mark.parametrize("arch", ["fp32", "xnor", "birealnet"])
def test_folded_classifier_norm_gives_the_same_logits_after_export(arch, norm, tmp_path):
    import bnnlite
    model = _models.make_model(arch, seed=3)
    cfg = dict(model.config, classifier_norm=norm)
    normed = build_model(cfg)
    normed.load_state_dict(model.state_dict(), strict=False)
    n = normed.classifier_norm.num_features
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # statistics far from (0, 1), so a missing or wrong fold shows
        normed.classifier_norm.running_mean.copy_(2.0 * torch.randn(n, generator=g))
        normed.classifier_norm.running_var.copy_(0.1 + 4.0 * torch.rand(n, generator=g))
    normed.eval()
    path = _models.export(normed, tmp_path, f"{arch}_{norm}")
    images = _models.random_images(64, seed=5)
    ref = _models.torch_logits(normed, images)
    got = bnnlite.Model.load(path).logits(images)
    assert np.array_equal(ref.argmax(1), got.argmax(1))
    assert np.abs(ref - got).max() < 1e-3
    # the fold matters: the unnormalised model gives other logits
    assert np.abs(_models.torch_logits(model, images) - ref).max() > 0.1


def test_classifier_norm_drops_the_classifier_lr_multiplier(data_dir, tmp_path):
    train(_cfg("fp32", data_dir, tmp_path / "a", epochs=1, classifier_norm="bn"))
    run = json.loads((tmp_path / "a" / "metrics.json").read_text())["run"]
    assert run["classifier_lr_mult"] == 1.0
    ck = torch.load(tmp_path / "a" / "model.pth", weights_only=True)
    assert ck["config"]["classifier_norm"] == "bn"


# ---------------------------------------------------------------- devices

def test_device_auto_and_cpu_resolve_and_cuda_refuses_without_cuda(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


def test_native_bf16_uses_torch_probes(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16(torch.device("cpu")) is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_bf16(torch.device("cpu")) is True


def test_device_auto_and_cpu_train_the_same_weights(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train(_cfg("xnor", data_dir, tmp_path / "auto", epochs=1, device="auto"))
    train(_cfg("xnor", data_dir, tmp_path / "cpu", epochs=1, device="cpu"))
    a, b = _weights(tmp_path / "auto" / "model.pth"), _weights(tmp_path / "cpu" / "model.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    run = json.loads((tmp_path / "auto" / "metrics.json").read_text())["run"]
    assert run["device"] == "cpu"


# ---------------------------------------------------------------- schedule, EMA, groups

def test_linear_schedule_warms_up_then_decays_to_zero():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_schedule(opt, "linear", total_steps=100, warmup_steps=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1 / 90) and opt.param_groups[0]["lr"] == 0.0


def test_ema_is_the_running_average():
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = Ema(lin, 0.5)
    for v in (1.0, 2.0, 3.0):
        with torch.no_grad():
            lin.weight.fill_(v)
        ema.update(lin)
    # first update copies (1); then decay min(0.5, 2/11), then min(0.5, 3/12)
    d1, d2 = 2 / 11, 3 / 12
    want = d2 * (d1 * 1.0 + (1 - d1) * 2.0) + (1 - d2) * 3.0
    assert torch.allclose(ema.module().weight, torch.full((1, 2), want))


def test_ema_warm_up_forgets_the_initial_weights_in_a_short_run():
    # 700 steps at decay 0.999 without warm-up keep 0.999**700 = 50% of the
    # initial weights; with the warm-up the share is below 1%.
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = Ema(lin, 0.999)
    ema.update(lin)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    for _ in range(700):
        ema.update(lin)
    assert 0.0 < ema.module().weight.item() < 0.01


def test_no_weight_decay_on_latent_binary_weights_bn_or_thresholds():
    model = build_model(dict(default_config("birealnet"), **TINY))
    opt = make_optimizer(model, "adam", 1e-3, 1e-4, 1.0)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names == {"blocks.0.conv.weight", "classifier.weight"}


@pytest.mark.parametrize("model", ["birealnet", "fp32"])
def test_exact_resume_with_ema_label_smoothing_and_linear_schedule(model, data_dir, tmp_path):
    kw = dict(ema=0.9, label_smoothing=0.1, schedule="linear", warmup_epochs=0.5,
              classifier_norm="bn")
    train(_cfg(model, data_dir, tmp_path / "a", **kw))
    r = train(_cfg(model, data_dir, tmp_path / "b", interrupt_after_steps=5, **kw))
    assert r["interrupted"]
    train(_cfg(model, data_dir, tmp_path / "b", resume=True, **kw))
    a, b = _weights(tmp_path / "a" / "model.pth"), _weights(tmp_path / "b" / "model.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ck = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=False)
    raw = ck["model"]
    # model.pth holds the EMA weights, not the last step's
    assert any(not torch.equal(raw[k], a[k]) for k in raw if raw[k].is_floating_point())


def test_resume_refuses_another_ema_setting(data_dir, tmp_path):
    train(_cfg("fp32", data_dir, tmp_path / "a", interrupt_after_steps=2, ema=0.9))
    with pytest.raises(ValueError, match="--ema differs"):
        train(_cfg("fp32", data_dir, tmp_path / "a", resume=True))


# ---------------------------------------------------------------- init from fp32, the teacher

def test_init_from_fp32_copies_convs_and_classifier_but_not_binary_bn_stats():
    fp = build_model(dict(default_config("fp32"), **TINY))
    with torch.no_grad():
        for p in fp.state_dict().values():
            if p.is_floating_point():
                p.normal_(0, 0.5)
    student = build_model(dict(default_config("birealnet"), **TINY))
    copied = init_from_checkpoint(student, fp.state_dict())
    s = student.state_dict()
    assert torch.equal(s["blocks.0.conv.weight"], fp.state_dict()["blocks.0.conv.weight"])
    assert torch.equal(s["classifier.weight"], fp.state_dict()["classifier.weight"])
    assert torch.equal(s["blocks.2.conv.weight"], fp.state_dict()["blocks.2.conv.weight"].clamp(-1, 1))
    assert "blocks.2.bn.running_mean" not in copied and "blocks.0.bn.running_mean" in copied
    conv = student.blocks[2].conv
    assert isinstance(conv, BinaryConv2d)
    assert torch.allclose(conv.alpha, conv.weight.abs().mean(dim=(1, 2, 3)))


def test_kd_from_a_fastres_teacher_trains_and_records_it(data_dir, tmp_path):
    train(_cfg("fastres", data_dir, tmp_path / "t", epochs=1, model_overrides={"stem": 8, "widths": [8, 16, 16]},
               schedule="linear", label_smoothing=0.2))
    teacher = tmp_path / "t" / "model.pth"
    train(_cfg("birealnet", data_dir, tmp_path / "s", epochs=1, kd=True, teacher_path=str(teacher),
               kd_weight=0.9, temperature=2.0, init_from=None))
    run = json.loads((tmp_path / "s" / "metrics.json").read_text())["run"]
    assert run["teacher"]["arch"] == "fastres" and run["kd_weight"] == 0.9


def test_fastres_does_not_export(tmp_path):
    from bnnlite.train.lower import ExportError, lower
    with pytest.raises(ExportError, match=r"gelu \(node gelu, fastres.py:\d+: .*F.gelu"):
        lower(build_model(default_config("fastres")).eval(), (32, 32, 3))
