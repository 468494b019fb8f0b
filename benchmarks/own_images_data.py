"""The synthetic named-class RGB folder of the README's "Your own images" (disc, square, stripes, gradient; 32 px).

Usage: python benchmarks/own_images_data.py OUT_DIR IMAGES_PER_CLASS SEED (the README: 150 for data/, 50 with
another seed for heldout/; results: benchmarks/results/cpu-amd-own-images.json)
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def draw(cls, rng, size=32):
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    if cls == "disc":
        r = rng.integers(5, 12)
        cx, cy = rng.integers(r, size - r, 2)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif cls == "square":
        s = rng.integers(8, 20)
        x, y = rng.integers(0, size - s, 2)
        d.rectangle([x, y, x + s, y + s], fill=fg)
    elif cls == "stripes":
        w = int(rng.integers(2, 5))
        off = int(rng.integers(0, 2 * w))
        for x in range(-off, size, 2 * w):
            d.rectangle([x, 0, x + w - 1, size], fill=fg)
    else:  # gradient
        t = np.linspace(0, 1, size)[:, None, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[None, :, None]
        a = np.array(bg, float)
        b = np.array(fg, float)
        arr = a * (1 - t) + b * t
        arr = np.broadcast_to(arr, (size, size, 3))
        img = Image.fromarray(arr.astype(np.uint8))
    return img


def main(root, n, seed):
    rng = np.random.default_rng(seed)
    for cls in ["disc", "square", "stripes", "gradient"]:
        out = Path(root) / cls
        out.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            draw(cls, rng).save(out / f"{i:04d}.png")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
