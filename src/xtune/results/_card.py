"""The model card: what ``model_card.json`` says about an export, and its README.md.

``model_card`` assembles the card once the model is chosen and tested (the export
adds the format checks, latency and comparison before writing it);
``render_card_markdown`` renders it for people, one function per section.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from xtune.results._rows import completed_trials

if TYPE_CHECKING:
    from xtune.results._candidates import Candidate
    from xtune.results._job import ExportJob

CARD_FILE = "model_card.json"
CARD_FORMAT = 1


def model_card(job: ExportJob, inference, splits, data_info, chosen: Candidate, selection: dict, test) -> dict:
    """What the exported model is, how it was trained, how it tests (``model_card.json``)."""
    names = list(splits.class_names)
    settings, trial = job.state.settings, job.trial
    trial_id = trial.trial_id if trial is not None else None  # a searched export always has its trial
    input_shape = (settings.image_size, settings.image_size, 3)
    sizes = {k: int(v) for k, v in dict(splits.sizes).items()}
    return {
        "format": CARD_FORMAT,
        "created": _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds"),
        "name": job.name,
        "model": {
            "source": (f"preset {job.preset!r} (xtune.spaces.PRESETS)" if job.preset is not None
                       else f"trial {trial_id} of the search in {job.state.path}"),
            "trial_id": trial_id if job.preset is None else None,
            "config": job.config.to_dict(),
            "widths": list(job.config.widths),
            "params": int(inference.count_params()),
            "input_shape": list(input_shape),
            "input": (f"RGB images resized (bilinear) to {input_shape[0]}x{input_shape[1]}, float32 pixel values "
                      "in [0, 255], batched: (batch, height, width, 3)"),
            "output": (f"(batch, 1): sigmoid probability of {names[1]!r}" if len(names) == 2
                       else f"(batch, {len(names)}): softmax probabilities in class_names order"),
        },
        "class_names": names,
        "data": {
            "source": settings.data,
            "fingerprint": (data_info or {}).get("fingerprint"),
            "splits": sizes,
            "trained_on": job.train_on,
            "training_images": sizes["train"] + (sizes["validation"] if job.train_on == "train+val" else 0),
        },
        "training": {
            "retrained": chosen.name == "retrained",
            "selection": selection,
            "epochs": job.epochs if chosen.name == "retrained" else job.best_epoch,
            "epochs_rule": _epochs_rule(chosen.name == "retrained", job.epochs, job.best_epoch, job.train_on, trial),
            "batch_size": settings.batch_size,
            "seed": job.seed,
            "augmentation": {"flip": job.config.flip, "rotation": job.config.rotation, "zoom": job.config.zoom},
            "optimizer": job.config.optimizer,
            "learning_rate": job.config.learning_rate,
            "seconds": round(chosen.seconds, 1),
            "history": chosen.history,
            "batch_norm_reestimation": chosen.bn,
        },
        "test": test,
        "search": _search_summary(job.state, trial),
        "formats": {},
        "comparison": {},
        "versions": _versions(),
    }


def _epochs_rule(retrain, epochs, best_epoch, train_on, trial) -> str:
    if not retrain:
        return f"the search's checkpoint of trial {trial.trial_id}: its best epoch ({best_epoch}), not retrained"
    if trial is None:
        return "--epochs"
    lineage = f"the epoch that validated best across trial {trial.trial_id}'s lineage ({best_epoch})"
    if train_on == "train":
        return lineage
    return f"{lineage} x (train+val images / train images)"


def _search_summary(state, trial) -> dict:
    completed = completed_trials(state)
    best = completed[0] if completed else None
    return {
        "project": str(state.path),
        "objective": state.settings.objective,
        "image_size": state.settings.image_size,
        "max_epochs": state.settings.max_epochs,
        "trials_completed": len(completed),
        "trials_failed": sum(1 for t in state.trials if t.status == "FAILED"),
        "finished": state.finished is not None,
        "best_trial": best.trial_id if best else None,
        "best_score": float(best.score) if best and best.score is not None else None,
        "exported_trial": trial.trial_id if trial else None,
        "exported_trial_score": float(trial.score) if trial and trial.score is not None else None,
        "exported_trial_best_epoch": trial.record.best_epoch if trial else None,
    }


def _versions() -> dict:
    from xtune.search._project import library_versions

    return library_versions()


def render_card_markdown(card: dict) -> str:
    """Render a model card (the dict of ``model_card.json``) as Markdown.

    One function per section, in reading order; a section with nothing to show (no
    other export to compare with, no training history) is left out.
    """
    sections = [_summary(card), _files(card), _data(card), _test_results(card), _side_by_side(card),
                _architecture(card), _history(card), _version_list(card)]
    lines: list[str] = []
    for section in sections:
        if section:
            lines += [*section, ""]
    return "\n".join(lines)


def _summary(card: dict) -> list[str]:
    model, names = card["model"], card["class_names"]
    return [
        f"# Model card: {card['name']} mini-Xception ({_pct(card['test']['accuracy'])} test accuracy)",
        "",
        f"- **Source:** {model['source']}",
        f"- **Classes ({len(names)}):** {', '.join(names)}",
        f"- **Input:** {model['input']}",
        f"- **Output:** {model['output']}",
        f"- **Parameters:** {model['params']:,}",
        f"- **Created:** {card['created']}",
    ]


def _files(card: dict) -> list[str]:
    formats = card["formats"]
    return [
        "## Files",
        "",
        "| file | load with |",
        "|---|---|",
        "| `model.keras` | `keras.models.load_model(\"model.keras\")` (no augmentation layers) |",
        "| `saved_model/` | `tf.saved_model.load(\"saved_model\").serve(images)` |",
        "| `model.tflite` | `tf.lite.Interpreter(model_path=\"model.tflite\")` |",
        "",
        f"Each was reloaded after writing and gave the trained model's outputs on "
        f"{formats.get('images', 0)} test images within {formats.get('tolerance', 0):g} "
        f"(max abs difference: "
        + ", ".join(f"{k} {v['max_abs_diff']:.2g}" for k, v in formats.items() if isinstance(v, dict))
        + ").",
        "",
        "Predict: `tune predict --model <this folder> IMAGE...`",
    ]


def _data(card: dict) -> list[str]:
    data = card["data"]
    return [
        "## Data",
        "",
        f"- **Source:** {data['source']}" + (f" (fingerprint `{data['fingerprint']}`)" if data.get("fingerprint") else ""),
        "- **Splits:** " + ", ".join(f"{k} {v}" for k, v in data["splits"].items()),
        f"- **Trained on:** {data['trained_on']} ({data['training_images']} images); tested on the test split",
    ]


def _test_results(card: dict) -> list[str]:
    test, names = card["test"], card["class_names"]
    lines = [
        "## Test results",
        "",
        f"- **Accuracy:** {_num(test['accuracy'])}",
        f"- **Loss:** {_num(test['loss'])}",
        "",
        "| class | accuracy | images |",
        "|---|---|---|",
    ]
    for name, row in test["per_class"].items():
        lines.append(f"| {name} | {_num(row['accuracy'])} | {row['images']} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted class):", "",
              "| true \\ predicted | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, test["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _side_by_side(card: dict) -> list[str]:
    """The other exports of the same search on the same test split (none: no section)."""
    if not card.get("comparison"):
        return []
    model, test, training, data = card["model"], card["test"], card["training"], card["data"]
    lines = ["## Side by side (same test split)", "",
             "| model | test accuracy | test loss | parameters | epochs | trained on |", "|---|---|---|---|---|---|",
             f"| **{card['name']}** (this) | {_num(test['accuracy'])} | {_num(test['loss'])} | "
             f"{model['params']:,} | {training['epochs']} | {data['trained_on']} |"]
    for other, row in card["comparison"].items():
        params = f"{row['params']:,}" if row.get("params") is not None else "?"
        lines.append(f"| {other} (`{row['folder']}`) | {_num(row['accuracy'])} | {_num(row['loss'])} | "
                     f"{params} | {row.get('epochs')} | {row.get('trained_on')} |")
    return lines


def _architecture(card: dict) -> list[str]:
    model, training = card["model"], card["training"]
    size = model["input_shape"]
    lines = ["## Architecture and training", "", "| hyperparameter | value |", "|---|---|"]
    for key, value in model["config"].items():
        lines.append(f"| {key} | {value} |")
    lines += [
        "",
        f"- Stage widths: {', '.join(map(str, model['widths']))}; input {size[0]}x{size[1]}x{size[2]}",
        f"- {'Retrained from scratch' if training['retrained'] else 'Not retrained (the trial checkpoint)'}: "
        f"{training['epochs']} epoch(s) ({training['epochs_rule']}), batch {training['batch_size']}, "
        f"seed {training['seed']}, {training['optimizer']} at {training['learning_rate']:g}, "
        f"{training['seconds']:.0f} s",
    ]
    bn = training.get("batch_norm_reestimation")
    if bn:
        lines.append(
            f"- Batch-norm statistics re-estimated over the training data ({bn['batches']} batches): test accuracy "
            f"{_num(bn['test_before']['accuracy'])} before, {_num(bn['test_after']['accuracy'])} after")
    search = card.get("search") or {}
    if search.get("best_trial") is not None:
        lines.append(f"- Search: {search['project']}, {search['trials_completed']} trials completed, best trial "
                     f"{search['best_trial']} ({search['objective']} {_num(search['best_score'])})")
    if search.get("exported_trial") is not None and card["name"] == "searched":
        lines.append(f"- Exported trial {search['exported_trial']}: {search['objective']} "
                     f"{_num(search['exported_trial_score'])} at epoch {search['exported_trial_best_epoch']} "
                     "in the search")
    return lines


def _history(card: dict) -> list[str]:
    """The metrics of every training epoch (none recorded: no section)."""
    history = card["training"]["history"]
    if not history:
        return []
    keys = [k for k in history[0] if k != "epoch"]
    lines = ["### Training history", "", "| epoch | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for h in history:
        lines.append(f"| {h['epoch']} | " + " | ".join(_num(h.get(k)) for k in keys) + " |")
    return lines


def _version_list(card: dict) -> list[str]:
    return ["## Versions", "", ", ".join(f"{k} {v}" for k, v in card["versions"].items())]


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _pct(value) -> str:
    return "?" if value is None else f"{100 * value:.1f} %"
