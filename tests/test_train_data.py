"""bnnlite.train.data: the two official CIFAR-10 byte layouts (the reader
lives in bnnlite.cifar, re-exported by bnnlite.train.data), the batch
augmentation and the validation split.

Tiny data sets are written here byte by byte (tests/_cifar_files.py) in the
binary and the python layout, each as an extracted folder and as a .tar.gz;
load_cifar must decode all four identically: pixel (r, c) channel ch of an
image equals byte ch*1024 + r*32 + c of its record.
"""
import tarfile

import numpy as np
import pytest
import torch

from _cifar_files import (CLASS_NAMES, make_tarball, random_batches, write_binary_folder,
                          write_python_folder)
from bnnlite.train.data import (Split, augment_batch, channel_stats, load_cifar, normalize,
                                train_val_split)

SIZES = (3, 1, 4, 2, 5)
TEST_SIZE = 3


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def batches():
    return random_batches(seed=11, train_sizes=SIZES, test_size=TEST_SIZE)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, batches):
    root = tmp_path_factory.mktemp("cifar")
    bin_dir = write_binary_folder(root / "bin", batches)
    py_dir = write_python_folder(root / "py", batches)
    return {
        "binary-folder": bin_dir,
        "binary-parent-folder": bin_dir.parent,   # a folder that contains cifar-10-batches-bin
        "binary-tar.gz": make_tarball(bin_dir, root / "cifar-10-binary.tar.gz"),
        "python-folder": py_dir,
        "python-tar.gz": make_tarball(py_dir, root / "cifar-10-python.tar.gz"),
    }


def _expected_images(rows):
    """Decode by the documented formula, one index at a time (not by reshape/transpose)."""
    n = len(rows)
    r, c, ch = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    flat_index = ch * 1024 + r * 32 + c                # (32, 32, 3)
    return np.stack([rows[i][flat_index] for i in range(n)]).astype(np.uint8)


class TestLoadCifar:
    @pytest.mark.parametrize("kind", ["binary-folder", "binary-parent-folder", "binary-tar.gz",
                                      "python-folder", "python-tar.gz"])
    def test_decodes_pixels_labels_and_names(self, sources, batches, kind):
        train, test, names = load_cifar(sources[kind])
        train_rows = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
        train_labels = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
        assert train.images.dtype == np.uint8 and train.images.shape == (sum(SIZES), 32, 32, 3)
        assert test.images.shape == (TEST_SIZE, 32, 32, 3)
        assert train.labels.dtype == np.int64
        np.testing.assert_array_equal(train.images, _expected_images(train_rows))
        np.testing.assert_array_equal(train.labels, train_labels)
        np.testing.assert_array_equal(test.images, _expected_images(batches["test_batch"][0]))
        np.testing.assert_array_equal(test.labels, batches["test_batch"][1])
        n_classes = int(max(train_labels.max(), batches["test_batch"][1].max())) + 1
        assert names == CLASS_NAMES[:n_classes]

    def test_single_pixel_positions(self, tmp_path):
        """One record whose only non-zero bytes are known: R(0, 1), G(2, 0), B(31, 31)."""
        rows = np.zeros((1, 3072), np.uint8)
        rows[0, 0 * 1024 + 0 * 32 + 1] = 10     # R plane, row 0, col 1
        rows[0, 1 * 1024 + 2 * 32 + 0] = 20     # G plane, row 2, col 0
        rows[0, 2 * 1024 + 31 * 32 + 31] = 30   # B plane, row 31, col 31
        one = {f"data_batch_{i}": (rows, np.array([i], np.uint8)) for i in range(1, 6)}
        one["test_batch"] = (rows, np.array([9], np.uint8))
        train, test, names = load_cifar(write_binary_folder(tmp_path, one))
        img = test.images[0]
        assert img[0, 1, 0] == 10 and img[2, 0, 1] == 20 and img[31, 31, 2] == 30
        assert int(img.astype(np.int64).sum()) == 60
        assert train.labels.tolist() == [1, 2, 3, 4, 5]
        assert names == CLASS_NAMES

    def test_all_sources_identical(self, sources):
        ref_train, ref_test, ref_names = load_cifar(sources["binary-folder"])
        for kind, path in sources.items():
            train, test, names = load_cifar(path)
            assert np.array_equal(train.images, ref_train.images), kind
            assert np.array_equal(train.labels, ref_train.labels), kind
            assert np.array_equal(test.images, ref_test.images), kind
            assert names == ref_names, kind

    def test_missing_class_names_fall_back(self, tmp_path, batches):
        d = write_binary_folder(tmp_path, batches)
        (d / "batches.meta.txt").unlink()
        _, _, names = load_cifar(d)
        assert names[0] == "class_0" and len(names) == 10


class TestLoadCifarErrors:
    def test_missing_path(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="no CIFAR data"):
            load_cifar(tmp_path / "nope")

    def test_missing_batch_file(self, tmp_path, batches):
        d = write_binary_folder(tmp_path, batches)
        (d / "data_batch_3.bin").unlink()
        with pytest.raises(ValueError, match="data_batch_1.bin"):  # names the expected files
            load_cifar(d)

    def test_empty_folder(self, tmp_path):
        with pytest.raises(ValueError, match="neither the CIFAR-10 binary layout"):
            load_cifar(tmp_path)

    def test_wrong_record_size(self, tmp_path, batches):
        d = write_binary_folder(tmp_path, batches)
        with open(d / "data_batch_2.bin", "ab") as f:
            f.write(b"\x00" * 100)
        with pytest.raises(ValueError, match=r"data_batch_2\.bin.*3073-byte"):
            load_cifar(d)

    def test_label_out_of_range(self, tmp_path, batches):
        bad = dict(batches)
        rows, labels = bad["test_batch"]
        bad["test_batch"] = (rows, np.array([0, 12, 1], np.uint8))
        with pytest.raises(ValueError, match="label 12"):
            load_cifar(write_binary_folder(tmp_path, bad))

    def test_python_data_shape_mismatch(self, tmp_path, batches):
        bad = dict(batches)
        rows, labels = bad["data_batch_4"]
        bad["data_batch_4"] = (rows[:, :3000], labels)
        with pytest.raises(ValueError, match="data_batch_4"):
            load_cifar(write_python_folder(tmp_path, bad))

    def test_file_that_is_not_a_tarball(self, tmp_path):
        p = tmp_path / "cifar-10-binary.tar.gz"
        p.write_bytes(b"this is not a tar file" * 10)
        with pytest.raises(ValueError, match="tar"):
            load_cifar(p)

    def test_truncated_tarball(self, tmp_path):
        big = random_batches(seed=2, train_sizes=(40,) * 5, test_size=40)
        tar = make_tarball(write_binary_folder(tmp_path / "x", big), tmp_path / "c.tar.gz")
        cut = tmp_path / "cut.tar.gz"
        cut.write_bytes(tar.read_bytes()[:tar.stat().st_size // 2])
        with pytest.raises(ValueError, match="cut.tar.gz"):
            load_cifar(cut)

    def test_tarball_missing_member(self, tmp_path, batches):
        d = write_binary_folder(tmp_path / "x", batches)
        (d / "test_batch.bin").unlink()
        tar = make_tarball(d, tmp_path / "cifar-10-binary.tar.gz")
        with tarfile.open(tar) as t:
            assert not any(n.endswith("test_batch.bin") for n in t.getnames())
        with pytest.raises(ValueError, match="test_batch"):
            load_cifar(tar)


def _zero_padded(img, pad):
    return np.pad(img, ((pad, pad), (pad, pad), (0, 0)))


def _find_transform(out, img, pad):
    """All (oy, ox, flip) for which ``out`` is that crop (mirrored if flip) of the padded image."""
    p = _zero_padded(img, pad)
    h, w = img.shape[:2]
    hits = []
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            crop = p[oy:oy + h, ox:ox + w]
            for flip in (False, True):
                if np.array_equal(out, crop[:, ::-1] if flip else crop):
                    hits.append((oy, ox, flip))
    return hits


class TestAugmentBatch:
    @pytest.fixture
    def images(self):
        rng = np.random.default_rng(5)
        return torch.from_numpy(rng.integers(1, 256, (24, 32, 32, 3), dtype=np.uint8))

    def test_shape_dtype(self, images):
        out = augment_batch(images, torch.Generator().manual_seed(0))
        assert out.shape == images.shape and out.dtype == torch.uint8

    def test_deterministic_for_seeded_generator(self, images):
        a = augment_batch(images, torch.Generator().manual_seed(123))
        b = augment_batch(images, torch.Generator().manual_seed(123))
        c = augment_batch(images, torch.Generator().manual_seed(124))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)

    def test_each_image_is_a_shifted_mirrored_crop_of_the_zero_padded_original(self, images):
        out = augment_batch(images, torch.Generator().manual_seed(7), pad=4).numpy()
        seen = set()
        for i in range(len(out)):
            hits = _find_transform(out[i], images[i].numpy(), 4)
            assert len(hits) == 1, f"image {i}: {hits}"  # pixels >= 1, so the match is unique
            seen.add(hits[0])
        flips = {h[2] for h in seen}
        assert flips == {False, True}                 # both flipped and unflipped occur
        assert len({(h[0], h[1]) for h in seen}) > 5  # and many different offsets

    def test_zero_pixels_come_from_padding(self, images):
        out = augment_batch(images, torch.Generator().manual_seed(9), pad=4).numpy()
        # originals have no zero pixel, so every zero is padding, in whole rows/columns at the border
        for o in out:
            zero = (o == 0).all(-1)
            rows, cols = zero.all(1), zero.all(0)
            assert np.array_equal(zero, rows[:, None] | cols[None, :])
            assert rows.sum() <= 4 and cols.sum() <= 4

    def test_pad_zero_is_identity_or_mirror(self, images):
        out = augment_batch(images, torch.Generator().manual_seed(1), pad=0)
        for o, i in zip(out, images):
            assert torch.equal(o, i) or torch.equal(o, i.flip(1))


class TestSplitAndStats:
    def _split(self, n=50):
        rng = np.random.default_rng(0)
        return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                     np.arange(n, dtype=np.int64))   # label = original index

    def test_disjoint_and_covering(self):
        s = self._split()
        tr, va = train_val_split(s, 12, seed=3)
        assert len(va) == 12 and len(tr) == 38
        assert set(tr.labels.tolist()).isdisjoint(va.labels.tolist())
        assert sorted(tr.labels.tolist() + va.labels.tolist()) == list(range(50))
        np.testing.assert_array_equal(tr.images, s.images[tr.labels])
        np.testing.assert_array_equal(va.images, s.images[va.labels])

    def test_seeded(self):
        s = self._split()
        a = train_val_split(s, 10, seed=1)[1].labels
        assert np.array_equal(a, train_val_split(s, 10, seed=1)[1].labels)
        assert not np.array_equal(a, train_val_split(s, 10, seed=2)[1].labels)

    def test_zero_val(self):
        s = self._split()
        tr, va = train_val_split(s, 0)
        assert len(tr) == 50 and len(va) == 0

    def test_channel_stats_and_normalize(self):
        imgs = np.zeros((2, 2, 2, 3), np.uint8)
        imgs[..., 0] = 255
        imgs[0, ..., 1] = 51
        mean, std = channel_stats(imgs)
        assert mean == [1.0, 0.1, 0.0]
        assert std[0] == 0.0 and std[1] == pytest.approx(0.1)
        x = normalize(torch.from_numpy(imgs), [0.5, 0.5, 0.5], [0.25, 0.5, 1.0])
        assert x.shape == (2, 3, 2, 2) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert x[0, 0, 0, 0].item() == pytest.approx(2.0)        # (1 - .5) / .25
        assert x[0, 1, 0, 0].item() == pytest.approx(-0.6)       # (.2 - .5) / .5
        assert x[1, 2, 1, 1].item() == pytest.approx(-0.5)       # (0 - .5) / 1
