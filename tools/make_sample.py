"""Write bnnlite/data/cifar10_test_sample.npz: 100 test images per class, fixed seed.

    python tools/make_sample.py ../shared/data/cifar-10-jpeg75-binary.tar.gz

The sample is what `bnnlite-bench` measures accuracy on when no --data is given.
"""
import sys
from pathlib import Path

import numpy as np

from bnnlite.cifar import load_test_split

PER_CLASS = 100


def main(data, out=Path(__file__).resolve().parents[1] / "bnnlite" / "data" / "cifar10_test_sample.npz"):
    images, labels = load_test_split(data)
    rng = np.random.default_rng(2026)
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), PER_CLASS, replace=False)
                                  for c in range(int(labels.max()) + 1)]))
    np.savez_compressed(out, images=images[idx], labels=labels[idx].astype(np.int64), test_index=idx)
    print(f"wrote {out}: {len(idx)} images")


if __name__ == "__main__":
    main(sys.argv[1])
