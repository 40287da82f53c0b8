"""`--overwrite` deletes only what xtune wrote; no option comes from the environment."""

import json

import pytest
from click.testing import CliRunner

from xtune.cli import tune


def run(*args, env=None):
    return CliRunner().invoke(tune, list(map(str, args)), env=env)


def one_line(result) -> str:
    text = result.output.strip()
    assert text.count("\n") == 0, text
    assert "Traceback" not in text
    return text


def user_folder(path):
    (path / "important").mkdir(parents=True)
    (path / "important" / "thesis.txt").write_text("years of work")
    (path / "notes.md").write_text("mine")
    return path


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("extra", [(), ("--overwrite",)])
def test_export_into_a_folder_of_the_users_is_refused(search_copy, data_dir, tmp_path, extra):
    out = user_folder(tmp_path / "mine")
    before = tree(out)
    result = run("export", "--project", search_copy, "--out", out, "--data-dir", data_dir, *extra)
    assert result.exit_code == 2
    line = one_line(result)
    assert f"{out} holds files xtune did not write (important/, notes.md)" in line and "--overwrite" not in line
    assert tree(out) == before and (out / "important" / "thesis.txt").read_text() == "years of work"


@pytest.mark.parametrize("where, message", [
    (lambda p: p, "is or contains the search directory"),
    (lambda p: p.parent, "is or contains the search directory"),
    (lambda p: p / "trial_0000", "lies inside the search's own files"),
    (lambda p: p / "export" / "deeper", "lies inside the search's own files"),
])
def test_export_over_the_search_is_refused(search_copy, data_dir, where, message):
    before = tree(search_copy)
    result = run("export", "--project", search_copy, "--out", where(search_copy), "--data-dir", data_dir,
                 "--overwrite")
    assert result.exit_code == 2 and message in one_line(result)
    assert tree(search_copy) == before


def test_export_over_the_data_is_refused(search_copy, data_dir, image_root):
    for out in (data_dir, data_dir / "exported", image_root, image_root / "horizontal"):
        result = run("export", "--project", search_copy, "--out", out, "--data-dir", data_dir, "--overwrite")
        assert result.exit_code == 2 and "overlaps the data folder" in one_line(result), out


def test_a_search_in_a_folder_of_the_users_is_refused_even_with_overwrite(image_root, data_dir, tmp_path):
    project = user_folder(tmp_path / "project")
    before = tree(project)
    for extra in ((), ("--overwrite",)):
        result = run("search", "--data", image_root, "--project", project, "--data-dir", data_dir,
                     "--image-size", "32", "--max-trials", "2", "--max-epochs", "1", *extra)
        assert result.exit_code == 2
        line = one_line(result)
        assert f"{project} is not a tune search: it holds important/, notes.md" in line
        assert "--overwrite" not in line
        assert tree(project) == before


def test_a_search_inside_the_data_folder_is_refused(image_root, data_dir):
    before = tree(image_root)
    result = run("search", "--data", image_root, "--project", image_root / "runs", "--data-dir", data_dir,
                 "--image-size", "32", "--max-trials", "2", "--max-epochs", "1")
    assert result.exit_code == 2 and "overlaps the data folder" in one_line(result)
    assert tree(image_root) == before


@pytest.mark.slow
def test_search_overwrite_keeps_the_users_files_and_the_exports(search_copy, image_root, data_dir):
    (search_copy / "export").mkdir()
    (search_copy / "export" / "model_card.json").write_text("{}")
    (search_copy / "my-notes.md").write_text("mine")
    old_trials = sorted(p.name for p in search_copy.glob("trial_*"))
    result = run("search", "--data", image_root, "--project", search_copy, "--data-dir", data_dir, "--overwrite",
                 "--image-size", "16", "--batch-size", "16", "--space", "small", "--max-trials", "1",
                 "--max-epochs", "1", "--quiet", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert (search_copy / "my-notes.md").read_text() == "mine"
    assert (search_copy / "export" / "model_card.json").read_text() == "{}"
    assert sorted(p.name for p in search_copy.glob("trial_*")) == ["trial_0000"] != old_trials
    assert json.loads((search_copy / "run.json").read_text())["settings"]["max_trials"] == 1


def test_no_option_is_read_from_the_environment(search_copy, data_dir):
    """TUNE_SEARCH_OVERWRITE=1 once wiped a finished search: no TUNE_* variable sets an option."""
    before = tree(search_copy)
    env = {"TUNE_SEARCH_OVERWRITE": "1", "TUNE_EXPORT_OVERWRITE": "1", "TUNE_SEARCH_MAX_TRIALS": "3",
           "TUNE_EXPORT_OUT": str(search_copy)}
    result = run("search", "--project", search_copy, env=env)
    assert result.exit_code == 0 and "is finished" in result.output
    assert [p for p in tree(search_copy) if p != ".lock"] == before  # the lock file is how a search starts
    run_json = json.loads((search_copy / "run.json").read_text())
    assert run_json["settings"]["max_trials"] == 10


def test_help_names_the_environment_variables_that_exist():
    result = run("search", "--help")
    assert "XTUNE_DATA_DIR" in result.output
