"""bnnlite.train.losses.kd_loss against hand computations.

The expected numbers come from math/NumPy written out here (log-sum-exp,
cross-entropy, KL(teacher || student)), not from the torch functions the
implementation calls.
"""
import math

import numpy as np
import pytest
import torch

from bnnlite.train.losses import kd_loss


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _hand_kd(s, t, y, weight, temp):
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    ce = -np.mean(_log_softmax(s)[np.arange(len(y)), y])
    log_p = _log_softmax(t / temp)            # teacher
    log_q = _log_softmax(s / temp)            # student
    kl = np.sum(np.exp(log_p) * (log_p - log_q)) / len(y)   # batch mean
    return (1 - weight) * ce + weight * temp ** 2 * kl, ce, kl


def _t(a, dtype=torch.float32):
    return torch.tensor(a, dtype=dtype)


S = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
T = [[1.0, 1.0, 0.0], [-2.0, 0.5, 2.5]]
Y = [0, 1]


class TestKnownNumbers:
    def test_two_class_by_pencil(self):
        """Student logits (0, 0), teacher (ln 3, 0) at T = 1, label 0:
        CE = ln 2; teacher p = (3/4, 1/4), student q = (1/2, 1/2),
        KL = 3/4 ln(3/2) + 1/4 ln(1/2)."""
        s, t, y = _t([[0.0, 0.0]]), _t([[math.log(3.0), 0.0]]), torch.tensor([0])
        kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
        assert kd_loss(s, t, y, weight=0.0, temperature=1.0).item() == pytest.approx(math.log(2), rel=1e-6)
        assert kd_loss(s, t, y, weight=1.0, temperature=1.0).item() == pytest.approx(kl, rel=1e-5)
        assert kd_loss(s, t, y, weight=0.25, temperature=1.0).item() == pytest.approx(
            0.75 * math.log(2) + 0.25 * kl, rel=1e-5)

    def test_temperature_squared_factor(self):
        """Teacher (2 ln 3, 0) at T = 2 has soft targets (3/4, 1/4): loss = 4 * KL, not KL."""
        s, t, y = _t([[0.0, 0.0]]), _t([[2 * math.log(3.0), 0.0]]), torch.tensor([1])
        kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
        assert kd_loss(s, t, y, weight=1.0, temperature=2.0).item() == pytest.approx(4 * kl, rel=1e-5)

    def test_identical_logits_give_zero_kl(self):
        z = _t(S)
        assert kd_loss(z, z.clone(), torch.tensor(Y), weight=1.0, temperature=3.0).item() == pytest.approx(0, abs=1e-6)

    @pytest.mark.parametrize("weight,temp", [(0.5, 3.0), (0.1, 1.0), (0.9, 4.0), (0.3, 0.5)])
    def test_batch_against_numpy(self, weight, temp):
        expect, _, _ = _hand_kd(S, T, Y, weight, temp)
        got = kd_loss(_t(S), _t(T), torch.tensor(Y), weight, temp).item()
        assert got == pytest.approx(expect, rel=1e-5)

    def test_kl_direction_is_teacher_to_student(self):
        """KL(p_teacher || q_student) != KL(q || p) for these logits; the loss must be the first."""
        _, _, kl_ts = _hand_kd(S, T, Y, 1.0, 2.0)
        _, _, kl_st = _hand_kd(T, S, Y, 1.0, 2.0)
        assert abs(kl_ts - kl_st) > 1e-3
        got = kd_loss(_t(S), _t(T), torch.tensor(Y), 1.0, 2.0).item()
        assert got == pytest.approx(4.0 * kl_ts, rel=1e-5)

    def test_batch_mean_not_sum(self):
        s1, t1 = _t(S[:1]), _t(T[:1])
        one = kd_loss(s1, t1, torch.tensor(Y[:1]), 0.5, 3.0).item()
        two = kd_loss(torch.cat([s1, s1]), torch.cat([t1, t1]), torch.tensor(Y[:1] * 2), 0.5, 3.0).item()
        assert two == pytest.approx(one, rel=1e-6)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_low_precision_logits_computed_in_float32(self, dtype):
        s, t = _t(S, dtype), _t(T, dtype)
        got = kd_loss(s, t, torch.tensor(Y), 0.5, 3.0)
        assert got.dtype == torch.float32
        expect, _, _ = _hand_kd(s.float().numpy(), t.float().numpy(), Y, 0.5, 3.0)
        assert got.item() == pytest.approx(expect, rel=1e-5)


class TestLimits:
    def test_weight_zero_is_plain_cross_entropy(self):
        _, ce, _ = _hand_kd(S, T, Y, 0.0, 3.0)
        got = kd_loss(_t(S), _t(T), torch.tensor(Y), weight=0.0, temperature=3.0).item()
        assert got == pytest.approx(ce, rel=1e-6)
        # the teacher does not matter at all
        other = kd_loss(_t(S), _t(T) * -5.0, torch.tensor(Y), weight=0.0, temperature=3.0).item()
        assert other == got

    @pytest.mark.parametrize("temp", [1.0, 3.0, 5.0])
    def test_weight_one_is_t2_kl(self, temp):
        _, _, kl = _hand_kd(S, T, Y, 1.0, temp)
        got = kd_loss(_t(S), _t(T), torch.tensor(Y), weight=1.0, temperature=temp).item()
        assert got == pytest.approx(temp ** 2 * kl, rel=1e-5)
        # the labels do not matter at all
        assert kd_loss(_t(S), _t(T), torch.tensor([2, 0]), weight=1.0, temperature=temp).item() == got

    def test_gradient_flows_to_student_only(self):
        s = _t(S).requires_grad_(True)
        t = _t(T).requires_grad_(True)
        kd_loss(s, t, torch.tensor(Y), 0.5, 3.0).backward()
        assert s.grad is not None and s.grad.abs().sum() > 0
        # student gradient of the mixed loss, by hand: (1-w)(q1 - onehot)/B + w*T*(qT - pT)/B
        q1 = np.exp(_log_softmax(S))
        qT, pT = np.exp(_log_softmax(np.array(S) / 3.0)), np.exp(_log_softmax(np.array(T) / 3.0))
        onehot = np.eye(3)[Y]
        expect = 0.5 * (q1 - onehot) / 2 + 0.5 * 3.0 * (qT - pT) / 2
        np.testing.assert_allclose(s.grad.numpy(), expect, rtol=1e-5, atol=1e-7)


class TestInvalidArguments:
    @pytest.mark.parametrize("weight", [-0.01, 1.01, 2.0, float("nan")])
    def test_bad_weight(self, weight):
        with pytest.raises(ValueError, match="weight"):
            kd_loss(_t(S), _t(T), torch.tensor(Y), weight=weight, temperature=3.0)

    @pytest.mark.parametrize("temp", [0.0, -1.0, float("nan")])
    def test_bad_temperature(self, temp):
        with pytest.raises(ValueError, match="temperature"):
            kd_loss(_t(S), _t(T), torch.tensor(Y), weight=0.5, temperature=temp)
