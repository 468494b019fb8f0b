"""The seed rules of ditkit: one seed per image, and named streams mixed with a run's seed.

Every random draw of ditkit comes from a generator seeded by a tuple of ints hashed with NumPy's
SeedSequence, so nearby tuples give unrelated streams and a result depends on its tuple only (never on
batch size, order of work or number of processes). Images: `image_seed(seed, i)`. Everything else:
`mix_seed(seed, Stream.X, ...)`, or `stream_rng` for NumPy draws. The numbers are frozen: changing one
changes every run and sample made since (tests/fixtures/tiny_run_losses.json pins them).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["Stream", "image_seed", "image_seeds", "mix_seed", "stream_rng"]


class Stream(IntEnum):
    """The stream ids mixed with a run's seed. Some share a number (history); their tuples never meet: the
    hash sees different tuple lengths or different hashes (`mix_seed` vs `stream_rng`).

    Beware that SeedSequence pads with zeros: (seed, 1, step) and (seed, 1, epoch, 0) are the same tuple,
    so TRAIN_STEP of step e equals DATA_ITEM of item 0 in epoch e (a CPU generator for a flip, a device
    generator for training noise). Kept: changing it would change every run's numbers.
    """

    DATA_ORDER = 0  # the shuffle of each epoch: mix_seed(seed, DATA_ORDER, epoch)
    DATA_ITEM = 1  # each item's augmentation (flip, latent noise): mix_seed(seed, DATA_ITEM, epoch, index)
    TRAIN_STEP = 1  # a training step's draws (t, noise, label dropout): mix_seed(seed, TRAIN_STEP, step)
    TRAIN_GLOBAL = 2  # torch's global RNG before each step (dropout layers): mix_seed(seed, TRAIN_GLOBAL, rank, step)
    VAE_STEP = 3  # an autoencoder training step's posterior samples: mix_seed(seed, VAE_STEP, step)
    JOB_LABELS = 1  # the labels of a sampling job: stream_rng(seed, JOB_LABELS)


def mix_seed(*words: int) -> int:
    """A 63-bit seed from a tuple of ints (NumPy's SeedSequence hash), so nearby tuples are unrelated."""
    state = np.random.SeedSequence([int(w) % 2**64 for w in words]).generate_state(2, np.uint32)
    return int(state[0]) | (int(state[1]) & 0x7FFFFFFF) << 32


def stream_rng(seed: int, stream: Stream) -> np.random.Generator:
    """A NumPy generator for one stream of a seed: `np.random.default_rng([seed, stream])`."""
    return np.random.default_rng([int(seed), int(stream)])


def image_seed(global_seed: int, index: int) -> int:
    """The seed of image `index` of a job: independent streams per (global_seed, index).

    The one seed rule of images: grids, evaluation, .npz jobs, walks, the demo and the web page all use it.
    """
    return int(np.random.SeedSequence([global_seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def image_seeds(global_seed: int, num: int, start: int = 0) -> list[int]:
    """Seeds of images start .. start + num - 1 of a job."""
    return [image_seed(global_seed, i) for i in range(start, start + num)]
