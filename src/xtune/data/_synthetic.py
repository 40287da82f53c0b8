"""Tiny generated image datasets (for tests, benchmarks and scripts: nothing touches the network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_image_folder(folder: Path, classes=("top", "bottom"), per_class: int = 24, size: int = 16,
                      seed: int = 0) -> Path:
    """A folder of class sub-folders of small PNGs that a convnet can learn.

    Class ``i`` has a bright horizontal band at position ``i`` over dark noise.

    Args:
        folder: Where to write ``<class>/<class>_NNN.png``.
        classes: The class names.
        per_class: Images per class.
        size: Side of the square images.
        seed: Seeds the noise.

    Returns:
        ``folder``.
    """
    from PIL import Image

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    band = max(size // len(classes), 1)
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            img[label * band:(label + 1) * band] = rng.integers(170, 255, (band, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / name / f"{name}_{i:03d}.png")
    return folder
