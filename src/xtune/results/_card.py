"""The model card's README.md, rendered from model_card.json."""

from __future__ import annotations


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
