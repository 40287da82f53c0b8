"""A tiny finished search on a generated image folder, made once per session and copied per test."""

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


def write_stripes_folder(folder, classes=CLASSES, per_class: int = 48, size: int = IMAGE_SIZE, seed: int = 0):
    """A folder source (``folder/<class>/*.png``) of ``stripes`` images."""
    from PIL import Image

    images, labels = stripes(per_class * len(classes), size=size, classes=len(classes), seed=seed)
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image.astype(np.uint8)).save(folder / classes[label] / f"{i:04d}.png")
    return folder


def settings_for(image_root):
    return {"data": str(image_root), "image_size": IMAGE_SIZE, "batch_size": 16, "max_trials": 10,
            "max_epochs": 4, "seed": 3}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xtune-data")


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    return write_stripes_folder(tmp_path_factory.mktemp("images") / "stripes")


@pytest.fixture(scope="session")
def splits(image_root, data_dir):
    """The search's splits, as `tune search` and `tune export` load them."""
    from xtune.data import load_splits, prepare_data

    return load_splits(prepare_data(str(image_root), data_dir=data_dir), image_size=IMAGE_SIZE, batch_size=16, seed=3)


@pytest.fixture(scope="session")
def finished_search(tmp_path_factory, image_root, data_dir):
    """A finished Hyperband search (10 trials, at most 4 epochs, space "small"). Do not modify it."""
    from xtune.search import run_search

    project = tmp_path_factory.mktemp("search") / "tiny"
    outcome = run_search(project, settings_for(image_root), space_ref="small", data_dir=data_dir, tensorboard=False)
    assert outcome.status == "finished" and outcome.completed >= 2
    return project


@pytest.fixture
def search_copy(finished_search, tmp_path):
    """A copy of the finished search that a test may change."""
    target = tmp_path / "runs" / "tiny"
    shutil.copytree(finished_search, target)
    (target / ".lock").unlink(missing_ok=True)
    return target


@pytest.fixture(scope="session")
def exported_search(finished_search, data_dir, tmp_path_factory):
    """A copy of the finished search with `tune export --preset seed`, then `tune export` (the CLI).

    Returns ``(project, output of the second command)``. Do not modify it.
    """
    from click.testing import CliRunner

    from xtune.cli import tune

    project = tmp_path_factory.mktemp("exported") / "tiny"
    shutil.copytree(finished_search, project)
    for args in (["--preset", "seed"], []):
        result = CliRunner().invoke(tune, ["export", "--project", str(project), "--data-dir", str(data_dir), *args])
        assert result.exit_code == 0, result.output
    return project, result.output
