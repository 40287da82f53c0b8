"""`tune predict`: class and probability per image, decoded as in training."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xtune.cli import tune
from xtune.results import predict_images

from .conftest import IMAGE_SIZE


@pytest.fixture
def exported(exported_search):
    return exported_search[0] / "export"


@pytest.fixture
def images(splits, tmp_path):
    """Test images as PNG files (lossless) and one as JPEG, with their arrays."""
    import tensorflow as tf

    x, _y = splits.arrays("test")
    paths = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(tf.io.encode_png(x[i].astype(np.uint8)).numpy())
        paths.append(path)
    jpeg = tmp_path / "img4.jpg"
    jpeg.write_bytes(tf.io.encode_jpeg(x[4].astype(np.uint8), quality=95).numpy())
    paths.append(jpeg)
    return paths, x[:5]


def run(*args):
    return CliRunner().invoke(tune, list(map(str, args)))


def test_predictions_match_the_exported_model(exported, images):
    import keras

    paths, arrays = images
    records = predict_images(exported, paths)
    expected = np.asarray(keras.models.load_model(exported / "model.keras").predict(arrays, verbose=0))[:, 0]
    for record, p in zip(records[:4], expected[:4]):  # PNG: the same pixels as the arrays
        assert record["class"] == ("vertical" if p > 0.5 else "horizontal")
        assert record["probability"] == pytest.approx(max(p, 1 - p), abs=1e-5)
        assert sum(record["probabilities"].values()) == pytest.approx(1.0)
    assert records[4]["class"] in ("horizontal", "vertical") and 0.5 <= records[4]["probability"] <= 1.0


def test_predict_command_prints_one_line_per_image(exported, images):
    paths, _ = images
    result = run("predict", "--model", exported, *paths)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split() == ["image", "class", "probability"]
    records = predict_images(exported, paths)
    for line, record in zip(lines[1:], records):
        assert line.split() == [str(record["path"]), record["class"], f"{record['probability']:.4f}"]
    as_json = json.loads(run("predict", "--model", exported, "--format", "json", *paths).output)
    assert [r["class"] for r in as_json] == [r["class"] for r in records]


def test_images_of_another_size_are_resized(exported, tmp_path, splits):
    """A 77x50 image is predicted as the model sees it resized (bilinear, whole values) to its input size."""
    import keras
    import tensorflow as tf

    x, _ = splits.arrays("test")
    big = np.clip(np.round(tf.image.resize(x[:1], (77, 50)).numpy()[0]), 0, 255).astype(np.uint8)
    path = tmp_path / "big.png"
    path.write_bytes(tf.io.encode_png(big).numpy())
    (record,) = predict_images(exported, [path])
    model = keras.models.load_model(exported / "model.keras")
    assert model.input_shape[1:3] == (IMAGE_SIZE, IMAGE_SIZE) != big.shape[:2]
    resized = tf.image.resize(big.astype(np.float32), (IMAGE_SIZE, IMAGE_SIZE), method="bilinear").numpy()
    seen = np.clip(np.round(resized), 0, 255)  # as the training pipeline decodes it
    p = float(np.asarray(model.predict(seen[None], verbose=0))[0, 0])
    assert record["class"] == ("vertical" if p > 0.5 else "horizontal")
    assert record["probabilities"]["vertical"] == pytest.approx(p, abs=1e-5)


def test_an_unreadable_image_is_named_and_the_others_still_predicted(exported, images, tmp_path):
    paths, _ = images
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    missing = tmp_path / "missing.png"
    result = CliRunner().invoke(tune, ["predict", "--model", str(exported), str(paths[0]), str(broken),
                                       str(missing), str(paths[1])])
    assert result.exit_code == 1
    assert len(result.stdout.strip().splitlines()) == 3  # header + the two readable images
    error = result.stderr.strip()
    assert error.count("\n") == 0
    assert error.startswith("Error: cannot read 2 of 4 image(s)") and "broken.jpg" in error and "missing.png" in error


def test_a_folder_that_is_not_an_export_is_one_line(tmp_path, images):
    paths, _ = images
    result = run("predict", "--model", tmp_path, *paths)
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "is not a tune export" in result.output


def test_a_copied_export_folder_still_predicts(exported, images, tmp_path):
    paths, _ = images
    copy = tmp_path / "moved"
    shutil.copytree(exported, copy)
    assert [r["class"] for r in predict_images(copy, paths)] == [r["class"] for r in predict_images(exported, paths)]


def test_decoding_is_the_training_pipelines(tmp_path, data_dir):
    """Odd files (RGBA, grayscale JPEG, 16-bit PNG, other sizes) decode as the prepared data does."""
    from PIL import Image

    from xtune.data import load_splits, prepare_data
    from xtune.results._predict import load_image

    rng = np.random.default_rng(0)
    originals = {}
    for name in ("a", "b"):
        folder = tmp_path / "odd" / name
        folder.mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)
            kind = i % 4
            if kind == 0:
                path = folder / f"{i}.png"
                Image.fromarray(np.dstack([pixels, pixels[..., :1]]), "RGBA").save(path)
            elif kind == 1:
                path = folder / f"{i}.jpg"
                Image.fromarray(pixels[..., 0], "L").save(path, quality=90)
            elif kind == 2:
                path = folder / f"{i}.png"
                Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(path)
            else:
                path = folder / f"{i}.gif"
                Image.fromarray(pixels).save(path)
            originals[(name, i)] = path
    prepared = prepare_data(str(tmp_path / "odd"), data_dir=data_dir, validation_fraction=0.25, test_fraction=0.25)
    splits = load_splits(prepared, image_size=24, batch_size=4, seed=0)
    for split in ("train", "validation", "test"):
        x, _y = splits.arrays(split)
        files = sorted((Path(prepared.root) / split).glob("*/*"), key=lambda p: (p.parent.name, p.name))
        assert len(files) == len(x)
        for array, prepared_file in zip(x, files):
            original = originals[(prepared_file.parent.name, int(prepared_file.name.split(".")[0]))]
            np.testing.assert_array_equal(load_image(original, (24, 24)), array)
