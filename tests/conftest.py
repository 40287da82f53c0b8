import functools
import os

# Keep TensorFlow quiet and single-process-friendly in tests; set before any import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest

# Fixtures that train (a whole search, or an export that fine-tunes): a test using one is slow.
TRAINING_FIXTURES = {"finished", "finished_search", "search_copy", "exported_search"}
# pytest-timeout: setup.cfg gives every test a default; slow tests (each may build a
# session fixture that runs a search first) get this one instead.
SLOW_TIMEOUT = 900


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))


_running = {"item": None, "trained": []}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running["item"], _running["trained"] = item, []
    try:
        return (yield)
    finally:
        _running["item"] = None


@pytest.fixture(scope="session", autouse=True)
def _training_only_in_slow_tests():
    """`-m "not slow"` runs no training: a test not marked slow that trains a model fails.

    Keras' ``Model.fit`` and ``Model.train_on_batch`` (KerasTuner trains through ``fit``)
    fail when called from a test, or from a fixture set up for it, that is not marked
    slow. Session-scoped and autouse, so it is in place before any fixture that trains.
    Training in a subprocess is out of its sight: such tests are marked by hand.
    """
    import keras

    def guarded(name, real):
        @functools.wraps(real)
        def method(self, *args, **kwargs):
            item = _running["item"]
            if item is not None and item.get_closest_marker("slow") is None:
                _running["trained"].append(name)
                pytest.fail(f"{item.nodeid} trains a model (Model.{name}) but is not marked slow: "
                            "mark it @pytest.mark.slow, so that `-m \"not slow\"` runs no training", pytrace=False)
            return real(self, *args, **kwargs)

        return method

    originals = {name: keras.Model.__dict__.get(name) for name in ("fit", "train_on_batch")}
    for name in originals:
        setattr(keras.Model, name, guarded(name, getattr(keras.Model, name)))
    yield
    for name, original in originals.items():
        if original is None:
            delattr(keras.Model, name)
        else:
            setattr(keras.Model, name, original)


@pytest.fixture(autouse=True)
def _no_swallowed_training(request):
    """Fail a non-slow test whose code caught the guard's failure and carried on."""
    yield
    assert not _running["trained"], f"{request.node.nodeid} trained a model (Model.{_running['trained'][0]})"


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state (keras-tuner's conftest does this)."""
    import random

    import numpy as np

    random.seed(1337)
    np.random.seed(1337)
    yield
