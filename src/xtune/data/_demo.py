"""The ``demo`` source: real handwritten digits, offline, no credentials.

The 1,797 8x8 digits of the UCI "Optical Recognition of Handwritten Digits" data set
(E. Alpaydin and C. Kaynak, 1998; UCI Machine Learning Repository, CC BY 4.0). xtune
ships them itself as ``digits.csv.gz`` (57 KB; the same file, byte for byte, as the copy in
scikit-learn's ``sklearn/datasets/data``, read the way ``sklearn.datasets.load_digits``
reads it: 64 pixel values 0..16 and the label per row). scikit-learn is not a dependency:
when it is installed, Keras imports it at start-up (its scikit-learn wrappers), which cost
about 0.8 s of CPU and 40 MB in every search process (README, "Install").
They are written out once as 32x32 RGB PNGs (bilinear upscaling, bright ink on black)
into class folders ``0`` .. ``9``, and from there take the path of any folder source.
"""

from __future__ import annotations

from pathlib import Path

from xtune.data._store import remove, swap_into_place, temp_sibling

ORIGIN = ("UCI Machine Learning Repository, Optical Recognition of Handwritten Digits (E. Alpaydin, "
          "C. Kaynak, 1998), the copy shipped in scikit-learn as sklearn.datasets.load_digits")
LICENSE = "CC BY 4.0 (the data, UCI); scikit-learn, whose copy xtune ships, is BSD-3-Clause"
FOLDER = "demo-digits"
SIZE = 32
DIGITS_FILE = Path(__file__).with_name("digits.csv.gz")


def load_digits():
    """``(images, labels)``: the 1,797 digits as 8x8 float arrays (values 0..16) and their labels."""
    import numpy as np

    table = np.loadtxt(DIGITS_FILE, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def write_demo_folder(sources: Path) -> Path:
    """The demo images as a folder of class sub-folders (written once, atomically)."""
    final = sources / FOLDER
    if final.is_dir():
        return final
    import numpy as np
    from PIL import Image

    images, labels = load_digits()
    tmp = temp_sibling(final)
    try:
        for i, (pixels, label) in enumerate(zip(images, labels)):
            folder = tmp / str(int(label))
            folder.mkdir(exist_ok=True)
            gray = Image.fromarray(np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8), "L")
            gray.resize((SIZE, SIZE), Image.Resampling.BILINEAR).convert("RGB").save(folder / f"digit_{i:04d}.png")
        swap_into_place(tmp, final)
    except BaseException:
        remove(tmp)
        raise
    return final
