"""bnnlite-train (bnnlite.train.cli:main) through click's CliRunner.

--help lists the flags; usage errors exit with code 2 and a message
(--kd without --teacher-path, unknown --model, bad --model-overrides);
the parsed TrainConfig is checked by replacing the engine's ``train`` (so
no training runs here); a ValueError from the engine becomes exit code 1
with its message (no traceback).
"""
import importlib.metadata

import pytest
import torch
from click.testing import CliRunner

from bnnlite.train import cli
from bnnlite.train.engine import TrainConfig

FLAGS = ["--model", "--data", "--out", "--epochs", "--lr", "--batch-size", "--optimizer",
         "--weight-decay", "--kd", "--teacher-path", "--kd-weight", "--lambda", "--temperature", "-T",
         "--val-size", "--seed", "--bf16", "--no-bf16", "--channels-last", "--no-channels-last",
         "--compile", "--no-compile", "--threads", "--resume", "--no-progress", "--help",
         "--device", "--label-smoothing", "--schedule", "--warmup-epochs", "--ema", "--init-from",
         "--classifier-norm"]
HIDDEN = ["--subset", "--interrupt-after-steps", "--model-overrides"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def captured(monkeypatch):
    """Replace the engine: record the TrainConfig the CLI builds."""
    seen = []
    monkeypatch.setattr(cli, "train", lambda cfg: seen.append(cfg) or {})
    return seen


def _run(args):
    return CliRunner().invoke(cli.main, args)


class TestHelp:
    def test_lists_flags(self):
        r = _run(["--help"])
        assert r.exit_code == 0, r.output
        for flag in FLAGS:
            assert flag in r.output, flag
        for flag in HIDDEN:
            assert flag not in r.output, flag
        assert "fp32|xnor|birealnet|birealresnet18|reactnet|fastres|baseline" in r.output
        assert _run(["-h"]).output == r.output

    def test_console_script_points_at_main(self):
        eps = importlib.metadata.entry_points(group="console_scripts")
        ep = next(e for e in eps if e.name == "bnnlite-train")
        assert ep.value == "bnnlite.train.cli:main"
        assert ep.load() is cli.main


class TestUsageErrors:
    def test_kd_needs_teacher(self, data, tmp_path, captured):
        r = _run(["--model", "xnor", "--data", str(data), "--out", str(tmp_path / "o"), "--kd"])
        assert r.exit_code == 2
        assert "--kd needs --teacher-path" in r.output
        assert captured == []

    def test_unknown_model(self, data, tmp_path, captured):
        r = _run(["--model", "resnet", "--data", str(data), "--out", str(tmp_path / "o")])
        assert r.exit_code == 2
        assert "Invalid value for '--model'" in r.output and "resnet" in r.output
        assert captured == []

    def test_missing_data_path(self, tmp_path, captured):
        r = _run(["--model", "xnor", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and "does not exist" in r.output

    @pytest.mark.parametrize("args,msg", [
        (["--kd-weight", "1.5"], "--kd-weight"),
        (["--temperature", "0"], "--temperature"),
        (["--epochs", "0"], "--epochs"),
        (["--optimizer", "rmsprop"], "--optimizer"),
        (["--model-overrides", "{widths: 1"], "not JSON"),
        (["--model-overrides", "[8, 8]"], "JSON object"),
    ])
    def test_bad_values(self, data, tmp_path, captured, args, msg):
        r = _run(["--model", "xnor", "--data", str(data), "--out", str(tmp_path / "o"), *args])
        assert r.exit_code == 2, r.output
        assert msg in r.output
        assert captured == []


class TestParsedConfig:
    def test_baseline_is_fp32(self, data, tmp_path, captured):
        r = _run(["--model", "baseline", "--data", str(data), "--out", str(tmp_path / "o")])
        assert r.exit_code == 0, r.output
        (cfg,) = captured
        assert isinstance(cfg, TrainConfig) and cfg.model == "fp32"

    def test_defaults(self, data, tmp_path, captured):
        assert _run(["--model", "xnor", "--data", str(data), "--out", str(tmp_path / "o")]).exit_code == 0
        (cfg,) = captured
        assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.val_size, cfg.seed) == ("xnor", 10, 64, 5000, 0)
        assert cfg.bf16 is None and cfg.channels_last is True and cfg.compile is None
        assert cfg.kd is False and cfg.resume is False and cfg.progress is True
        assert cfg.lr is None and cfg.optimizer is None and cfg.model_overrides is None

    def test_all_flags_reach_the_config(self, data, tmp_path, captured):
        teacher = tmp_path / "teacher.pth"
        teacher.write_bytes(b"x")
        r = _run(["--model", "birealnet", "--data", str(data), "--out", str(tmp_path / "o"),
                  "--epochs", "3", "--lr", "0.01", "--batch-size", "16", "--optimizer", "sgd",
                  "--weight-decay", "1e-4", "--kd", "--teacher-path", str(teacher), "--lambda", "0.7",
                  "-T", "2.5", "--val-size", "100", "--seed", "5", "--no-bf16", "--no-channels-last",
                  "--no-compile", "--threads", "2", "--resume", "--subset", "500",
                  "--interrupt-after-steps", "4", "--no-progress",
                  "--model-overrides", '{"widths": [8, 8, 16, 16, 32, 32]}'])
        assert r.exit_code == 0, r.output
        (c,) = captured
        assert (c.model, c.epochs, c.lr, c.batch_size, c.optimizer, c.weight_decay) == \
               ("birealnet", 3, 0.01, 16, "sgd", 1e-4)
        assert (c.kd, c.teacher_path, c.kd_weight, c.temperature) == (True, str(teacher), 0.7, 2.5)
        assert (c.val_size, c.seed, c.bf16, c.channels_last, c.compile, c.threads) == \
               (100, 5, False, False, False, 2)
        assert (c.resume, c.subset, c.interrupt_after_steps, c.progress) == (True, 500, 4, False)
        assert c.model_overrides == {"widths": [8, 8, 16, 16, 32, 32]}
        assert c.data == str(data) and c.out == str(tmp_path / "o")

    def test_recipe_flags_reach_the_config(self, data, tmp_path, captured):
        init = tmp_path / "fp32.pth"
        init.write_bytes(b"x")
        r = _run(["--model", "birealnet", "--data", str(data), "--out", str(tmp_path / "o"),
                  "--device", "cpu", "--label-smoothing", "0.1", "--schedule", "linear", "--warmup-epochs", "1.5",
                  "--ema", "0.999", "--init-from", str(init), "--classifier-norm", "bn"])
        assert r.exit_code == 0, r.output
        (c,) = captured
        assert (c.device, c.label_smoothing, c.schedule, c.warmup_epochs, c.ema, c.init_from, c.classifier_norm) == \
               ("cpu", 0.1, "linear", 1.5, 0.999, str(init), "bn")
        assert _run(["--model", "xnor", "--data", str(data), "--out", str(tmp_path / "o"),
                     "--ema", "1"]).exit_code == 2

    def test_compile_flag_tristate(self, data, tmp_path, captured):
        base = ["--model", "xnor", "--data", str(data), "--out", str(tmp_path / "o")]
        assert _run(base + ["--compile"]).exit_code == 0
        assert _run(base + ["--no-compile"]).exit_code == 0
        assert [c.compile for c in captured] == [True, False]


class TestEngineErrors:
    def test_bad_data_is_a_clean_error(self, data, tmp_path):
        """Real engine: an empty data folder -> exit 1 with load_cifar's message, no traceback."""
        r = _run(["--model", "xnor", "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"])
        assert r.exit_code == 1
        assert "neither the CIFAR-10 binary layout" in r.output
        assert "Traceback" not in r.output
