"""Read a search directory (ranked trials, the best configuration); retrain, test and export.

``search_results`` and friends read JSON only; ``export_model`` and
``predict_images`` import Keras and TensorFlow when called.
"""

from typing import TYPE_CHECKING

from xtune.results._rows import (
    SearchResults,
    best_config,
    best_trial,
    completed_trials,
    pareto_front,
    search_results,
    trial_config,
    trial_rows,
)

if TYPE_CHECKING:  # loaded on first use (``__getattr__``); type checkers see them here
    from xtune.results._card import CARD_FILE
    from xtune.results._export import ExportReport, default_epochs, export_model, export_pareto
    from xtune.results._formats import TOLERANCE, verify_formats
    from xtune.results._job import default_export_dir
    from xtune.results._metrics import classification_metrics
    from xtune.results._predict import predict_images, read_card
    from xtune.results._report import write_report
    from xtune.spaces._batchnorm import reestimate_batch_norm

__all__ = [
    "CARD_FILE",
    "TOLERANCE",
    "ExportReport",
    "SearchResults",
    "best_config",
    "best_trial",
    "classification_metrics",
    "completed_trials",
    "default_epochs",
    "default_export_dir",
    "export_model",
    "export_pareto",
    "pareto_front",
    "predict_images",
    "read_card",
    "reestimate_batch_norm",
    "search_results",
    "trial_config",
    "trial_rows",
    "verify_formats",
    "write_report",
]

_LAZY = {
    "CARD_FILE": "_card",
    "ExportReport": "_export",
    "TOLERANCE": "_formats",
    "default_epochs": "_export",
    "default_export_dir": "_job",
    "export_model": "_export",
    "export_pareto": "_export",
    "verify_formats": "_formats",
    "write_report": "_report",
    "classification_metrics": "_metrics",
    "predict_images": "_predict",
    "read_card": "_predict",

}


def __getattr__(name):
    if name == "reestimate_batch_norm":
        from xtune.spaces._batchnorm import reestimate_batch_norm

        return reestimate_batch_norm
    # numpy and (when called) Keras/TensorFlow: keep `import xtune.results` light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"xtune.results.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'xtune.results' has no attribute {name!r}")
