"""Round trip PyTorch -> bundle -> bnnlite.Model, for every architecture and backend.

* bnnlite logits match the PyTorch model in eval mode (FP32) within 1e-4 and
  give the same classes, on 64 random uint8 images; where PyTorch rounds as
  docs/conventions.md says (oneDNN on an FMA CPU), the features before the
  classifier are identical bit for bit, for every backend;
* every available kernel backend gives bit-identical logits;
* the input forms (uint8 batch, one image, float in [0, 1]), batch sizes
  around ``chunk`` and threads=2 give the same per-image results;
* the ONNX translation run by onnxruntime matches bnnlite;
* repr() and summary() describe the model.

The models are tiny (16x16 images, channel counts off the word width) and
have random BN statistics with negative multipliers: see ``_models.py``.
"""
import threading

import numpy as np
import pytest

import bnnlite
from bnnlite.backends import available_backends

from _models import ARCHS, CLASS_NAMES, MEAN, NUM_CLASSES, STD, random_images, torch_logits

TOL = 1e-4
N_IMAGES = 64
BACKENDS = available_backends()


@pytest.fixture(scope="module")
def images():
    return random_images(N_IMAGES, seed=11)


@pytest.fixture(scope="module")
def reference(tiny_models, images):
    """arch -> PyTorch eval FP32 logits of ``images``."""
    return {arch: torch_logits(m, images) for arch, m in tiny_models.items()}


@pytest.fixture(scope="module")
def logits_by_backend(tiny_bundles, images):
    """(arch, backend) -> bnnlite logits of ``images``."""
    return {(arch, be): bnnlite.Model.load(tiny_bundles[arch], backend=be).logits(images)
            for arch in ARCHS for be in BACKENDS}


@pytest.fixture(scope="module")
def models(tiny_bundles):
    return {arch: bnnlite.Model.load(path) for arch, path in tiny_bundles.items()}


class TestAgainstPyTorch:
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("arch", ARCHS)
    def test_logits_match_torch(self, arch, backend, logits_by_backend, reference):
        got, want = logits_by_backend[(arch, backend)], reference[arch]
        assert got.shape == want.shape == (N_IMAGES, NUM_CLASSES)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("arch", ["xnor", "birealnet"])
    def test_features_bit_identical_to_torch(self, arch, backend, tiny_models, tiny_bundles, images):
        """Everything before the classifier of a binary network (first conv, BN, binary
        convs, shortcuts, RPReLU, pooling) rounds exactly as PyTorch does; only the
        classifier's BLAS summation order may differ.  (fp32's later convs run on BLAS,
        whose summation order is its own.)"""
        import torch
        from bnnlite.backends.reference import conv_float
        from bnnlite.train.data import normalize
        model = tiny_models[arch]
        x = normalize(torch.from_numpy(images), MEAN, STD)
        with torch.no_grad():
            first = model.blocks[0].bn(model.blocks[0].conv(x)).permute(0, 2, 3, 1).numpy()
            h = x
            for blk in model.blocks:
                h = blk(h)
            want = h.permute(0, 2, 3, 1).reshape(len(images), -1).numpy()
        # Does this PyTorch build round its first conv + BN as documented?
        ref_first = np.empty_like(first)
        blk0 = bnnlite.Model.load(tiny_bundles[arch], backend="numpy").graph.ops[0]
        xp = np.pad(x.permute(0, 2, 3, 1).numpy(), ((0, 0), (1, 1), (1, 1), (0, 0)))
        conv_float(xp, blk0.w4d, blk0.bias, 1, False, ref_first, mult=blk0.mult)
        if not np.array_equal(first, ref_first):
            pytest.skip("this PyTorch build rounds its first conv differently from oneDNN's "
                        "fma over (kh, kw, cin) (docs/conventions.md)")
        m = bnnlite.Model.load(tiny_bundles[arch], backend=backend, chunk=len(images))
        m.logits(images)
        got = m.graph.plan(len(images)).tensors["flat"]
        assert np.array_equal(got, want), f"{np.mean(got != want):.2%} of features differ"

    @pytest.mark.parametrize("arch", ARCHS)
    def test_logits_are_not_degenerate(self, arch, reference):
        # Guards the other tests: a constant network would agree with anything.
        want = reference[arch]
        assert np.ptp(want, axis=0).min() > 1e-2
        assert len(np.unique(want.argmax(1))) >= 2

    def test_negative_bn_multipliers_were_exercised(self, tiny_models):
        # The XNOR bits output flips the weights of channels with a negative BN multiplier.
        for blk in list(tiny_models["xnor"].blocks)[1:]:
            s = (blk.bn.weight / (blk.bn.running_var + blk.bn.eps).sqrt()) * blk.conv.scale()
            assert (s < 0).any() and (s > 0).any()

    @pytest.mark.parametrize("arch", ARCHS)
    def test_backends_agree_bit_for_bit(self, arch, logits_by_backend):
        first = logits_by_backend[(arch, BACKENDS[0])]
        for be in BACKENDS[1:]:
            assert np.array_equal(first, logits_by_backend[(arch, be)]), f"{be} != {BACKENDS[0]}"

    def test_all_three_backend_kinds_present(self):
        # numpy is always there; the others are reported if missing (not silently untested).
        assert "numpy" in BACKENDS
        missing = {"cython", "numba"} - set(BACKENDS)
        if missing:
            pytest.skip(f"backends not available here: {sorted(missing)}")


class TestInputForms:
    @pytest.mark.parametrize("arch", ARCHS)
    def test_predict_batch_is_argmax_of_logits(self, arch, models, images, logits_by_backend):
        m = models[arch]
        pred = m.predict(images)
        assert pred.shape == (N_IMAGES,) and np.issubdtype(pred.dtype, np.integer)
        np.testing.assert_array_equal(pred, logits_by_backend[(arch, m.backend.name)].argmax(1))

    @pytest.mark.parametrize("arch", ARCHS)
    def test_single_image(self, arch, models, images):
        m = models[arch]
        batch = m.logits(images[:5])
        for i in range(5):
            one = m.logits(images[i])
            assert one.shape == (NUM_CLASSES,)
            np.testing.assert_array_equal(one, batch[i])
            p = m.predict(images[i])
            assert type(p) is int and p == int(batch[i].argmax())
            assert m.predict_proba(images[i]).shape == (NUM_CLASSES,)

    @pytest.mark.parametrize("arch", ARCHS)
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_float_images_give_same_logits(self, arch, dtype, models, images):
        m = models[arch]
        x = images[:8]
        want = m.logits(x)
        got = m.logits(x.astype(dtype) / dtype(255))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(m.predict(x.astype(dtype) / 255), m.predict(x))
        # uint8 normalises by a table (C-contiguous input) or by arithmetic (any other): same floats
        strided = np.repeat(x, 2, axis=2)[:, :, ::2]
        assert not strided.flags.c_contiguous
        np.testing.assert_array_equal(m.logits(strided), want)

    @pytest.mark.parametrize("arch", ARCHS)
    def test_predict_proba(self, arch, models, images):
        m = models[arch]
        p = m.predict_proba(images[:16])
        assert p.shape == (16, NUM_CLASSES)
        assert np.all(p >= 0) and np.all(p <= 1)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(p.argmax(1), m.predict(images[:16]))
        # softmax of the logits, computed independently in float64
        z = m.logits(images[:16]).astype(np.float64)
        e = np.exp(z - z.max(1, keepdims=True))
        np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)

    def test_empty_batch(self, models):
        m = models["birealnet"]
        x = np.zeros((0,) + m.input_shape, np.uint8)
        assert m.logits(x).shape == (0, NUM_CLASSES)
        assert m.predict(x).shape == (0,)


class TestBatchingAndThreads:
    @pytest.mark.parametrize("arch", ARCHS)
    def test_batch_sizes_and_chunks_agree_with_one_by_one(self, arch, tiny_bundles, images):
        x = images[:10]
        m1 = bnnlite.Model.load(tiny_bundles[arch])
        one_by_one = np.stack([m1.logits(x[i]) for i in range(len(x))])
        np.testing.assert_array_equal(m1.logits(x[:1]), one_by_one[:1])
        np.testing.assert_array_equal(m1.logits(x[:3]), one_by_one[:3])
        np.testing.assert_array_equal(m1.logits(x), one_by_one)
        m4 = bnnlite.Model.load(tiny_bundles[arch], chunk=4)
        assert m4.chunk == 4
        np.testing.assert_array_equal(m4.logits(x), one_by_one)       # chunks 4, 4, 2
        np.testing.assert_array_equal(m4.logits(x[:3]), one_by_one[:3])
        np.testing.assert_array_equal(m4.logits(x[3:10]), one_by_one[3:10])  # 4, 3: plan reuse
        np.testing.assert_array_equal(m4.logits(x), one_by_one)       # again, after other sizes

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("arch", ["xnor", "birealnet"])
    def test_threads_2_same_results(self, arch, backend, tiny_bundles, images, logits_by_backend):
        want = logits_by_backend[(arch, backend)]
        # One chunk: the kernels split each layer's rows between the threads.
        m = bnnlite.Model.load(tiny_bundles[arch], threads=2, backend=backend, chunk=len(images))
        assert m.threads == 2
        np.testing.assert_array_equal(m.logits(images), want)
        np.testing.assert_array_equal(m.logits(images[:1]), want[:1])
        # Several chunks (the last one short): whole chunks on two Python threads.
        m.chunk = 3
        np.testing.assert_array_equal(m.logits(images), want)
        # Each thread runs its chunks on buffers of its own (where the backend allows it).
        assert set(m.graph._plans) <= ({0, 1} if m.backend.concurrent_calls else {0})
        np.testing.assert_array_equal(m.logits(images[5:]), want[5:])
        m.threads = 3                 # a new pool of three
        np.testing.assert_array_equal(m.logits(images), want)

    def test_a_stalled_thread_leaves_its_share_of_chunks_to_the_other(self, tiny_bundles, images,
                                                                       logits_by_backend):
        """Threads draw chunks from one queue: on a shared machine one core can run
        slower for a while, and a fixed half per thread would wait for it."""
        if "cython" not in BACKENDS:
            pytest.skip("the compiled kernels are not built")
        m = bnnlite.Model.load(tiny_bundles["birealnet"], threads=2, backend="cython", chunk=1)
        n = 8
        ran = {0: 0, 1: 0}
        others_done = threading.Event()
        run = m.graph.run

        def graph_run(x, threads, slot=0):
            if slot == 0 and ran[0] == 0:
                others_done.wait(timeout=10)  # slot 0 stalls on its first chunk
            out = run(x, threads, slot)
            ran[slot] += 1
            if slot == 1 and ran[1] == n - 1:
                others_done.set()
            return out

        m.graph.run = graph_run
        np.testing.assert_array_equal(m.logits(images[:n]), logits_by_backend[("birealnet", "cython")][:n])
        assert ran[0] <= 1 and ran[0] + ran[1] == n and others_done.is_set()

    @pytest.mark.parametrize("threads, chunk, want", [(1, 10, 1), (2, 10, 2), (2, 3, 1)])
    def test_blas_runs_the_models_threads_during_a_call_then_as_before(self, tiny_bundles, images,
                                                                        threads, chunk, want):
        """One chunk: BLAS gets the model's threads; chunks in parallel: one
        each (the workers are the threads).  Afterwards, what it had."""
        from threadpoolctl import threadpool_info, threadpool_limits

        def blas():
            return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

        if not blas():
            pytest.skip("threadpoolctl finds no BLAS library here")
        m = bnnlite.Model.load(tiny_bundles["birealnet"], threads=threads, chunk=chunk)
        seen, run = [], m.graph.run
        m.graph.run = lambda *a, **k: (seen.append(blas()), run(*a, **k))[1]
        with threadpool_limits(limits=3, user_api="blas"):
            m.logits(images[:10])
            assert blas() == [3] * len(blas())
        assert seen and all(s == [want] * len(s) for s in seen)

    def test_chunk_default_and_setter(self, tiny_bundles):
        m = bnnlite.Model.load(tiny_bundles["xnor"])
        assert m.chunk == 4
        m.threads = 2
        assert m.chunk == 4           # per thread: threads share a batch out by chunks
        m.chunk = 5                   # an explicit chunk stays
        m.threads = 1
        assert m.chunk == 5
        with pytest.raises(ValueError, match="chunk"):
            m.chunk = 0

    def test_threads_setter_validates(self, models):
        m = models["fp32"]
        with pytest.raises(ValueError, match="threads"):
            m.threads = 0
        assert m.threads == 1

    def test_results_do_not_alias_internal_buffers(self, models, images):
        m = models["xnor"]
        a = m.logits(images[:4])
        keep = a.copy()
        m.logits(images[4:8])  # same batch size: the plan's buffers are reused
        np.testing.assert_array_equal(a, keep)


class TestOnnx:
    @pytest.mark.parametrize("arch", ARCHS)
    def test_onnxruntime_matches_bnnlite(self, arch, tiny_bundles, images, models, tmp_path):
        pytest.importorskip("onnx")
        ort = pytest.importorskip("onnxruntime")
        from bnnlite.onnx_export import bundle_to_onnx
        path = tmp_path / f"{arch}.onnx"
        bundle_to_onnx(tiny_bundles[arch], path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = (images.astype(np.float32) / np.float32(255) - np.float32(MEAN)) / np.float32(STD)
        got = sess.run(["logits"], {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
        want = models[arch].logits(images)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


class TestDescription:
    @pytest.mark.parametrize("arch", ARCHS)
    def test_repr(self, arch, models):
        r = repr(models[arch])
        assert r.startswith("Model(") and repr(arch) in r
        assert "(16, 16, 3)" in r and f"classes={NUM_CLASSES}" in r
        assert f"{models[arch].weight_bytes:,} B" in r
        n_bin = sum(op.bits == 1 for op in models[arch].ops)
        assert f"({n_bin} binary)" in r
        assert (n_bin == 0) == (arch == "fp32")

    @pytest.mark.parametrize("arch", ARCHS)
    def test_summary(self, arch, models, tiny_bundles):
        m = models[arch]
        s = m.summary()
        assert repr(arch) in s and str(tiny_bundles[arch]) in s
        for op in m.ops:
            line = next(ln for ln in s.splitlines() if ln.strip().startswith(op.name + " "))
            assert f"{op.bits:>2}-bit" in line and f"{op.nbytes:,} B" in line
            assert type(op).__name__ in line
        assert f"weights: {m.weight_bytes:,} bytes" in s
        assert "classifier" in s
        if arch == "fp32":
            assert "1-bit" not in s
        else:
            assert "bconv1" in s and " 1-bit" in s and "32-bit" in s

    def test_metadata(self, models):
        m = models["birealnet"]
        assert m.architecture == "birealnet"
        assert m.class_names == CLASS_NAMES
        assert m.input_shape == (16, 16, 3)
        assert m.metrics["export_agreement"] == 1.0
        assert m.metrics["pytorch_test_acc_training"] == 0.5

    def test_binary_ops_store_fewer_bytes(self, models):
        assert models["xnor"].weight_bytes * 8 < models["fp32"].weight_bytes


class TestPretrained:
    def test_pretrained(self):
        from importlib import resources
        path = resources.files("bnnlite") / "data" / "birealnet.h5"
        if not path.is_file():
            pytest.skip("bnnlite/data/birealnet.h5 is not shipped yet")
        m = bnnlite.Model.pretrained()
        assert m.architecture == "birealnet"
        assert m.input_shape == (32, 32, 3) and len(m.class_names) == 10
        sample = np.load(resources.files("bnnlite") / "data" / "cifar10_test_sample.npz")
        x, y = sample["images"][:200], sample["labels"][:200]
        p = m.predict(x)
        assert p.shape == (200,) and p.min() >= 0 and p.max() < 10
        assert np.mean(p == y) > 0.7, "the shipped model should be far better than chance"

    def test_unknown_pretrained_name(self):
        with pytest.raises(ValueError, match="no pretrained model"):
            bnnlite.Model.pretrained("resnet9000")
