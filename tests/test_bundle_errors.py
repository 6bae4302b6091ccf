"""Every way a bundle or an input can be wrong gives a clear, typed error.

* Bundles: ``Model.load`` raises ``BundleError`` whose message says what is
  wrong (matched here), for files that are not HDF5, HDF5 files that are not
  bundles, broken seals, and sealed bundles with bad contents.  Contents are
  edited with h5py and then re-sealed (``bnnlite.bundle.seal``), so the edit
  reaches the validator instead of stopping at the checksum.
* Inputs: ``predict`` raises ValueError naming the problem.
* ``bnnlite-export``: clean click errors, atomic writes.
"""
import json
import os
import shutil
import tracemalloc

import h5py
import numpy as np
import pytest

import bnnlite
from bnnlite.bundle import FORMAT_VERSION, MAX_BUNDLE_BYTES, USERBLOCK, BundleError, read_bundle, seal

from _bundle_edit import edit, edit_graph, flip_byte, op_index, replace_dataset, set_attr, set_bits
from _models import IMAGE_SIZE


@pytest.fixture
def xnor(tiny_bundles):
    return tiny_bundles["xnor"]


@pytest.fixture
def bireal(tiny_bundles):
    return tiny_bundles["birealnet"]


def load_fails(path, match):
    with pytest.raises(BundleError, match=match) as ei:
        bnnlite.Model.load(path)
    assert str(path) in str(ei.value), "the message should name the file"
    return ei.value


# ---------------------------------------------------------------- not a bundle at all
class TestNotABundle:
    def test_random_bytes(self, tmp_path):
        p = tmp_path / "random.h5"
        p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        load_fails(p, "not an HDF5 file")

    def test_empty_file(self, tmp_path):
        p = tmp_path / "empty.h5"
        p.write_bytes(b"")
        load_fails(p, "not an HDF5 file")

    def test_text_file(self, tmp_path):
        p = tmp_path / "model.h5"
        p.write_text("this is a text file, not a model\n" * 40)
        load_fails(p, "not an HDF5 file")

    def test_plain_hdf5_without_user_block(self, tmp_path):
        p = tmp_path / "plain.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("x", data=np.arange(10))
            set_attr(f, "format", "bnnlite")
        load_fails(p, "an HDF5 file, but not a bnnlite bundle")

    def test_hdf5_with_user_block_but_no_seal(self, tmp_path):
        p = tmp_path / "ub.h5"
        with h5py.File(p, "w", userblock_size=USERBLOCK) as f:
            set_attr(f, "format", "bnnlite")
        load_fails(p, "no bnnlite seal")

    def test_nonexistent_path(self, tmp_path):
        load_fails(tmp_path / "nope.h5", "cannot read")

    def test_directory(self, tmp_path):
        d = tmp_path / "dir.h5"
        d.mkdir()
        load_fails(d, "not a regular file")

    def test_fifo_does_not_hang(self, tmp_path):
        if not hasattr(os, "mkfifo"):
            pytest.skip("no named pipes here")
        p = tmp_path / "pipe.h5"
        os.mkfifo(p)
        load_fails(p, "not a regular file")

    def test_larger_than_limit_is_refused_before_reading(self, tmp_path):
        p = tmp_path / "huge.h5"
        with open(p, "wb") as fh:  # sparse: no disk space, no reading
            fh.truncate(MAX_BUNDLE_BYTES + 1)
        load_fails(p, "larger than")

    def test_bundle_error_is_a_value_error(self):
        assert issubclass(BundleError, ValueError)
        assert bnnlite.BundleError is BundleError


# ---------------------------------------------------------------- the seal
class TestSeal:
    def test_valid_bundle_loads(self, xnor):
        assert read_bundle(xnor).header["architecture"] == "xnor"

    @pytest.mark.parametrize("keep", [0.5, 0.99])
    def test_truncated(self, xnor, tmp_path, keep):
        data = xnor.read_bytes()
        p = tmp_path / "t.h5"
        p.write_bytes(data[:int(len(data) * keep)])
        load_fails(p, "truncated or extended")

    def test_truncated_inside_user_block(self, xnor, tmp_path):
        p = tmp_path / "t.h5"
        p.write_bytes(xnor.read_bytes()[:300])
        load_fails(p, "not an HDF5 file")

    def test_extended(self, xnor, tmp_path):
        p = tmp_path / "x.h5"
        p.write_bytes(xnor.read_bytes() + b"\0" * 16)
        load_fails(p, "truncated or extended")

    @pytest.mark.parametrize("where", ["superblock", "middle", "last"])
    def test_one_flipped_byte(self, xnor, tmp_path, where):
        p = tmp_path / "f.h5"
        shutil.copyfile(xnor, p)
        size = p.stat().st_size
        offset = {"superblock": USERBLOCK + 20, "middle": size // 2, "last": size - 1}[where]
        flip_byte(p, offset, 0x01)
        load_fails(p, "SHA-256 does not match")

    def test_flipped_byte_in_the_seal_digest(self, xnor, tmp_path):
        p = tmp_path / "f.h5"
        shutil.copyfile(xnor, p)
        flip_byte(p, 14 + 8 + 3)
        load_fails(p, "SHA-256 does not match")

    def test_edit_without_reseal_is_caught(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "e.h5", lambda f: set_attr(f, "producer", "me"), reseal=False)
        load_fails(p, "truncated or extended|SHA-256 does not match")

    def test_reseal_makes_an_edit_valid(self, xnor, tmp_path):
        # The premise of every test below: an edit + seal() that changes nothing harmful loads.
        p = edit(xnor, tmp_path / "e.h5", lambda f: set_attr(f, "producer", "someone else"))
        assert bnnlite.Model.load(p).header["producer"] == "someone else"

    def test_seal_rejects_tiny_file(self, tmp_path):
        p = tmp_path / "tiny"
        p.write_bytes(b"x" * 10)
        with pytest.raises(BundleError, match="too short"):
            seal(p)


# ---------------------------------------------------------------- root attributes
class TestHeader:
    def test_newer_format_version(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "v.h5", lambda f: set_attr(f, "format_version", FORMAT_VERSION + 1))
        load_fails(p, f"format version {FORMAT_VERSION + 1} is newer than this bnnlite reads")

    @pytest.mark.parametrize("key", ["format", "graph", "metrics", "producer"])
    def test_variable_length_strings_are_refused_unread(self, xnor, tmp_path, key):
        # libhdf5 follows a variable-length string's heap reference wherever the
        # file points it; fixed-length strings carry their size in the type.
        def to_vlen(f):
            f.attrs[key] = f.attrs[key].decode("utf-8")
        p = edit(xnor, tmp_path / "vlen.h5", to_vlen)
        load_fails(p, f"root attribute {key!r} is a variable-length string")

    def test_oversized_numeric_attribute(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "big.h5", lambda f: set_attr(f, "normalization_mean", np.zeros(1 << 17)))
        load_fails(p, "root attribute 'normalization_mean' should be at most")

    @pytest.mark.parametrize("v", [0, -1])
    def test_invalid_format_version(self, xnor, tmp_path, v):
        p = edit(xnor, tmp_path / "v.h5", lambda f: set_attr(f, "format_version", v))
        load_fails(p, f"format version {v} is not valid")

    def test_format_version_not_an_integer(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "v.h5", lambda f: set_attr(f, "format_version", "one"))
        load_fails(p, "format_version is missing or not an integer")

    def test_format_wrong(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "fmt.h5", lambda f: set_attr(f, "format", "keras"))
        load_fails(p, "format attribute is 'keras', not 'bnnlite'")

    def test_format_missing(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "fmt.h5", lambda f: f.attrs.__delitem__("format"))
        load_fails(p, "format attribute is None")

    @pytest.mark.parametrize("key", ["producer", "architecture", "input_layout", "normalization_mean",
                                     "normalization_std", "config", "class_names", "metrics", "graph"])
    def test_missing_root_attribute(self, xnor, tmp_path, key):
        p = edit(xnor, tmp_path / "m.h5", lambda f: f.attrs.__delitem__(key))
        load_fails(p, f"root attribute '{key}' is missing")

    @pytest.mark.parametrize("shape", [[16, 16], [16, 16, 3, 1], [0, 16, 3], [16, 16, 70000], [-16, 16, 3],
                                       [16.0, 16.0, 3.0]])
    def test_bad_input_shape(self, xnor, tmp_path, shape):
        p = edit(xnor, tmp_path / "s.h5", lambda f: set_attr(f, "input_shape", np.array(shape)))
        load_fails(p, "input_shape should be three integers")

    def test_input_shape_disagrees_with_graph(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "s.h5", lambda f: set_attr(f, "input_shape", np.array([16, 16, 4])))
        load_fails(p, r"normalization_std' should be 4 numbers")

    def test_layout(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "l.h5", lambda f: set_attr(f, "input_layout", "NCHW"))
        load_fails(p, "input_layout 'NCHW' is not supported")

    @pytest.mark.parametrize("key,value,match", [
        ("normalization_mean", [0.5, 0.5], "should be 3 numbers"),
        ("normalization_mean", [0.5, np.nan, 0.5], "NaN or infinity"),
        ("normalization_std", [0.5, np.inf, 0.5], "NaN or infinity"),
        ("normalization_std", [0.5, 0.0, 0.5], "must be positive"),
        ("normalization_std", [0.5, -0.2, 0.5], "must be positive"),
        ("normalization_std", "0.5", "should be 3 numbers"),
    ])
    def test_bad_normalization(self, xnor, tmp_path, key, value, match):
        value = value if isinstance(value, str) else np.asarray(value)
        p = edit(xnor, tmp_path / "n.h5", lambda f: set_attr(f, key, value))
        load_fails(p, match)

    def test_bad_json(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "j.h5", lambda f: set_attr(f, "graph", '[{"op": "dense",'))
        load_fails(p, "root attribute 'graph' is not valid JSON")

    @pytest.mark.parametrize("key,value,match", [
        ("graph", '{"op": "dense"}', "'graph' should be a JSON list"),
        ("graph", "[]", "graph has 0 ops"),
        ("config", "[1, 2]", "'config' should be a JSON dict"),
        ("class_names", '["a", 1, "c"]', "class_names should be a JSON list of strings"),
        ("metrics", "NaN-ish", "'metrics' is not valid JSON"),
    ])
    def test_bad_json_values(self, xnor, tmp_path, key, value, match):
        p = edit(xnor, tmp_path / "j.h5", lambda f: set_attr(f, key, value))
        load_fails(p, match)

    def test_deeply_nested_json(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "j.h5", lambda f: set_attr(f, "config", "[" * 100_000 + "]" * 100_000))
        load_fails(p, "root attribute 'config' is not valid JSON")

    def test_oversized_json(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "j.h5", lambda f: set_attr(f, "metrics", json.dumps({"x": "y" * (2 << 20)})))
        load_fails(p, "root attribute 'metrics' should be one string of at most")

    @pytest.mark.parametrize("key", ["architecture", "graph", "format_version", "input_shape"])
    def test_attribute_of_an_unsupported_hdf5_type(self, xnor, tmp_path, key):
        def fn(f):
            del f.attrs[key]
            f.attrs.create(key, np.array([np.arange(3, dtype=np.int32)] + [np.arange(2, dtype=np.int32)],
                                         dtype=object), dtype=h5py.vlen_dtype(np.int32))
        p = edit(xnor, tmp_path / "t.h5", fn)
        load_fails(p, f"'{key}' is not stored as a string or numbers|format_version is missing")

    def test_class_names_count_mismatch(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "c.h5", lambda f: set_attr(f, "class_names", json.dumps(["a", "b"])))
        load_fails(p, "2 class names for 7 logits")

    def test_no_class_names_is_allowed(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "c.h5", lambda f: set_attr(f, "class_names", "[]"))
        assert bnnlite.Model.load(p).class_names == []


# ---------------------------------------------------------------- graph structure
class TestGraph:
    def test_unknown_input(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "bconv2")]["inputs"] = ["no_such_tensor"]
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, r"op \d+ \('bconv2'\): input 'no_such_tensor' is not produced by an earlier op")

    def test_input_produced_later(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "conv0")]["inputs"] = ["bits1"]
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "input 'bits1' is not produced by an earlier op")

    def test_duplicate_output(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "pool5")]["outputs"] = ["bconv5"]
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "output 'bconv5' is produced twice")

    def test_output_named_input(self, xnor, tmp_path):
        def fn(g):
            g[0]["outputs"] = ["input"]
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "output 'input' is produced twice")

    def test_duplicate_op_name(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "pool3")]["name"] = "pool1"
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "op names must be unique")

    @pytest.mark.parametrize("name", ["", "a/b", 7, None])
    def test_bad_op_name(self, xnor, tmp_path, name):
        def fn(g):
            g[op_index(g, "pool3")]["name"] = name
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "op names must be unique non-empty strings")

    def test_unknown_op_type(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "pool3")]["op"] = "minpool2d"
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "unknown op type 'minpool2d'")

    def test_entry_not_an_object(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, lambda g: g.insert(2, ["dense"])))
        load_fails(p, "graph entry 2 is not an op object")

    def test_wrong_number_of_inputs(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "pool3")]["inputs"] = ["bconv3", "bconv3"]
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "needs 1..1 input names and one output name")

    def test_two_outputs(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "pool3")]["outputs"] = ["a", "b"]
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "one output name")

    def test_bits_where_float_needed(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "pool5")]["inputs"] = ["bits2"]
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "input 'bits2' is bits, maxpool2d needs float")

    def test_float_where_bits_needed(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "bconv1")]["inputs"] = ["conv0"]
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "input 'conv0' is float, bconv2d needs bits")

    def test_sign_pack_of_a_flat_vector(self, xnor, tmp_path):
        # A dangling sign_pack of the flattened features: bits must be (H, W, C) maps.
        def fn(g):
            g.append({"op": "sign_pack", "name": "extra", "inputs": ["flat"], "outputs": ["extra"],
                      "attrs": {"channels": 288}})
        def edit_fn(f):
            edit_graph(f, fn)
            f.create_dataset("ops/extra/threshold", data=np.zeros(288, np.float32))
        p = edit(xnor, tmp_path / "g.h5", edit_fn)
        load_fails(p, r"op 12 \('extra'\): input of shape \(288,\) is not an \(H, W, C\) map")

    def test_no_logits(self, xnor, tmp_path):
        def fn(g):
            g[-1]["outputs"] = ["scores"]
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "no op produces the float vector 'logits'")

    @pytest.mark.parametrize("key,value", [("cout", -20), ("cout", 0), ("cout", 1 << 40), ("kh", 2.5),
                                           ("kh", "3"), ("stride", True), ("padding", None), ("cin", [8])])
    def test_bad_int_attribute(self, xnor, tmp_path, key, value):
        def fn(g):
            g[op_index(g, "bconv1")]["attrs"][key] = value
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, f"attribute '{key}' = .* should be an integer in")

    def test_bad_string_attribute(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "bconv1")]["attrs"]["output"] = "int8"
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "attribute 'output' = 'int8' should be one of float, bits")

    def test_channel_mismatch(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "bconv2")]["attrs"]["cin"] = 21
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, r"input shape \(8, 8, 20\) does not have cin=21 channels")

    def test_kernel_larger_than_input(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "bconv5")]["attrs"].update(kh=7, kw=7)
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "kernel 7x7 with padding 1 does not fit input")

    def test_pool_other_than_2x2(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "pool1")]["attrs"]["size"] = 3
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "only size=2, stride=2 pooling is supported")

    def test_residual_shape_mismatch(self, bireal, tmp_path):
        def fn(g):
            g[op_index(g, "bconv3")]["inputs"][1] = "conv0"  # 16x16 residual for an 8x8 output
        p = edit(bireal, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "residual 'conv0' of shape")

    def test_residual_with_bits_output(self, xnor, tmp_path):
        def fn(g):
            g[op_index(g, "bconv2")]["inputs"].append("conv0")
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, "a residual input needs output='float'")

    def test_dense_units_mismatch(self, xnor, tmp_path):
        def fn(g):
            g[-1]["attrs"]["units_in"] = 289
        p = edit(xnor, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, r"input shape \(288,\) is not \(289,\)")


# ---------------------------------------------------------------- datasets
class TestDatasets:
    def test_missing_dataset(self, xnor, tmp_path):
        p = edit(xnor, tmp_path / "d.h5", lambda f: f.__delitem__("ops/bconv3/weight"))
        load_fails(p, r"\('bconv3'\): dataset 'weight' is missing")

    def test_missing_op_group(self, bireal, tmp_path):
        p = edit(bireal, tmp_path / "d.h5", lambda f: f.__delitem__("ops/bconv2"))
        load_fails(p, r"\('bconv2'\): dataset 'weight' is missing")

    def test_missing_rprelu_dataset(self, bireal, tmp_path):
        p = edit(bireal, tmp_path / "d.h5", lambda f: f.__delitem__("ops/bconv4/rprelu_zeta"))
        load_fails(p, "dataset 'rprelu_zeta' is missing")

    def test_group_instead_of_dataset(self, xnor, tmp_path):
        def fn(f):
            del f["ops/classifier/bias"]
            f.create_group("ops/classifier/bias")
        load_fails(edit(xnor, tmp_path / "d.h5", fn), "'bias' is not a dataset")

    @pytest.mark.parametrize("path,shape", [("ops/bconv2/weight", (70, 3, 3, 2)),
                                            ("ops/classifier/weight", (288, 7)),
                                            ("ops/conv0/bias", (8, 1)),
                                            ("ops/bconv5/multiplier", ()),
                                            ("ops/sign1/threshold", (0,))])
    def test_wrong_shape(self, xnor, tmp_path, path, shape):
        def fn(f):
            dtype = f[path].dtype
            replace_dataset(f, path, np.zeros(shape, dtype))
        p = edit(xnor, tmp_path / "d.h5", fn)
        load_fails(p, f"dataset '{path.rsplit('/', 1)[1]}' has shape")

    @pytest.mark.parametrize("path,dtype", [("ops/bconv2/weight", np.int64), ("ops/bconv2/weight", np.float32),
                                            ("ops/classifier/weight", np.float64),
                                            ("ops/classifier/weight", ">f4"),
                                            ("ops/bconv2/threshold", np.int64),
                                            ("ops/conv0/bias", np.float16)])
    def test_wrong_dtype(self, xnor, tmp_path, path, dtype):
        def fn(f):
            data = f[path][()]
            replace_dataset(f, path, data.astype(dtype))
        p = edit(xnor, tmp_path / "d.h5", fn)
        load_fails(p, f"dataset '{path.rsplit('/', 1)[1]}' has dtype")

    @pytest.mark.parametrize("path", ["ops/conv0/weight", "ops/classifier/weight", "ops/bconv5/multiplier",
                                      "ops/sign1/threshold"])
    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_nan_in_weights(self, xnor, tmp_path, path, bad):
        def fn(f):
            a = f[path][()]
            a.reshape(-1)[a.size // 2] = bad
            f[path][...] = a
        p = edit(xnor, tmp_path / "d.h5", fn)
        load_fails(p, f"dataset '{path.rsplit('/', 1)[1]}' holds NaN or infinity")

    @pytest.mark.parametrize("op", ["bconv1", "bconv3", "bconv5"])
    def test_nonzero_tail_bits(self, xnor, tmp_path, op):
        def fn(f):
            path = f"ops/{op}/weight"
            f[path][...] = set_bits(f[path][()], 1 << 63)
        p = edit(xnor, tmp_path / "d.h5", fn)
        load_fails(p, rf"\('{op}'\): packed weight has non-zero tail bits")

    def test_real_bits_may_be_anything(self, xnor, tmp_path):
        # Control for the test above: flipping the *real* bit 0 is a valid (different) bundle.
        def fn(f):
            f["ops/bconv3/weight"][...] = f["ops/bconv3/weight"][()] ^ np.uint64(1)
        m = bnnlite.Model.load(edit(xnor, tmp_path / "d.h5", fn))
        assert m.predict(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)).shape == (1,)

    def test_huge_declared_shape_allocates_nothing(self, xnor, tmp_path):
        def fn(f):
            replace_dataset(f, "ops/classifier/weight", shape=(1 << 40, 1 << 20), dtype=np.float32,
                            chunks=(1, 1024))
        p = edit(xnor, tmp_path / "d.h5", fn)
        assert p.stat().st_size < 1 << 20
        tracemalloc.start()
        try:
            load_fails(p, r"dataset 'weight' has shape \(1099511627776, 1048576\), expected \(7, 288\)")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 32 << 20, f"peak allocation {peak} bytes"

    def test_huge_consistent_datasets_in_a_tiny_file(self, xnor, tmp_path):
        # Attributes and datasets agree, but the (chunked, never written) datasets declare far
        # more bytes than the file holds: the loader must not allocate them.
        def fn(f):
            def g(graph):
                graph += [{"op": "dense", "name": "big1", "inputs": ["flat"], "outputs": ["big1"],
                           "attrs": {"units_in": 288, "units_out": 65536}},
                          {"op": "dense", "name": "big2", "inputs": ["big1"], "outputs": ["big2"],
                           "attrs": {"units_in": 65536, "units_out": 1024}}]
            edit_graph(f, g)
            for name, shape in (("big1", (65536, 288)), ("big2", (1024, 65536))):
                f.create_dataset(f"ops/{name}/weight", shape=shape, dtype=np.float32, chunks=(64, 64))
                f.create_dataset(f"ops/{name}/bias", data=np.zeros(shape[0], np.float32))
        p = edit(xnor, tmp_path / "d.h5", fn)
        assert p.stat().st_size < 1 << 20
        tracemalloc.start()
        try:
            load_fails(p, "more than the file")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 32 << 20, f"peak allocation {peak} bytes"


# ---------------------------------------------------------------- inputs to predict
class TestInputErrors:
    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, tiny_bundles):
        return bnnlite.Model.load(tiny_bundles["birealnet"])

    @pytest.mark.parametrize("shape", [(16, 16), (2, 16, 16), (2, 16, 16, 4), (2, 15, 16, 3), (2, 3, 16, 16),
                                       (1, 1, 16, 16, 3)])
    def test_wrong_shape(self, model, shape):
        with pytest.raises(ValueError, match=r"images must have shape \(N, 16, 16, 3\) or \(16, 16, 3\)"):
            model.predict(np.zeros(shape, np.uint8))

    @pytest.mark.parametrize("dtype", [np.int64, np.int8, np.uint16, np.bool_, np.complex64, object])
    def test_wrong_dtype(self, model, dtype):
        with pytest.raises(ValueError, match=r"images must be uint8 \(0-255\) or float \(0-1\), got dtype"):
            model.predict(np.zeros((2, 16, 16, 3), dtype))

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite(self, model, bad):
        x = np.full((2, 16, 16, 3), 0.5, np.float32)
        x[1, 3, 4, 2] = bad
        with pytest.raises(ValueError, match="images contain NaN or infinity"):
            model.predict(x)

    @pytest.mark.parametrize("bad", [-0.01, 1.01, 255.0])
    def test_float_out_of_range(self, model, bad):
        x = np.full((2, 16, 16, 3), 0.5, np.float64)
        x[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\].*pass uint8"):
            model.predict(x)

    def test_float_range_edges_are_valid(self, model):
        x = np.zeros((2, 16, 16, 3), np.float32)
        x[1] = 1.0
        assert model.predict(x).shape == (2,)

    def test_errors_from_every_entry_point(self, model):
        x = np.zeros((16, 16, 4), np.uint8)
        for fn in (model.predict, model.predict_proba, model.logits):
            with pytest.raises(ValueError, match="images must have shape"):
                fn(x)

    def test_list_input(self, model):
        with pytest.raises(ValueError, match="got dtype int64"):
            model.predict([[[[0, 0, 0]] * 16] * 16])

    @pytest.mark.parametrize("kwargs,match", [({"threads": 0}, "threads must be an integer >= 1"),
                                              ({"threads": -2}, "threads"),
                                              ({"threads": 1.5}, "threads"),
                                              ({"threads": True}, "threads"),
                                              ({"chunk": 0}, "chunk must be an integer >= 1"),
                                              ({"backend": "cuda"}, "unknown name 'cuda'")])
    def test_bad_load_options(self, tiny_bundles, kwargs, match):
        with pytest.raises(ValueError, match=match):
            bnnlite.Model.load(tiny_bundles["xnor"], **kwargs)


# ---------------------------------------------------------------- the exporter CLI
class TestExportCli:
    def _run(self, args):
        from click.testing import CliRunner
        from bnnlite.train.export import main
        return CliRunner().invoke(main, [str(a) for a in args])

    def test_not_a_checkpoint(self, tmp_path):
        src = tmp_path / "notes.txt"
        src.write_text("not a checkpoint")
        r = self._run([src, tmp_path / "out.h5"])
        assert r.exit_code == 1, r.output
        assert isinstance(r.exception, SystemExit), f"uncaught {r.exception!r}"
        assert "Error:" in r.output and "not a readable PyTorch checkpoint" in r.output
        assert "Traceback" not in r.output
        assert not (tmp_path / "out.h5").exists()

    def test_torch_file_that_is_not_a_bnnlite_checkpoint(self, tmp_path, torch1):
        src = tmp_path / "other.pt"
        torch1.save({"state_dict": {}}, src)
        r = self._run([src, tmp_path / "out.h5"])
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
        assert "not a bnnlite checkpoint" in r.output

    def test_missing_checkpoint(self, tmp_path):
        r = self._run([tmp_path / "nope.pt", tmp_path / "out.h5"])
        assert r.exit_code == 2 and "does not exist" in r.output

    def test_export_writes_atomically(self, tiny_models, tmp_path):
        from _models import write_checkpoint
        ckpt = write_checkpoint(tiny_models["xnor"], tmp_path / "x.pt")
        out = tmp_path / "out" / "m.h5"
        out.parent.mkdir()
        r = self._run([ckpt, out, "--probe", "8"])
        assert r.exit_code == 0, r.output
        assert sorted(os.listdir(out.parent)) == ["m.h5"]
        assert bnnlite.Model.load(out).architecture == "xnor"

    def test_written_files_get_the_usual_permissions(self, tiny_bundles, tmp_path):
        # write_bundle goes through a mkstemp file (mode 0600): the result must not stay private.
        from bnnlite.bundle import read_bundle, write_bundle
        b = read_bundle(tiny_bundles["xnor"])
        header = dict(b.header, input_shape=list(b.header["input_shape"]))
        mask = os.umask(0o022)
        try:
            write_bundle(tmp_path / "w.h5", header, b.ops)
        finally:
            os.umask(mask)
        assert (tmp_path / "w.h5").stat().st_mode & 0o777 == 0o644
        assert bnnlite.Model.load(tmp_path / "w.h5").architecture == "xnor"

    def test_failed_export_leaves_old_file_and_no_temp(self, tiny_models, tiny_bundles, tmp_path, monkeypatch):
        import bnnlite.bundle as bb
        from _models import write_checkpoint
        ckpt = write_checkpoint(tiny_models["birealnet"], tmp_path / "b.pt")
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        out = out_dir / "m.h5"
        shutil.copyfile(tiny_bundles["xnor"], out)
        before = out.read_bytes()
        real_seal, calls = bb.seal, []

        def failing_seal(path):  # the draft is sealed fine; the final write dies mid-way
            calls.append(path)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
            real_seal(path)
        monkeypatch.setattr(bb, "seal", failing_seal)
        with pytest.raises(OSError, match="No space left"):
            from bnnlite.train.export import export_checkpoint
            export_checkpoint(ckpt, out, probe=4, log=lambda *a: None)
        assert len(calls) == 2
        assert out.read_bytes() == before
        assert sorted(os.listdir(out_dir)) == ["m.h5"]

    def test_export_refuses_a_bundle_that_disagrees(self, tiny_models, tmp_path, monkeypatch):
        import bnnlite.train.export as ex
        from _models import write_checkpoint
        ckpt = write_checkpoint(tiny_models["birealnet"], tmp_path / "b.pt")
        real = ex.lower

        def broken(model, input_shape, log=None):
            ops = real(model, input_shape, log)
            rec = next(o for o in ops if o.name == "bconv3")
            rec.arrays["multiplier"] = -rec.arrays["multiplier"]
            return ops
        monkeypatch.setattr(ex, "lower", broken)
        r = self._run([ckpt, tmp_path / "out.h5", "--probe", "16"])
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
        assert "refusing to write" in r.output and "disagrees with PyTorch" in r.output
        assert sorted(os.listdir(tmp_path)) == ["b.pt"]


# ---------------------------------------------------------------- format versions
def _as_format_2(f):
    """Rewrite a format-3 bundle as format 2 wrote it: BN folded into the conv weights,
    one multiplier (alpha * a) for binary convs, no 'scale' datasets."""
    for op in f["ops"]:
        g = f["ops"][op]
        if "scale" in g:
            m = (g["scale"][()] * g["multiplier"][()]).astype(np.float32)
            del g["scale"]
            g["multiplier"][...] = m
        elif "weight" in g and g["weight"].dtype == np.float32 and "multiplier" in g:
            g["weight"][...] = g["weight"][()] * g["multiplier"][()]
            del g["multiplier"]
    set_attr(f, "format_version", 2)


class TestFormatVersions:
    def test_writer_writes_the_current_version(self, bireal):
        assert FORMAT_VERSION == 3
        assert read_bundle(bireal).header["format_version"] == 3

    def test_format_2_bundle_loads_with_its_own_formula(self, bireal, tmp_path):
        from bnnlite.backends import reference
        from _models import random_images
        p = edit(bireal, tmp_path / "v2.h5", _as_format_2)
        m2 = bnnlite.Model.load(p, backend="numpy")
        conv0 = m2.graph.ops[0]
        assert conv0.mult is None               # y = conv + bias
        b = next(op for op in m2.graph.ops if op.name == "bconv1")
        v2 = read_bundle(p).ops
        rec = next(r for r in v2 if r.name == "bconv1")
        # y = multiplier*acc + bias (two roundings) == fma(acc * multiplier, 1, bias)
        np.testing.assert_array_equal(b.arrays["scale"], rec.arrays["multiplier"])
        np.testing.assert_array_equal(b.arrays["multiplier"], np.ones_like(rec.arrays["multiplier"]))
        acc = np.arange(-50, 51, dtype=np.float32)[:, None]
        old = acc * rec.arrays["multiplier"] + rec.arrays["bias"]
        new = reference.fma32(acc * b.arrays["scale"], b.arrays["multiplier"], b.arrays["bias"])
        np.testing.assert_array_equal(old, new)
        # ... and the format-2 model is the same network, within float rounding
        x = random_images(16, seed=3)
        np.testing.assert_allclose(m2.logits(x), bnnlite.Model.load(bireal).logits(x), atol=0.05)

    @pytest.mark.parametrize("path", ["ops/bconv1/scale", "ops/conv0/multiplier"])
    def test_format_3_needs_its_new_datasets(self, bireal, tmp_path, path):
        p = edit(bireal, tmp_path / "m.h5", lambda f: f.__delitem__(path))
        load_fails(p, f"dataset '{path.rsplit('/', 1)[1]}' is missing")


# ---------------------------------------------------------------- the ops of ResNet-style networks
@pytest.fixture(scope="module")
def merge(torch1, tmp_path_factory):
    """A bundle with avgpool2d, global_avgpool, add and concat (``_models.merge_net_class``)."""
    from _models import make_mergenet, write_plain_bundle
    return write_plain_bundle(make_mergenet(seed=1), tmp_path_factory.mktemp("merge") / "merge.h5")


def _set_op(name, **fields):
    def fn(g):
        rec = g[op_index(g, name)]
        for k, v in fields.items():
            if k in ("size", "stride"):
                rec["attrs"][k] = v
            else:
                rec[k] = v
    return fn


class TestMergeAndPoolOps:
    def test_the_base_loads(self, merge):
        assert {"avgpool2d", "global_avgpool", "add", "concat"} <= {r.op for r in read_bundle(merge).ops}
        assert bnnlite.Model.load(merge).predict(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)).shape == (1,)

    @pytest.mark.parametrize("name, fields, match", [
        # add: two float tensors of one shape
        ("add6", {"inputs": ["conv6", "bconv4"]}, r"inputs 'conv6' \(8, 8, 32\) and 'bconv4' \(8, 8, 24\) differ"),
        ("add6", {"inputs": ["conv6"]}, "needs 2..2 input names"),
        ("add6", {"inputs": ["conv6", "conv6", "conv6"]}, "needs 2..2 input names"),
        ("add6", {"inputs": ["bits4", "bconv2"]}, "input 'bits4' is bits, add needs float"),
        ("add6", {"inputs": ["conv6", "bits4"]}, "input 'bits4' is bits, add needs float"),
        ("add6_2", {"inputs": ["flat", "gap6"]}, r"\(56,\) and 'gap6' \(1, 1, 56\) differ in shape"),
        # concat: 2..64 float maps of one H, W
        ("concat6", {"inputs": ["bconv4"]}, "needs 2..64 input names"),
        ("concat6", {"inputs": ["bconv4"] * 65}, "needs 2..64 input names"),
        ("concat6", {"inputs": ["bconv4", "conv0"]}, r"are not \(H, W, C\) maps of one H, W"),
        ("concat6", {"inputs": ["bits4", "bconv4"]}, "input 'bits4' is bits, concat needs float"),
        ("concat6", {"inputs": ["bconv4", "nope"]}, "input 'nope' is not produced by an earlier op"),
        # the average pools
        ("avgpool6", {"size": 3}, "only size=2, stride=2 pooling"),
        ("avgpool6", {"stride": 1}, "only size=2, stride=2 pooling"),
        ("avgpool6", {"size": "2"}, "attribute 'size' = '2' should be an integer"),
        ("avgpool6", {"stride": None}, "attribute 'stride' = None should be an integer"),
        ("avgpool6", {"inputs": ["bits4"]}, "input 'bits4' is bits, avgpool2d needs float"),
        ("avgpool6", {"inputs": ["concat6", "concat6"]}, "needs 1..1 input names"),
        ("gap6_2", {"inputs": ["flat"]}, r"cannot pool input of shape \(56,\)"),
        ("gap6", {"inputs": ["bits4"]}, "input 'bits4' is bits, global_avgpool needs float"),
        ("gap6", {"inputs": ["avgpool6", "avgpool6"]}, "needs 1..1 input names"),
        ("gap6", {"outputs": ["a", "b"]}, "one output name"),
    ])
    def test_bad_op(self, merge, tmp_path, name, fields, match):
        p = edit(merge, tmp_path / "g.h5", lambda f: edit_graph(f, _set_op(name, **fields)))
        load_fails(p, match)

    def test_avgpool_of_a_one_pixel_map(self, merge, tmp_path):
        def fn(g):
            g.append({"op": "avgpool2d", "name": "extra", "inputs": ["gap6"], "outputs": ["extra"],
                      "attrs": {"size": 2, "stride": 2}})
        p = edit(merge, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        load_fails(p, r"cannot pool input of shape \(1, 1, 56\)")

    def test_unknown_attributes_change_nothing(self, merge, tmp_path):
        # add, concat and global_avgpool have no attributes: a stray one (even "hw", which the
        # reader derives for the value bound) is ignored, and the derived value wins.
        def fn(g):
            for name in ("add6", "concat6", "gap6"):
                g[op_index(g, name)]["attrs"] = {"hw": 1, "axis": 3}
        p = edit(merge, tmp_path / "g.h5", lambda f: edit_graph(f, fn))
        gap = next(r for r in read_bundle(p).ops if r.name == "gap6")
        assert gap.attrs == {"hw": 16}
