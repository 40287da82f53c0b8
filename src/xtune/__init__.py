"""xtune: find the best convnet in the mini-Xception family for an image dataset.

The command line is ``tune`` (see :mod:`xtune.cli`). The library is split into
``xtune.spaces`` (the architecture family), ``xtune.data`` (sources and tf.data),
``xtune.search`` (the Hyperband search) and ``xtune.results`` (reading, retraining and
exporting). Importing ``xtune`` itself loads none of the heavy dependencies.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
