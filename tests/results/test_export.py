"""`tune export`: retrain, test, write every format, reload and compare; fail without leftovers."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from xtune.cli import tune
from xtune.errors import ProjectError
from xtune.results import TOLERANCE, best_config, default_epochs, export_model, reestimate_batch_norm
from xtune.search import load_project
from xtune.spaces import PRESETS

from .conftest import IMAGE_SIZE, stripes, write_stripes_folder

FILES = {".xtune-export", "model.keras", "saved_model", "model.tflite", "model_card.json", "README.md"}


def run(*args):
    return CliRunner().invoke(tune, list(map(str, args)))


@pytest.fixture
def export_cli(data_dir):
    """`tune export --project P ARGS --data-dir D` (the search's data directory)."""
    return lambda project, *args: run("export", "--project", project, *args, "--data-dir", data_dir)


def one_line(result) -> str:
    text = result.output.strip()
    assert text.count("\n") == 0, text
    return text


def test_export_retrains_tests_and_writes_formats_that_agree(exported_search, splits):
    search_copy, output = exported_search
    out = search_copy / "export"
    assert {p.name for p in out.iterdir()} == FILES
    assert not [p for p in search_copy.iterdir() if ".tmp-" in p.name]
    card = json.loads((out / "model_card.json").read_text())

    # Rebuilt from the best trial's stored config, trained for its peak epoch.
    best = best_config(load_project(search_copy))
    assert card["name"] == "searched" and card["model"]["config"] == best["config"]
    assert card["search"]["best_trial"] == card["search"]["exported_trial"] == best["trial_id"]
    assert card["training"]["retrained"] and card["training"]["epochs"] == best["best_epoch"]
    assert [h["epoch"] for h in card["training"]["history"]] == list(range(1, best["best_epoch"] + 1))
    for epoch in range(1, best["best_epoch"] + 1):  # progress, one line per epoch
        assert f"epoch {epoch}/{best['best_epoch']}" in output
    assert "Test: accuracy" in output and "confusion matrix" in output and "model.tflite" in output
    # The seed the trial trained with (its architecture's, stored with it): a first-round trial repeats its run.
    trained = load_project(search_copy).trial(best["trial_id"])
    assert trained.seed is not None and trained.seed == trained.record.seed
    assert card["training"]["seed"] == trained.seed and card["training"]["batch_size"] == 16
    assert card["model"]["params"] == best["params"]  # augmentation layers hold no weights

    # The card says what it was trained and tested on.
    assert card["class_names"] == ["horizontal", "vertical"]
    assert card["model"]["input_shape"] == [IMAGE_SIZE, IMAGE_SIZE, 3]
    sizes = dict(splits.sizes)
    assert card["data"]["splits"] == sizes and card["data"]["source"] == str(load_project(search_copy).settings.data)
    assert card["data"]["fingerprint"] == load_project(search_copy).run["data"]["fingerprint"]
    assert card["data"]["trained_on"] == "train" and card["data"]["training_images"] == sizes["train"]
    test = card["test"]
    assert test["images"] == sizes["test"] and 0 <= test["accuracy"] <= 1 and test["loss"] > 0
    assert sum(map(sum, test["confusion_matrix"])) == sizes["test"]
    counts = splits.prepared.counts["test"]
    assert {name: r["images"] for name, r in test["per_class"].items()} == counts
    assert {"keras", "tensorflow", "keras-tuner", "python"} <= set(card["versions"])
    readme = (out / "README.md").read_text()
    assert "horizontal" in readme and "Confusion matrix" in readme and f"{test['accuracy']:.4f}" in readme

    # Every format was reloaded and agreed; check again from outside.
    formats = card["formats"]
    assert formats["tolerance"] == TOLERANCE == 1e-4 and formats["images"] == min(32, sizes["test"])
    for name in ("model.keras", "saved_model", "model.tflite"):
        assert formats[name]["max_abs_diff"] <= TOLERANCE
    import keras
    import tensorflow as tf

    from xtune.results._formats import run_tflite, tflite_interpreter

    x, y = splits.arrays("test")
    model = keras.models.load_model(out / "model.keras")
    assert not [layer for layer in model.layers if layer.name.startswith("augment_")]
    expected = np.asarray(model.predict(x, verbose=0))
    assert float(np.mean((expected[:, 0] > 0.5) == y)) == pytest.approx(test["accuracy"])
    saved = tf.saved_model.load(os.fspath(out / "saved_model"))
    assert np.max(np.abs(saved.serve(tf.constant(x)).numpy() - expected)) <= TOLERANCE
    assert np.max(np.abs(run_tflite(tflite_interpreter(out / "model.tflite"), x) - expected)) <= TOLERANCE


def test_no_retrain_exports_the_best_trial_checkpoint(search_copy, data_dir):
    import keras

    from xtune.results._rows import best_trial, trial_config
    from xtune.spaces import build_model, compile_model

    report = export_model(search_copy, data_dir=data_dir, retrain=False)
    card = report.card
    state = load_project(search_copy)
    trial = best_trial(state)
    assert not card["training"]["retrained"] and card["training"]["epochs"] == trial.record.best_epoch
    assert "not retrained" in card["training"]["epochs_rule"]
    # The exported weights are the checkpoint's (batch-norm statistics aside).
    config = trial_config(state, trial)
    checkpoint = compile_model(build_model(config, (IMAGE_SIZE, IMAGE_SIZE, 3), 2), config)
    checkpoint.optimizer.build(checkpoint.trainable_variables)
    checkpoint.load_weights(search_copy / f"trial_{trial.trial_id}" / "checkpoint.weights.h5")
    exported = keras.models.load_model(report.out / "model.keras")
    for layer in exported.layers:
        for mine, theirs in zip(layer.trainable_weights, checkpoint.get_layer(layer.name).trainable_weights):
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert all(card["formats"][f]["max_abs_diff"] <= TOLERANCE for f in ("model.keras", "saved_model", "model.tflite"))


def test_seed_preset_and_searched_model_side_by_side(exported_search):
    project, output = exported_search
    seed = json.loads((project / "export-seed" / "model_card.json").read_text())
    searched = json.loads((project / "export" / "model_card.json").read_text())
    assert seed["name"] == "seed" and seed["model"]["config"] == PRESETS["seed"].to_dict()
    assert seed["model"]["params"] == 721_857  # the book's model (size-independent: global pooling)
    assert seed["training"]["epochs"] == searched["training"]["epochs"]  # same data and settings
    assert seed["training"]["seed"] == searched["training"]["seed"]
    assert seed["data"] == searched["data"]
    assert all(seed["formats"][f]["max_abs_diff"] <= TOLERANCE for f in ("model.keras", "saved_model", "model.tflite"))
    # The searched model's card, exported after the seed's, shows it beside it; the CLI prints both.
    assert searched["comparison"]["seed"]["accuracy"] == seed["test"]["accuracy"]
    assert searched["comparison"]["seed"]["folder"] == str(project / "export-seed")
    assert "Side by side" in (project / "export" / "README.md").read_text()
    lines = output.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("Side by side")) + 1:]
    rows = [line.split() for line in table]
    assert next(r for r in rows if r[:2] == ["searched", "(this)"])[2] == f"{searched['test']['accuracy']:.4g}"
    assert next(r for r in rows if r[:1] == ["seed"])[1] == f"{seed['test']['accuracy']:.4g}"


def test_the_other_export_shows_up_in_a_later_card(exported_search, tmp_path):
    """Whichever is exported second shows the first: here the seed after the searched one."""
    import shutil

    project, _ = exported_search
    copy = tmp_path / "tiny"
    shutil.copytree(project, copy)
    from xtune.results._export import _comparison

    card = json.loads((copy / "export-seed" / "model_card.json").read_text())
    found = _comparison(copy, "seed", card)
    assert found["searched"]["accuracy"] == json.loads((copy / "export" / "model_card.json").read_text())["test"]["accuracy"]
    card["data"]["fingerprint"] = "another dataset"
    assert _comparison(copy, "seed", card) == {}  # another test split: not comparable


def test_retraining_a_first_round_trial_repeats_its_search_run(search_copy, data_dir):
    """Same seed, reseeding, augmentation and data order as the tuner: the same epochs, to float precision."""
    from xtune.results._candidates import lineage_best_epoch

    state = load_project(search_copy)
    # Export retrains for the best epoch of the whole lineage: pick a trial whose own run holds it.
    trial = max((t for t in state.trials if t.status == "COMPLETED" and t.initial_epoch == 0
                 and lineage_best_epoch(state, t) == t.record.best_epoch),
                key=lambda t: (t.record.best_epoch, -t.record.params))
    report = export_model(search_copy, data_dir=data_dir, trial_id=str(int(trial.trial_id)), out=search_copy / "export-t")
    card = report.card
    assert card["model"]["trial_id"] == trial.trial_id and card["search"]["exported_trial"] == trial.trial_id
    searched = trial.record.history[: trial.record.best_epoch]
    assert len(card["training"]["history"]) == len(searched)
    for mine, theirs in zip(card["training"]["history"], searched):
        assert mine == pytest.approx(theirs, rel=1e-4, abs=1e-5)


def test_trial_that_does_not_exist_is_one_line(finished_search, export_cli):
    result = export_cli(finished_search, "--trial", "77")
    assert result.exit_code == 1 and "has no trial '77'" in one_line(result)


def test_train_plus_val_trains_longer_on_more_images(search_copy, splits, data_dir):
    report = export_model(search_copy, data_dir=data_dir, train_on="train+val", out=search_copy / "export-tv")
    best = best_config(load_project(search_copy))
    card = report.card
    train, both = splits.sizes["train"], splits.sizes["train"] + splits.sizes["validation"]
    assert card["data"]["trained_on"] == "train+val" and card["data"]["training_images"] == both
    assert card["training"]["epochs"] == default_epochs(best["best_epoch"], train, both)
    assert default_epochs(4, 64, 80) == 5 and default_epochs(10, 100, 100) == 10 and default_epochs(1, 64, 80) == 1
    assert "val_accuracy" not in card["training"]["history"][0]  # nothing held out to validate on


def test_an_existing_output_of_the_users_is_never_replaced(search_copy, export_cli):
    out = search_copy / "export"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    for extra in ((), ("--overwrite",)):
        result = export_cli(search_copy, *extra)
        assert result.exit_code == 2
        line = one_line(result)
        assert "holds files xtune did not write (mine.txt)" in line and "--overwrite" not in line
        assert (out / "mine.txt").read_text() == "keep"


def test_no_such_project_is_one_line(tmp_path, export_cli):
    result = export_cli(tmp_path / "nope")
    assert result.exit_code == 1 and "no search at" in one_line(result)


def test_a_search_with_no_completed_trial_is_one_line(search_copy, export_cli):
    for trial_file in search_copy.glob("trial_*/trial.json"):
        trial = json.loads(trial_file.read_text())
        trial["status"], trial["score"] = "FAILED", None
        trial_file.write_text(json.dumps(trial))
    result = export_cli(search_copy)
    assert result.exit_code == 1
    assert "has no completed trial yet" in one_line(result)
    assert not (search_copy / "export").exists()


@pytest.mark.parametrize("args, message", [
    (("--no-retrain", "--epochs", "3"), "no effect with --no-retrain"),
    (("--no-retrain", "--preset", "seed"), "a preset has none"),
    (("--preset", "nope"), "no preset named 'nope'"),
])
def test_contradictory_options_are_usage_errors(finished_search, args, message, export_cli):
    result = export_cli(finished_search, *args)
    assert result.exit_code == 2 and message in result.output


def test_a_format_that_disagrees_fails_and_keeps_the_previous_export(exported_search, data_dir, tmp_path,
                                                                     monkeypatch):
    import shutil

    from xtune.results import _formats

    project = tmp_path / "tiny"
    shutil.copytree(exported_search[0], project)
    out = project / "export"
    before = (out / "model_card.json").read_text()
    original = _formats._predict_tflite
    monkeypatch.setattr(_formats, "_predict_tflite", lambda folder, images: original(folder, images) + 1e-3)
    with pytest.raises(ProjectError, match=r"model.tflite predicts up to 0.001 away .* nothing was written"):
        export_model(project, data_dir=data_dir, overwrite=True)
    assert (out / "model_card.json").read_text() == before
    assert {p.name for p in out.iterdir()} == FILES
    assert not [p for p in project.iterdir() if p.name.startswith(".export")]


def test_an_interrupted_export_leaves_no_folder(search_copy, data_dir, monkeypatch):
    from xtune.results import _export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_export, "verify_formats", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(search_copy, data_dir=data_dir)
    assert not (search_copy / "export").exists()  # a failed export leaves no model folder
    assert not [p for p in search_copy.iterdir() if p.name.startswith(".export")]


@pytest.mark.slow  # trains (the export fine-tunes a preset)
def test_multiclass_preset_export_without_a_search_result(tmp_path, data_dir):
    """A preset with --epochs needs no completed trial; three classes give a softmax."""
    from xtune.data import prepare_data
    from xtune.search._project import SearchSettings, write_run
    from xtune.spaces import load_space

    folder = write_stripes_folder(tmp_path / "three", classes=("a", "b", "c"), per_class=16, seed=7)
    prepared = prepare_data(str(folder), data_dir=data_dir)
    project = tmp_path / "project"
    write_run(project, SearchSettings(data=str(folder), image_size=IMAGE_SIZE, batch_size=16, seed=5),
              load_space("small").to_dict(), prepared.to_dict())
    report = export_model(project, data_dir=data_dir, preset="plain", epochs=1)
    card = report.card
    assert card["class_names"] == ["a", "b", "c"] and "softmax" in card["model"]["output"]
    assert len(card["test"]["confusion_matrix"]) == 3 and card["test"]["images"] == prepared.sizes["test"]
    assert card["training"]["batch_norm_reestimation"] is None  # "plain" has no batch norm
    assert card["data"]["fingerprint"] == prepared.fingerprint
    assert all(card["formats"][f]["max_abs_diff"] <= TOLERANCE for f in ("model.keras", "saved_model", "model.tflite"))


def test_changed_data_is_refused(search_copy, image_root, tmp_path):
    """The search's test split must be the one the export tests on."""
    import shutil

    from xtune.errors import DataError

    changed = tmp_path / "changed"
    shutil.copytree(image_root, changed)
    run_json = search_copy / "run.json"
    run = json.loads(run_json.read_text())
    run["settings"]["data"] = str(changed)
    run_json.write_text(json.dumps(run))
    (changed / "vertical" / "0001.png").unlink()
    with pytest.raises(DataError, match="changed since the search"):
        export_model(search_copy, data_dir=tmp_path / "data")
    assert not (search_copy / "export").exists()


# -- batch norm ---------------------------------------------------------------------------


def test_reestimated_statistics_are_the_training_data_averages():
    import keras

    from xtune.spaces import build_model

    config = PRESETS["small"].replace(zoom=0.0)
    model = build_model(config, (IMAGE_SIZE, IMAGE_SIZE, 3), 2, augmentation=False)
    x, _ = stripes(64, seed=5)
    batches = [(x[i:i + 16], None) for i in range(0, 64, 16)]
    assert reestimate_batch_norm(model, batches) == 4
    # The first batch norm sees the stem's output: its statistics are exact per-batch averages.
    bn = model.get_layer("stage1_bn1")
    stem = keras.Model(model.inputs, model.get_layer("stem_conv").output)
    features = [np.asarray(stem(b, training=True)) for b, _ in batches]
    mean = np.mean([f.mean(axis=(0, 1, 2)) for f in features], axis=0)
    variance = np.mean([f.var(axis=(0, 1, 2)) for f in features], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), variance, rtol=1e-4, atol=1e-5)
    assert bn.momentum == config.bn_momentum  # restored


@pytest.mark.slow  # trains
def test_reestimation_rescues_a_model_that_predicts_one_class():
    """Few steps per epoch and momentum 0.99: as trained it predicts one class; re-estimated it does not."""
    import keras

    from xtune.results import classification_metrics
    from xtune.results._candidates import _inference_model
    from xtune.spaces import build_model, compile_model

    config = PRESETS["small"].replace(bn_momentum=0.99, zoom=0.0)
    x, y = stripes(96, seed=11)
    xt, yt = stripes(64, seed=12)
    keras.utils.set_random_seed(1)
    model = compile_model(build_model(config, (IMAGE_SIZE, IMAGE_SIZE, 3), 2), config)
    model.fit(x, y, batch_size=32, epochs=12, verbose=0)
    names = ["h", "v"]
    before = classification_metrics(model.predict(xt, verbose=0), yt, names)
    reestimate_batch_norm(model, [(x[i:i + 32], None) for i in range(0, 96, 32)])
    after = classification_metrics(_inference_model(model, config, (IMAGE_SIZE, IMAGE_SIZE, 3), 2).predict(xt, verbose=0),
                                   yt, names)
    assert min(np.asarray(before["confusion_matrix"]).sum(axis=0)) <= 8  # (almost) one class predicted
    assert after["accuracy"] >= before["accuracy"] + 0.2


def test_metrics():
    from xtune.results import classification_metrics

    m = classification_metrics(np.array([[0.9], [0.2], [0.6], [0.4]]), np.array([1, 0, 0, 1]), ["a", "b"])
    assert m["accuracy"] == 0.5 and m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.4])))
    m = classification_metrics(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), np.array([0, 1]), ["a", "b", "c"])
    assert m["per_class"] == {"a": {"accuracy": 1.0, "images": 1}, "b": {"accuracy": 0.0, "images": 1},
                              "c": {"accuracy": None, "images": 0}}
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_auto_ships_the_checkpoint_when_the_retrained_model_validates_worse(search_copy, data_dir, monkeypatch):
    from xtune.results import _candidates

    # A retraining that trains nothing: it validates far below the search's checkpoint.
    monkeypatch.setattr(_candidates, "_fit", lambda model, *args, **kwargs: [])
    report = export_model(search_copy, data_dir=data_dir)
    selection = report.card["training"]["selection"]
    scores = selection["validation"]
    assert selection["mode"] == "auto" and selection["shipped"] == "checkpoint"
    assert scores["checkpoint"]["val_accuracy"] > scores["retrained"]["val_accuracy"]
    assert not report.card["training"]["retrained"] and "checkpoint" in report.card["training"]["epochs_rule"]
    # --retrain always ships the retrained model however it validates.
    always = export_model(search_copy, data_dir=data_dir, retrain="always", out=search_copy / "export-always")
    assert always.card["training"]["selection"]["shipped"] == "retrained" and always.card["training"]["retrained"]
    # ... and what it ships is not the checkpoint: the two exports' weights differ.
    import keras

    shipped = keras.models.load_model(always.out / "model.keras").get_weights()
    checkpoint = keras.models.load_model(report.out / "model.keras").get_weights()
    assert len(shipped) == len(checkpoint)
    assert any(not np.allclose(a, b) for a, b in zip(shipped, checkpoint))


def test_the_lineage_sets_the_epochs_of_a_retraining(search_copy):
    from xtune.results._candidates import _lineage, lineage_best_epoch

    state = load_project(search_copy)
    promoted = next(t for t in state.trials if t.parent is not None)
    parent = state.trial(promoted.parent)
    assert [t.trial_id for t in _lineage(state, parent)][:2] == [parent.trial_id, promoted.trial_id]
    epochs = {h["epoch"]: h for t in (parent, promoted) for h in t.record.history}
    best = lineage_best_epoch(state, parent)
    assert best == lineage_best_epoch(state, promoted)  # one run in pieces: one best epoch
    assert epochs[best]["val_accuracy"] == max(h["val_accuracy"] for h in epochs.values())
