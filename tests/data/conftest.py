import pytest


@pytest.fixture
def data_dir(tmp_path):
    """An empty data directory (prepared copies, downloads, caches)."""
    return tmp_path / "xtune-data"
