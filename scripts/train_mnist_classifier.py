"""Train the MNIST digit classifier that ditkit ships (src/ditkit/assets/mnist_classifier.safetensors).

    python scripts/train_mnist_classifier.py [--out PATH] [--epochs 12] [--seed 0] [--threads 2]

Trains on the 9,000 training digits of the bundled MNIST subset and reports held-out accuracy on the other
1,000 (split: np.random.default_rng(0).permutation(10000)[:1000]); about 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ditkit.metrics.digit_classifier import train_classifier

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "ditkit" / "assets" / "mnist_classifier.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the safetensors weights")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()
    _, accuracy = train_classifier(args.out, num_epochs=args.epochs, seed=args.seed, num_threads=args.threads)
    size_kb = args.out.stat().st_size / 1024
    print(f"held-out accuracy {accuracy:.4f}; {time.perf_counter() - start:.0f} s; {args.out} ({size_kb:.0f} KB)")


if __name__ == "__main__":
    main()
