"""`tune data prepare` and `tune data info` through click's CliRunner."""

import json

from click.testing import CliRunner

from xtune.cli import tune

from .images import bad_files, kaggle_zip, make_bad_folder, make_classes_folder


def _run(*args):
    return CliRunner().invoke(tune, list(map(str, args)))


def test_info_on_a_folder_with_bad_files_exits_0_and_lists_each_one(tmp_path, data_dir):
    folder = make_bad_folder(tmp_path / "bad", per_class=6)
    for prepared in (False, True):
        if prepared:
            assert _run("data", "prepare", folder, "--data-dir", data_dir).exit_code == 0
        result = _run("data", "info", folder, "--data-dir", data_dir)
        assert result.exit_code == 0, result.output
        assert ("prepared in" in result.output) is prepared
        for name, (_, expected) in bad_files().items():
            _action, detail = expected.split(":", 1)
            line = next(line for line in result.output.splitlines() if line.startswith(f"cat/{name} "))
            assert detail in line
        assert "warning: empty class folder 'empty' ignored" in result.output
        assert "Skipped 6 files:" in result.output


def test_prepare_prints_the_counts_and_info_json_matches(tmp_path, data_dir):
    folder = make_classes_folder(tmp_path / "pets", per_class=10)
    result = _run("data", "prepare", folder, "--data-dir", data_dir, "--validation-fraction", "0.2",
                  "--test-fraction", "0.2", "--split-seed", "3")
    assert result.exit_code == 0, result.output
    assert "2 classes, 20 images: train 12, validation 4, test 4" in result.output
    assert "Skipped 0 files." in result.output
    info = _run("data", "info", folder, "--data-dir", data_dir, "--format", "json", "--validation-fraction", "0.2",
                "--test-fraction", "0.2", "--split-seed", "3")
    assert info.exit_code == 0
    record = json.loads(info.output)
    assert record["status"] == "prepared" and record["sizes"] == {"train": 12, "validation": 4, "test": 4}
    assert record["counts"]["train"] == {"cat": 6, "dog": 6}


def test_prepare_kaggle_from_an_archive(tmp_path, data_dir):
    archive = kaggle_zip(tmp_path / "dogs-vs-cats.zip", per_class=10)
    result = _run("data", "prepare", "kaggle:dogs-vs-cats", "--archive", archive, "--split-sizes", "4,2,3",
                  "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    assert "train 8, validation 4, test 6" in result.output
    info = _run("data", "info", "kaggle:dogs-vs-cats", "--split-sizes", "4,2,3", "--data-dir", data_dir)
    assert info.exit_code == 0 and "prepared in" in info.output


def test_user_errors_are_one_line_with_the_right_exit_code(tmp_path, data_dir):
    not_prepared = _run("data", "info", "demo", "--data-dir", data_dir)
    assert not_prepared.exit_code == 1
    assert not_prepared.output.strip() == (f"Error: demo is not prepared in {data_dir}; run: tune data prepare demo "
                                           f"--data-dir {data_dir}")
    bad_source = _run("data", "prepare", tmp_path / "missing", "--data-dir", data_dir)
    assert bad_source.exit_code == 2 and "is not demo, kaggle:dogs-vs-cats or an existing folder" in bad_source.output
    evil = kaggle_zip(tmp_path / "evil.zip", per_class=4, extra={"../evil.txt": b"x"})
    refused = _run("data", "prepare", "kaggle:dogs-vs-cats", "--archive", evil, "--data-dir", data_dir)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    errors = [line for line in refused.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: refusing")  # one line (after the progress line)
    sizes = _run("data", "prepare", "kaggle:dogs-vs-cats", "--split-sizes", "1,2", "--data-dir", data_dir)
    assert sizes.exit_code == 2 and "three positive numbers" in sizes.output


def test_many_conversions_are_summed_up_in_the_table(tmp_path, data_dir):
    from .images import image_bytes, write

    folder = make_classes_folder(tmp_path / "gray", per_class=4)
    for i in range(40):
        write(folder / "dog" / f"gray_{i}.jpg", image_bytes("JPEG", "L", seed=i))
    result = _run("data", "info", folder, "--data-dir", data_dir)
    assert result.exit_code == 0
    assert "Converted to RGB: 40 files:" in result.output and "(--format json lists every file)" in result.output
    assert "gray_7.jpg" not in result.output
    assert any(line.split() == ["JPEG", "L", "decoded", "as", "RGB", "40"] for line in result.output.splitlines())
