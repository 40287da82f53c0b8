"""load_splits: batches, the resume property, caches, and a full pass over data with bad files."""

import gc

import numpy as np
import pytest
import tensorflow as tf  # a broken install fails here, loudly, instead of skipping the file

from xtune.data import DataError, load_splits, prepare_data

from .images import make_bad_folder, make_classes_folder, make_split_folder


@pytest.fixture
def prepared(tmp_path, data_dir):
    return prepare_data(make_classes_folder(tmp_path / "pets", per_class=20, size=20), data_dir=data_dir)


def _epochs(dataset, steps, epochs):
    batches = list(dataset.take(steps * epochs))
    return [batches[e * steps:(e + 1) * steps] for e in range(epochs)]


def _same(a, b):
    return len(a) == len(b) and all(
        np.array_equal(x1.numpy(), x2.numpy()) and np.array_equal(y1.numpy(), y2.numpy()) for (x1, y1), (x2, y2) in zip(a, b)
    )


def test_batches_are_float_images_in_0_255_and_int_labels(prepared):
    splits = load_splits(prepared, image_size=24, batch_size=8)
    assert splits.class_names == ("cat", "dog") and splits.num_classes == 2
    assert splits.sizes == {"train": 28, "validation": 6, "test": 6}
    assert splits.steps_per_epoch == 4
    images, labels = next(iter(splits.train()))
    assert images.dtype == tf.float32 and images.shape == (8, 24, 24, 3)
    assert labels.dtype == tf.int32 and labels.shape == (8,)
    assert float(tf.reduce_min(images)) >= 0 and float(tf.reduce_max(images)) <= 255
    assert float(tf.reduce_max(images)) > 1  # not rescaled: the model's Rescaling layer does that
    spec = splits.train().element_spec
    assert spec[0].shape.as_list() == [None, 24, 24, 3] and spec[1].shape.as_list() == [None]


def test_an_epoch_is_one_pass_over_train_in_a_new_order(prepared):
    splits = load_splits(prepared, image_size=20, batch_size=8)
    first, second = _epochs(splits.train(), splits.steps_per_epoch, 2)
    assert [len(y) for _, y in first] == [8, 8, 8, 4]  # the last batch of an epoch may be smaller
    images, labels = splits.arrays("train")
    for epoch in (first, second):
        seen = np.concatenate([x.numpy() for x, _ in epoch])
        order = sorted(map(bytes, seen.astype(np.uint8)))
        assert order == sorted(map(bytes, images.astype(np.uint8)))  # every image once
        assert sorted(np.concatenate([y.numpy() for _, y in epoch])) == sorted(labels)
    assert not _same(first, second)


def test_resuming_at_epoch_k_replays_epoch_k_exactly(prepared):
    splits = load_splits(prepared, image_size=20, batch_size=8, seed=5)
    steps = splits.steps_per_epoch
    from_start = _epochs(splits.train(), steps, 4)
    for k in (1, 3):
        assert _same(_epochs(splits.train(start_epoch=k), steps, 1)[0], from_start[k])
    # Another process (a fresh Splits), whatever TensorFlow's global seed: the same order.
    tf.random.set_seed(123)
    try:
        other = load_splits(prepared, image_size=20, batch_size=8, seed=5, cache="disk")
        assert _same(_epochs(other.train(start_epoch=2), steps, 1)[0], from_start[2])
    finally:
        tf.random.set_seed(None)
    reseeded = load_splits(prepared, image_size=20, batch_size=8, seed=6)
    assert not _same(_epochs(reseeded.train(), steps, 1)[0], from_start[0])


def test_validation_and_test_are_finite_in_file_order(prepared):
    splits = load_splits(prepared, image_size=20, batch_size=4)
    for split in ("validation", "test"):
        dataset = getattr(splits, split)
        batches = list(dataset)
        labels = np.concatenate([y.numpy() for _, y in batches])
        assert len(labels) == splits.sizes[split] and list(labels) == sorted(labels)
        assert _same(batches, list(getattr(splits, split)))  # not shuffled
        images, arr_labels = splits.arrays(split)
        assert np.array_equal(np.concatenate([x.numpy() for x, _ in batches]), images)
        assert np.array_equal(labels, arr_labels)


def test_each_split_is_decoded_once_per_splits_object(prepared):
    splits = load_splits(prepared, image_size=20, batch_size=8)
    before = _epochs(splits.train(), splits.steps_per_epoch, 1)[0]
    list(splits.validation)
    for path in prepared.root.rglob("*.png"):
        path.write_bytes(b"")  # a second decode would fail
    for path in prepared.root.rglob("*.jpg"):
        path.write_bytes(b"")
    assert _same(_epochs(splits.train(), splits.steps_per_epoch, 1)[0], before)  # a new trial, same data
    assert sum(len(y) for _, y in splits.validation) == splits.sizes["validation"]
    with pytest.raises(DataError, match=r"cannot decode the prepared image .*tune data prepare .* --overwrite"):
        list(splits.test)


def test_the_disk_cache_gives_the_same_batches_and_is_removed(prepared, data_dir):
    memory = load_splits(prepared, image_size=20, batch_size=8, cache="memory")
    disk = load_splits(prepared, image_size=20, batch_size=8, cache="disk")
    assert (memory.cache, disk.cache) == ("memory", "disk")
    assert _same(list(memory.train().take(5)), list(disk.train().take(5)))
    assert _same(list(memory.validation), list(disk.validation))
    files = list((data_dir / "cache").iterdir())
    assert len(files) == 2  # train and validation, decoded once each
    del disk
    gc.collect()
    assert not any(f.exists() for f in files)


def test_auto_cache_picks_memory_for_small_data(prepared):
    assert load_splits(prepared, image_size=20).cache == "memory"
    with pytest.raises(Exception, match="cache must be one of"):
        load_splits(prepared, cache="gpu")


def test_resize_is_keras_bilinear(tmp_path, data_dir):
    from PIL import Image

    folder = make_split_folder(tmp_path / "split", per_split=(1, 1, 1), size=30)
    prepared = prepare_data(folder, data_dir=data_dir)
    splits = load_splits(prepared, image_size=12, batch_size=8)
    images, _ = splits.arrays("train")
    first = sorted((prepared.root / "train" / "cat").iterdir())[0]
    expected = tf.image.resize(np.asarray(Image.open(first).convert("RGB")), (12, 12)).numpy()
    assert np.abs(images[0] - expected).max() <= 0.5


def test_a_folder_with_bad_files_trains_through_a_full_pass(tmp_path, data_dir):
    prepared = prepare_data(make_bad_folder(tmp_path / "bad", per_class=8), data_dir=data_dir)
    assert len(prepared.skipped) == 6
    splits = load_splits(prepared, image_size=16, batch_size=4)
    seen = sum(int(tf.shape(y)[0]) for _, y in splits.train().take(splits.steps_per_epoch))
    assert seen == splits.sizes["train"]
    assert sum(int(tf.shape(y)[0]) for _, y in splits.validation) == splits.sizes["validation"]
    assert sum(int(tf.shape(y)[0]) for _, y in splits.test) == splits.sizes["test"]
    assert sum(splits.sizes.values()) == 8 + 5 + 8


def test_a_prepared_copy_changed_afterwards_is_refused(prepared):
    next((prepared.root / "validation" / "dog").iterdir()).unlink()
    with pytest.raises(DataError, match=r"was changed after preparing \(validation/dog: 2 files, 3 expected\)"):
        load_splits(prepared)
