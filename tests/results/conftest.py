"""A tiny finished search on generated images, made once per session and copied per test."""

import shutil

import numpy as np
import pytest

IMAGE_SIZE = 32
CLASSES = ("horizontal", "vertical")


def stripes(n: int, size: int = IMAGE_SIZE, classes: int = 2, seed: int = 0):
    """``n`` images (float32 in [0, 255]) of striped patches whose direction is the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 3), np.float32)
    for i, label in enumerate(labels):
        background = rng.uniform(0, 255, 3)
        image = np.clip(background + rng.normal(0, 20, (size, size, 3)), 0, 255)
        half = rng.uniform(size * 0.3, size * 0.45)
        cy, cx = rng.uniform(half, size - half, 2)
        patch = (abs(yy - cy) <= half) & (abs(xx - cx) <= half)
        coordinate = (yy, xx, (yy + xx) / np.sqrt(2))[label]
        on = patch & (np.sin(2 * np.pi * coordinate / rng.uniform(3.0, 6.0) + rng.uniform(0, 6.3)) > 0)
        image[on] = rng.uniform(0, 255, 3)
        images[i] = np.round(image)  # whole pixel values: a PNG of them decodes to the same array
    return images, labels.astype("int32")


class ArraySplits:
    """Stands in for ``xtune.data.Splits``: the same attributes, over numpy arrays."""

    def __init__(self, train=64, validation=16, test=32, classes=CLASSES, batch_size=16, seed=0):
        self.class_names = list(classes)
        k = len(classes)
        self.arrays_by_split = {
            "train": stripes(train, classes=k, seed=seed + 1),
            "validation": stripes(validation, classes=k, seed=seed + 2),
            "test": stripes(test, classes=k, seed=seed + 3),
        }
        self.sizes = {name: len(y) for name, (x, y) in self.arrays_by_split.items()}
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = -(-self.sizes["train"] // batch_size)

    def arrays(self, split):
        return self.arrays_by_split[split]

    def train(self, start_epoch=0):
        import tensorflow as tf

        x, y = self.arrays_by_split["train"]
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shuffle(len(y), seed=self.seed + start_epoch, reshuffle_each_iteration=True).repeat()
        return ds.batch(self.batch_size)

    def _finite(self, split):
        import tensorflow as tf

        x, y = self.arrays_by_split[split]
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(self.batch_size)

    @property
    def validation(self):
        return self._finite("validation")

    @property
    def test(self):
        return self._finite("test")


def data_record(splits):
    return {"source": "generated", "class_names": list(splits.class_names), "counts": dict(splits.sizes),
            "fingerprint": "generated-stripes-0"}


SETTINGS = {"data": "generated", "image_size": IMAGE_SIZE, "batch_size": 16, "max_trials": 10, "max_epochs": 4,
            "seed": 3}


@pytest.fixture(scope="session")
def splits():
    return ArraySplits()


@pytest.fixture(scope="session")
def finished_search(tmp_path_factory, splits):
    """A finished Hyperband search (10 trials, at most 4 epochs, space "small"). Do not modify it."""
    from xtune.search import run_search

    project = tmp_path_factory.mktemp("search") / "tiny"
    outcome = run_search(project, dict(SETTINGS), space_ref="small", splits=splits, data_info=data_record(splits),
                         tensorboard=False)
    assert outcome.status == "finished" and outcome.completed >= 2
    return project


@pytest.fixture
def search_copy(finished_search, tmp_path):
    """A copy of the finished search that a test may change."""
    target = tmp_path / "runs" / "tiny"
    shutil.copytree(finished_search, target)
    (target / ".lock").unlink(missing_ok=True)
    return target


@pytest.fixture
def use_splits(monkeypatch, splits):
    """Make `tune export` (the CLI) train on the session's splits instead of preparing data."""
    from xtune.results import _export

    monkeypatch.setattr(_export, "_splits_for", lambda state, data_dir, given: (given or splits,
                                                                                 state.run.get("data")))
    return splits
