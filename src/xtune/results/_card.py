"""The model card's README.md, rendered from model_card.json."""

from __future__ import annotations


def render_card_markdown(card: dict) -> str:
    """Render a model card (the dict of ``model_card.json``) as Markdown."""
    model, data, training, test = card["model"], card["data"], card["training"], card["test"]
    names = card["class_names"]
    size = model["input_shape"]
    lines = [
        f"# Model card: {card['name']} mini-Xception ({_pct(test['accuracy'])} test accuracy)",
        "",
        f"- **Source:** {model['source']}",
        f"- **Classes ({len(names)}):** {', '.join(names)}",
        f"- **Input:** {model['input']}",
        f"- **Output:** {model['output']}",
        f"- **Parameters:** {model['params']:,}",
        f"- **Created:** {card['created']}",
        "",
        "## Files",
        "",
        "| file | load with |",
        "|---|---|",
        "| `model.keras` | `keras.models.load_model(\"model.keras\")` (no augmentation layers) |",
        "| `saved_model/` | `tf.saved_model.load(\"saved_model\").serve(images)` |",
        "| `model.tflite` | `tf.lite.Interpreter(model_path=\"model.tflite\")` |",
        "",
        f"Each was reloaded after writing and gave the trained model's outputs on "
        f"{card['formats'].get('images', 0)} test images within {card['formats'].get('tolerance', 0):g} "
        f"(max abs difference: "
        + ", ".join(f"{k} {v['max_abs_diff']:.2g}" for k, v in card["formats"].items() if isinstance(v, dict))
        + ").",
        "",
        "Predict: `tune predict --model <this folder> IMAGE...`",
        "",
        "## Data",
        "",
        f"- **Source:** {data['source']}" + (f" (fingerprint `{data['fingerprint']}`)" if data.get("fingerprint") else ""),
        "- **Splits:** " + ", ".join(f"{k} {v}" for k, v in data["splits"].items()),
        f"- **Trained on:** {data['trained_on']} ({data['training_images']} images); tested on the test split",
        "",
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
    if card.get("comparison"):
        lines += ["", "## Side by side (same test split)", "",
                  "| model | test accuracy | test loss | parameters | epochs | trained on |", "|---|---|---|---|---|---|",
                  f"| **{card['name']}** (this) | {_num(test['accuracy'])} | {_num(test['loss'])} | "
                  f"{model['params']:,} | {training['epochs']} | {data['trained_on']} |"]
        for other, row in card["comparison"].items():
            params = f"{row['params']:,}" if row.get("params") is not None else "?"
            lines.append(f"| {other} (`{row['folder']}`) | {_num(row['accuracy'])} | {_num(row['loss'])} | "
                         f"{params} | {row.get('epochs')} | {row.get('trained_on')} |")
    lines += ["", "## Architecture and training", "", "| hyperparameter | value |", "|---|---|"]
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
    if training["history"]:
        keys = [k for k in training["history"][0] if k != "epoch"]
        lines += ["", "### Training history", "", "| epoch | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for h in training["history"]:
            lines.append(f"| {h['epoch']} | " + " | ".join(_num(h.get(k)) for k in keys) + " |")
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in card["versions"].items()), ""]
    return "\n".join(lines)


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _pct(value) -> str:
    return "?" if value is None else f"{100 * value:.1f} %"
