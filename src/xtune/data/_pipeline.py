"""Prepared folder -> tf.data splits that are never the bottleneck.

Each split is decoded once per process (``tf.io.decode_image``, RGB), resized to
``image_size`` with ``tf.image.resize`` (bilinear, as Keras'
``image_dataset_from_directory``) and kept as uint8 (rounded; 4x less memory than
float32) in a cache: in memory when all splits fit comfortably (under a quarter of
the available memory), else in a file under the data directory that lives as long
as the process. Decoding is parallel (``AUTOTUNE``) and happens on first use of a
split, so a ``Splits`` object reused across trials decodes each split once.

Batches are gathered from the cache: images float32 in [0, 255], shape
``(batch, S, S, 3)``, labels int32, shape ``(batch,)``. Training order is a
stateless permutation per epoch (``stateless_shuffle`` seeded with ``(seed, epoch)``),
so an epoch's batches depend only on the seed and the epoch number: a search resumed
at epoch k sees exactly the batches it would have seen. Validation and test are in
file order (classes sorted, files by name), not shuffled. The last batch of an epoch
may be smaller, as in Keras.
"""

from __future__ import annotations

import math
import os
import shlex
import socket
import threading
import uuid
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtune.data._prepare import PreparedData
from xtune.data._scan import SPLITS
from xtune.errors import DataError, UsageError

if TYPE_CHECKING:
    import numpy as np
    import tensorflow as tf

CACHE_MODES = ("auto", "memory", "disk")
_MEMORY_SHARE = 0.25
_DECODE_BATCH = 64


def load_splits(
    prepared: PreparedData,
    *,
    image_size: int = 180,
    batch_size: int = 32,
    seed: int = 1337,
    cache: str = "auto",
    cache_dir: Path | None = None,
) -> Splits:
    """The train, validation and test splits of a prepared dataset, as tf.data.

    Nothing is decoded here: each split is decoded on first use, once.

    Args:
        prepared: From ``prepare_data``.
        image_size: Images are resized to ``image_size x image_size`` (the book: 180).
        batch_size: Images per batch (the book: 32).
        seed: Seeds the training order (with the epoch number).
        cache: "memory", "disk", or "auto": memory when all splits fit in a quarter of
            the available memory, else disk.
        cache_dir: Where a disk cache goes (default: ``cache/`` in the data directory).

    Returns:
        The splits.

    Raises:
        DataError: The prepared folder was changed or damaged after preparing.
    """
    return Splits(prepared, image_size=image_size, batch_size=batch_size, seed=seed, cache=cache,
                  cache_dir=cache_dir)


class Splits:
    """Train, validation and test of one prepared dataset at one image and batch size.

    Attributes:
        class_names: Sorted; a class's index is its label.
        image_size: Side of the square images.
        batch_size: Images per batch.
        seed: Seeds the training order.
        sizes: Images per split.
        steps_per_epoch: Batches per training epoch (``ceil(train / batch_size)``).
        cache: "memory" or "disk", as resolved.
    """

    def __init__(self, prepared: PreparedData, *, image_size: int = 180, batch_size: int = 32, seed: int = 1337,
                 cache: str = "auto", cache_dir: Path | None = None):
        if int(image_size) < 1:
            raise UsageError(f"image size must be positive; got {image_size}")
        if int(batch_size) < 1:
            raise UsageError(f"batch size must be positive; got {batch_size}")
        if cache not in CACHE_MODES:
            raise UsageError(f"cache must be one of {', '.join(CACHE_MODES)}; got {cache!r}")
        self.prepared = prepared
        self.class_names = tuple(prepared.class_names)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._files = {split: _list_split(prepared, split) for split in SPLITS}
        self.sizes = {split: len(paths) for split, (paths, _) in self._files.items()}
        self.steps_per_epoch = math.ceil(self.sizes["train"] / self.batch_size)
        needed = sum(self.sizes.values()) * self.image_size ** 2 * 3
        if cache == "auto":
            cache = "memory" if needed <= _MEMORY_SHARE * _available_memory() else "disk"
        self.cache = cache
        self._cache_dir = Path(cache_dir) if cache_dir is not None else Path(prepared.root).parent.parent / "cache"
        self._stores: dict[str, _Store] = {}
        self._lock = threading.Lock()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return (f"Splits({self.prepared.source!r}, classes={len(self.class_names)}, sizes={self.sizes}, "
                f"image_size={self.image_size}, batch_size={self.batch_size}, cache={self.cache!r})")

    def train(self, start_epoch: int = 0) -> tf.data.Dataset:
        """Training batches, endlessly: epoch ``start_epoch``, then the next, ...

        Fit with ``steps_per_epoch``. Each epoch is one pass over the training split
        in an order that depends only on ``(seed, epoch)``.

        Returns:
            An infinite ``tf.data.Dataset`` of ``(images, labels)`` batches.
        """
        import tensorflow as tf

        store = self._store("train")
        n, b = self.sizes["train"], self.batch_size
        seed = tf.constant(self.seed % (1 << 63), tf.int64)

        def epoch(e):
            order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([seed, e]))
            return tf.data.Dataset.from_tensor_slices(order).batch(b)

        batches = tf.data.Dataset.counter(int(start_epoch)).flat_map(epoch)
        return batches.map(store.gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
            tf.data.AUTOTUNE)

    @property
    def validation(self) -> tf.data.Dataset:
        """Validation batches, one pass, in file order (a finite ``tf.data.Dataset``)."""
        return self._ordered("validation")

    @property
    def test(self) -> tf.data.Dataset:
        """Test batches, one pass, in file order (a finite ``tf.data.Dataset``)."""
        return self._ordered("test")

    def arrays(self, split: str, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
        """A whole split as numpy: ``(images (n, S, S, 3) in [0, 255], labels int32 (n,))``.

        For small data and for Keras backends other than TensorFlow.
        """
        import numpy as np

        store = self._store(split)
        return np.asarray(store.array(), dtype=dtype), store.labels.copy()

    def _ordered(self, split: str):
        import tensorflow as tf

        store = self._store(split)
        batches = tf.data.Dataset.range(self.sizes[split]).batch(self.batch_size)
        return batches.map(store.gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
            tf.data.AUTOTUNE)

    def _store(self, split: str) -> _Store:
        if split not in SPLITS:
            raise UsageError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        with self._lock:
            store = self._stores.get(split)
            if store is None:
                paths, labels = self._files[split]
                path = None
                if self.cache == "disk":
                    self._cache_dir.mkdir(parents=True, exist_ok=True)
                    _remove_orphans(self._cache_dir)
                    path = self._cache_dir / (f"decoded-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{split}-"
                                              f"{self.image_size}.u8")
                store = _Store(paths, labels, self.image_size, path, self.prepared.source)
                self._stores[split] = store
            return store


def _list_split(prepared: PreparedData, split: str):
    """Files and labels of one split, checked against what was prepared."""
    import numpy as np

    root = Path(prepared.root)
    paths, labels = [], []
    for label, cls in enumerate(prepared.class_names):
        folder = root / split / cls
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            found.extend(os.path.join(dirpath, f) for f in filenames)
        found.sort()
        expected = prepared.counts.get(split, {}).get(cls, 0)
        if len(found) != expected:
            raise DataError(f"the prepared data in {root} was changed after preparing ({split}/{cls}: "
                            f"{len(found)} files, {expected} expected); prepare it again: "
                            f"tune data prepare {shlex.quote(prepared.source)} --overwrite")
        paths.extend(found)
        labels.extend([label] * len(found))
    return paths, np.asarray(labels, dtype=np.int32)


class _Store:
    """One split, decoded and resized once, as uint8 in memory or in a file."""

    def __init__(self, paths: list[str], labels, size: int, path: Path | None, source: str):
        self.paths = paths
        self.labels = labels
        self.size = size
        self.path = path
        self.source = source
        self._images: Any = None  # a CPU tf.Tensor (memory) or a numpy memmap (disk)
        self._labels_t = None
        self._finalizer = weakref.finalize(self, _remove_file, path) if path is not None else None
        self._fill()

    def array(self):
        return self._images.numpy() if hasattr(self._images, "numpy") else self._images

    def gather(self, indices):
        """(float32 images, int32 labels) for a batch of indices (inside tf.data)."""
        import tensorflow as tf

        if self.path is None:
            images = tf.gather(self._images, indices)
        else:
            memmap = self._images
            images = tf.numpy_function(lambda i: memmap[i], [indices], tf.uint8, stateful=False)
            images.set_shape([None, self.size, self.size, 3])
        return tf.cast(images, tf.float32), tf.gather(self._labels_t, indices)

    def _fill(self):
        import numpy as np
        import tensorflow as tf

        n, s = len(self.paths), self.size
        if self.path is None:
            target = np.empty((n, s, s, 3), np.uint8)
        else:
            target = np.memmap(self.path, dtype=np.uint8, mode="w+", shape=(n, s, s, 3))
        decode = _decoder(s)
        dataset = (tf.data.Dataset.from_tensor_slices(tf.constant(self.paths, tf.string))
                   .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                   .batch(_DECODE_BATCH).prefetch(tf.data.AUTOTUNE))
        pos = 0
        try:
            for batch in dataset:
                batch = batch.numpy()
                target[pos:pos + len(batch)] = batch
                pos += len(batch)
        except tf.errors.OpError:
            raise self._decode_error(decode, pos) from None
        with tf.device("/cpu:0"):
            self._labels_t = tf.constant(self.labels, tf.int32)
            if self.path is None:
                self._images = tf.constant(target)
            else:
                assert isinstance(target, np.memmap)  # with self.path, the store is a file
                target.flush()
                self._images = target

    def _decode_error(self, decode, start: int) -> DataError:
        import tensorflow as tf

        for path in self.paths[start:start + _DECODE_BATCH]:
            try:
                decode(tf.constant(path))
            except tf.errors.OpError as error:
                message = " ".join(str(error.message).split())[:120]
                return DataError(f"cannot decode the prepared image {path} ({message}); prepare the data "
                                 f"again: tune data prepare {shlex.quote(self.source)} --overwrite")
        return DataError(f"cannot decode the prepared images of {self.source}; prepare the data again: "
                         f"tune data prepare {shlex.quote(self.source)} --overwrite")


def _decoder(size: int):
    import tensorflow as tf

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, (size, size), method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    return decode


def _available_memory() -> int:
    """Bytes this process can still use: MemAvailable, capped by a cgroup limit."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            available = 4 << 30
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(available, 0)


def _host() -> str:
    return "".join(c for c in socket.gethostname() if c.isalnum())[:20] or "host"


def _remove_file(path: Path) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _remove_orphans(folder: Path) -> None:
    """Remove disk caches of processes on this host that are gone."""
    prefix = f"decoded-{_host()}-"
    for entry in folder.glob(prefix + "*"):
        try:
            pid = int(entry.name[len(prefix):].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            _remove_file(entry)
        except (ValueError, PermissionError, OSError):
            continue
