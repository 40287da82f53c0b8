import os

# Keep TensorFlow quiet and single-process-friendly in tests; set before any import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state (keras-tuner's conftest does this)."""
    import random

    import numpy as np

    random.seed(1337)
    np.random.seed(1337)
    yield
