"""Rewrite a format-version-1 bnnlite bundle as version 2, in place of OUT.

Version 1 stored the root string attributes as variable-length HDF5 strings;
version 2 stores them fixed-length (docs/format.md). Weights, graph and
metrics are copied unchanged; the result is re-sealed, then read back with
the full validation of bnnlite.bundle.read_bundle.

    python tools/upgrade_bundle_v1.py OLD.h5 NEW.h5
"""
import shutil
import sys

import h5py

from bnnlite._atomic import atomic_path
from bnnlite.bundle import _fixed_str, read_bundle, seal


def upgrade(src, dst):
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        with h5py.File(tmp, "r+") as f:
            if int(f.attrs["format_version"]) != 1:
                raise SystemExit(f"{src}: not a format-version-1 bundle")
            for key in list(f.attrs):
                if f.attrs.get_id(key).get_type().get_class() == h5py.h5t.STRING:
                    value = f.attrs[key]
                    del f.attrs[key]
                    f.attrs[key] = _fixed_str(value if isinstance(value, str) else value.decode("utf-8"))
            f.attrs["format_version"] = 2  # what this tool produces; later versions add datasets
        seal(tmp)
        read_bundle(tmp)


if __name__ == "__main__":
    upgrade(sys.argv[1], sys.argv[2])
