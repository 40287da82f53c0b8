import pytest

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
            "--max-epochs", "4", "--seed", "3", *extra]
