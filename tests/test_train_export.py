"""bnnlite-export's folding of BN + sign into integer thresholds (XNOR layers).

The runtime decides bit co of the next layer as ``acc' < thr[co]`` on the exact
integer conv sum; PyTorch decides ``bn(acc * alpha) < t`` in float32.  The two
must agree for every acc the layer can produce, including boundaries placed
within an ulp of an integer (where float64 algebra would pick the other side).
"""
import numpy as np
import pytest
import torch

from bnnlite.train.fold import int_threshold
from bnnlite.train.models import BinaryBlock, default_config


def _block(cin, cout, seed, ambiguous):
    torch.manual_seed(seed)
    blk = BinaryBlock(cin, cout, pool=False, cfg=default_config("xnor")).eval()
    k = 9 * cin
    with torch.no_grad():
        alpha = blk.conv.scale().float()
        acc0 = 2 * torch.randint(-k // 4, k // 4, (cout,)).float() + k % 2  # parity of K - 2*popcount
        gamma = torch.randn(cout)                        # both signs: flipped channels too
        if ambiguous:
            # boundary exactly at float32(acc0 * alpha): y(acc0) == 0 in float32,
            # while acc0 * alpha in float64 is a hair off.
            blk.bn.running_mean.copy_(acc0 * alpha)
            blk.bn.running_var.fill_(1.0 - blk.bn.eps)
            blk.bn.bias.zero_()
        else:
            blk.bn.running_mean.normal_(0, k ** 0.5)
            blk.bn.running_var.uniform_(0.5, 4.0)
            blk.bn.bias.normal_()
        blk.bn.weight.copy_(gamma)
    return blk, k


@pytest.mark.parametrize("ambiguous", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_thresholds_reproduce_pytorch_decisions(seed, ambiguous):
    blk, k = _block(16, 40, seed, ambiguous)
    t_next = np.zeros(40) if ambiguous else np.random.default_rng(seed).normal(0, 0.5, 40)
    flip = (blk.bn.weight.detach().numpy() < 0)
    thr = int_threshold(blk.conv.scale(), blk.bn, t_next, flip, k)

    acc = torch.arange(-k, k + 1, 2, dtype=torch.float32)   # the values K - 2*popcount takes
    with torch.no_grad():
        y = blk.bn(acc.view(1, 1, -1, 1) * blk.conv.scale().view(1, -1, 1, 1))[0, :, :, 0]
    torch_bit = (y < torch.as_tensor(t_next, dtype=torch.float32)[:, None]).numpy()
    acc_rt = np.where(flip[:, None], -acc.numpy()[None, :], acc.numpy()[None, :])  # weights flipped
    runtime_bit = acc_rt < thr[:, None]
    assert np.array_equal(runtime_bit, torch_bit)
    if ambiguous:  # the adversarial case really puts values on (or an ulp from) the boundary
        assert (y.abs() < 1e-5).sum() >= 20


@pytest.mark.parametrize("arch", ["fp32", "birealnet"])
def test_comparison_in_batches_covers_every_image_in_order(tiny_models, tiny_bundles, arch):
    """The export check runs PyTorch and bnnlite a batch at a time (memory, progress): with a
    partial last batch, it finds bnnlite's very logits of one pass over all images, and
    PyTorch's up to its own batch-size-dependent rounding."""
    from bnnlite.train.export import _compare
    from _models import MEAN, STD
    model = tiny_models[arch]
    x = np.random.default_rng(1).integers(0, 256, (23, 16, 16, 3), dtype=np.uint8)
    ref1, got1, agree1, _ = _compare(model, tiny_bundles[arch], x, MEAN, STD, threads=1, batch=len(x))
    ref5, got5, agree5, _ = _compare(model, tiny_bundles[arch], x, MEAN, STD, threads=1, batch=5)
    assert got5.shape == (23, 7)
    np.testing.assert_array_equal(got5, got1)
    np.testing.assert_allclose(ref5, ref1, atol=1e-5)
    assert agree5 == agree1
