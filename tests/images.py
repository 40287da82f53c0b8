"""Tiny generated image datasets for tests (nothing touches the network)."""

from pathlib import Path

import numpy as np


def make_image_folder(folder: Path, classes=("top", "bottom"), per_class: int = 24, size: int = 16, seed: int = 0) -> Path:
    """Learnable classes of small PNGs: class i has a bright horizontal band at position i."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    band = max(size // len(classes), 1)
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            img[label * band:(label + 1) * band] = rng.integers(170, 255, (band, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / name / f"{name}_{i:03d}.png")
    return folder
