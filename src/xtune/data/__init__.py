"""Data: sources -> a validated local folder -> tf.data splits.

Three sources: ``kaggle:dogs-vs-cats`` (the book's data, downloaded with the kaggle
package or read from ``--archive``), a folder (``train/ validation/ test/`` with
class sub-folders, or class sub-folders only, split here), and ``demo`` (handwritten
digits shipped in scikit-learn). ``prepare_data`` scans every file once (bad files
are skipped with a reason, odd formats converted to RGB, files over ``MAX_IMAGE_BYTES``
and anything but regular files skipped unread: see ``xtune.data._scan``)
and writes a prepared copy under the data directory; ``load_splits`` turns it into
tf.data datasets. The only subpackage that touches tf.data; importing it loads no
TensorFlow (that happens when splits are built).
"""

from xtune.data._pipeline import CACHE_MODES, Splits, load_splits
from xtune.data._prepare import (
    BOOK_SPLIT,
    DEMO_SOURCE,
    KAGGLE_SOURCE,
    PreparedData,
    describe_data,
    load_prepared,
    prepare_data,
)
from xtune.data._read import MAX_IMAGE_BYTES
from xtune.data._scan import ConvertedFile, SkippedFile
from xtune.data._store import default_data_dir
from xtune.errors import DataError

__all__ = [
    "BOOK_SPLIT",
    "CACHE_MODES",
    "DEMO_SOURCE",
    "KAGGLE_SOURCE",
    "MAX_IMAGE_BYTES",
    "ConvertedFile",
    "DataError",
    "PreparedData",
    "SkippedFile",
    "Splits",
    "default_data_dir",
    "describe_data",
    "load_prepared",
    "load_splits",
    "prepare_data",
]
