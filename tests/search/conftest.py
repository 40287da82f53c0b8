import pytest
from click.testing import CliRunner

from ..images import make_image_folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images") / "shapes")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xtune-data")


def search_args(image_folder, project, data_dir, *extra):
    return ["search", "--data", str(image_folder), "--project", str(project), "--data-dir", str(data_dir),
            "--image-size", "16", "--batch-size", "8", "--space", "small", "--max-trials", "10",
            "--max-epochs", "4", "--seed", "3", "--workers", "1", *extra]  # one process; a later --workers wins


@pytest.fixture(scope="session")
def finished(image_folder, data_dir, tmp_path_factory):
    """A finished single-process search with ``search_args`` (shared: the distributed tests compare to it)."""
    from xtune.cli import tune

    project = tmp_path_factory.mktemp("runs") / "shapes"
    result = CliRunner().invoke(tune, search_args(image_folder, project, data_dir))
    assert result.exit_code == 0, result.output
    return project, result.output
