"""`tune results`, `tune export`, `tune predict`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from xtune.cli._app import FORMATS, PROJECT, project_required, quiet_tensorflow, tune
from xtune.cli._render import ExportView, duration, echo_json, echo_table, quote, say, shorthand

RESULTS_FORMATS = click.Choice(["table", "csv", "json"])
_ROW_FIELDS = ("rank", "trial_id", "status", "bracket", "round", "initial_epoch", "epochs", "best_epoch",
               "objective", "score", "tie_breaker", "params", "flops", "seconds", "parent", "reason")


def _si(value) -> str | None:
    """1.2M, 340k: a big count in a narrow column."""
    if value is None:
        return None
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)


@tune.command()
@PROJECT
@click.option("--top", type=click.IntRange(1), help="Only the K best completed trials.")
@click.option("--pareto", is_flag=True, help="Only the accuracy-vs-size front: the trials no other beats on both "
                                             "the objective and the size (parameters, FLOPs), smallest first.")
@click.option("--format", "fmt", type=RESULTS_FORMATS, default="table", show_default=True)
def results(project, top, pareto, fmt):
    """Trials ranked by the objective, and the best architecture as a config.

    One row per trial: rank, id, status, Hyperband bracket and round, epochs
    (a promoted trial continues its parent from its first epoch), the objective at
    the trial's best epoch, parameters, hyperparameters and duration; failed trials
    with their reason. Reads the search directory only, so it works while a search
    runs, after an interruption, and when it is finished.

    \b
    tune results --project runs/demo
    tune results --project runs/demo --top 5 --format csv > top5.csv
    """
    from xtune.results import search_results

    found = search_results(project_required(project), top=top, pareto=pareto)
    if fmt == "json":
        echo_json(found.to_dict())
        return
    if fmt == "csv":
        _echo_csv(found.rows)
        return
    say(f"{found.project}: {found.state},", f"{len(found.rows)} trial(s) shown,", f"ranked by {found.objective}",
        f"(ties: {found.tie_breaker}, then fewer params)")
    if pareto:
        say("The accuracy-vs-size front: no other trial is at least as good on", f"{found.objective},",
            "parameters and FLOPs, and better on one. Export it: tune export --pareto")
    if found.warm_start:
        w = found.warm_start
        say(f"Warm start: the first {len(w['configs'])} configurations are the best of {w['project']}",
            f"({w['data']} at {w['image_size']}x{w['image_size']}).")
    for problem in found.problems:
        say(f"damaged: {problem}", err=True)
    if not found.rows:
        click.echo("no trials yet")
    table = []
    for r in found.rows:
        table.append({
            "rank": r["rank"], "trial": r["trial_id"], "status": r["status"],
            "b/r": f"b{r['bracket']} r{r['round']}" if r["bracket"] is not None else None,
            "epochs": f"{r['initial_epoch']}->{r['epochs']}" if r["epochs"] is not None else None,
            found.objective: f"{r['score']:.4f}" if r["score"] is not None else None,
            found.tie_breaker: f"{r['tie_breaker']:.4f}" if r["tie_breaker"] is not None else None,
            "best ep": r["best_epoch"],
            "params": f"{r['params']:,}" if r["params"] is not None else None,
            **({"FLOPs": _si(r["flops"])} if pareto else {}),
            "architecture": shorthand(r["values"]) if r["values"] else None,
            "time": duration(r["seconds"]) if r["seconds"] is not None else None,
            "note": r["reason"],
        })
    if not any(r["note"] for r in table):
        for r in table:
            del r["note"]
    echo_table(table, wrap="architecture", detail=("architecture", "note", "best ep", "time"))
    if found.best and not pareto:
        _echo_best(found.best, found.project)


def _echo_csv(rows: list[dict]) -> None:
    import csv
    import io

    names = []
    for r in rows:
        names += [k for k in r["values"] if k not in names]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(_ROW_FIELDS) + names, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**{k: r[k] for k in _ROW_FIELDS}, **r["values"]})
    click.echo(buffer.getvalue(), nl=False)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _echo_best(best: dict, project) -> None:
    click.echo()
    where = f"at epoch {best['best_epoch']} of {best['epochs']}," if best.get("best_epoch") else ""
    say(f"Best architecture: trial {best['trial_id']},", f"{best['objective']} {best['score']:.4f}", where,
        f"{best['params']:,} parameters,", f"stage widths {', '.join(map(str, best['widths']))}")
    click.echo("# Its configuration (xtune.spaces.MiniXceptionConfig fields, in TOML):")
    for key, value in best["config"].items():
        click.echo(f"{key} = {_toml_value(value)}")
    click.echo(f"Next: tune export --project {quote(project)}")


@tune.command()
@PROJECT
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="The export folder.  [default: runs/NAME/export, or runs/NAME/export-PRESET]")
@click.option("--epochs", type=click.IntRange(1),
              help="Training epochs.  [default: the best trial's peak epoch, scaled by the training images "
                   "with --train-on train+val]")
@click.option("--train-on", type=click.Choice(["train", "train+val"]), default="train", show_default=True,
              help="Retrain on the training split, or on training + validation (the test split is never trained on).")
@click.option("--retrain", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="auto: retrain, then ship whichever of the retrained model and the search's own checkpoint of "
                   "the trial validates better; always: ship the retrained model; never: ship the checkpoint.")
@click.option("--no-retrain", "no_retrain", is_flag=True, help="The same as --retrain never.")
@click.option("--preset", metavar="NAME",
              help="Train this preset of the family instead of the searched best, with the same data and "
                   "settings: seed (the book's model), small or plain.")
@click.option("--trial", "trial_id", metavar="ID", help="Export this completed trial instead of the best one.")
@click.option("--pareto", is_flag=True, help="Export each member of the accuracy-vs-size front (tune results "
                                             "--pareto) into runs/NAME/export-pareto/trial_NNNN, with its latency.")
@click.option("--latency", is_flag=True, help="Also time the exported TFLite model on this machine (one thread, "
                                              "median of 50 runs; in the card).")
@click.option("--overwrite", is_flag=True, help="Replace the export folder if it exists.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where prepared data is cached (as for tune search).")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True,
              help="json prints the model card (progress goes to stderr).")
@click.option("--quiet", is_flag=True, help="No progress, only the result.")
def export(project, out, epochs, train_on, retrain, no_retrain, preset, trial_id, pareto, latency, overwrite, data_dir,
           fmt, quiet):
    """Retrain the best architecture, test it, and export it (Keras, SavedModel, TFLite).

    Rebuilds the best trial's configuration from its stored hyperparameters and
    retrains it from scratch with the trial's seed, augmentation, batch size and
    data order (a first-round trial repeats its search run exactly),
    re-estimates its batch-norm statistics over the training data, and evaluates it
    on the test split (accuracy, loss, per-class accuracy, confusion matrix). Writes
    model.keras, saved_model/ and model.tflite (without augmentation layers) and a
    model card (model_card.json, README.md). Every format is reloaded and must give
    the trained model's predictions within 1e-4, or nothing is written.

    --preset seed trains the book's model on the same data and settings; each card
    shows the other exports of the search side by side on the same test split.

    \b
    tune export --project runs/demo
    tune export --project runs/demo --preset seed
    tune export --project runs/demo --train-on train+val --out best/
    """
    from xtune.results import export_model

    quiet_tensorflow()
    printer = ExportView(verbose=not quiet, err=fmt == "json")
    if no_retrain:
        retrain = "never"
    if pareto:
        if out or epochs or preset or trial_id or train_on != "train":
            raise click.UsageError("--pareto exports each front member as the search trained it: drop --out, "
                                   "--epochs, --preset, --trial and --train-on")
        _export_front(project_required(project), data_dir, overwrite, retrain, printer)
        return
    report = export_model(project_required(project), out=out, epochs=epochs, train_on=train_on, retrain=retrain,
                          preset=preset, trial_id=trial_id, overwrite=overwrite, data_dir=data_dir,
                          progress=printer, latency=latency)
    if fmt == "json":
        echo_json(report.card)
        return
    _echo_export(report.card, report.out)


def _export_front(project, data_dir, overwrite, retrain, printer) -> None:
    from xtune.results import export_pareto

    reports = export_pareto(project, data_dir=data_dir, overwrite=overwrite, progress=printer, retrain=retrain)
    click.echo(f"The accuracy-vs-size front, {len(reports)} model(s), side by side on the same test split:")
    rows = [{"trial": r.card["model"]["trial_id"], "test accuracy": r.test["accuracy"],
             "params": f"{r.card['model']['params']:,}",
             "latency": f"{r.card['latency']['median_ms']:.2f} ms" if r.card.get("latency") else None,
             "folder": str(r.out)} for r in reports]
    echo_table(rows, wrap="folder")
    say("Latency: model.tflite, one image, one thread of this machine, median of 50 runs.")


def _echo_export(card: dict, out) -> None:
    test = card["test"]
    selection = card["training"].get("selection") or {}
    scores = selection.get("validation") or {}
    if len(scores) > 1:
        objective = card["search"]["objective"]
        shipped = selection["shipped"]
        other = next(name for name in scores if name != shipped)
        what = {"retrained": "the retrained model", "checkpoint": "the search's checkpoint"}
        say(f"Shipped {what[shipped]}:", f"{objective} {scores[shipped][objective]:.4f} on validation,",
            f"against {scores[other][objective]:.4f} for {what[other]}")
    say(f"Test: accuracy {test['accuracy']:.4f},", f"loss {test['loss']:.4f}", f"on {test['images']} images")
    per_class = [f"{name} {'-' if r['accuracy'] is None else format(r['accuracy'], '.4f')} ({r['images']})"
                 for name, r in test["per_class"].items()]
    say("  per class:", *[f"{c}," for c in per_class[:-1]], per_class[-1], indent="    ")
    names = card["class_names"]
    click.echo("  confusion matrix (rows: true, columns: predicted):")
    width = max(len(n) for n in names)
    for name, row in zip(names, test["confusion_matrix"]):
        say(f"    {name.ljust(width)}", *(f"{v:>5}" for v in row), sep="  ", indent="      ")
    bn = card["training"].get("batch_norm_reestimation")
    if bn:
        say("  batch norm re-estimated over the training data:", f"test accuracy {bn['test_before']['accuracy']:.4f} "
            f"before, {bn['test_after']['accuracy']:.4f} after", indent="    ")
    formats = card["formats"]
    diffs = ", ".join(f"{k} {v['max_abs_diff']:.1g}" for k, v in formats.items() if isinstance(v, dict))
    say(f"Reloaded and checked on {formats['images']} test images", f"(max abs diff; tolerance "
        f"{formats['tolerance']:g}):", diffs)
    say(f"Wrote {out}:", "model.keras, saved_model/, model.tflite, model_card.json, README.md")
    if card["comparison"]:
        click.echo("Side by side on the same test split:")
        rows = [{"model": f"{card['name']} (this)", "test accuracy": test["accuracy"], "test loss": test["loss"],
                 "params": f"{card['model']['params']:,}", "epochs": card["training"]["epochs"], "folder": str(out)}]
        for name, other in card["comparison"].items():
            rows.append({"model": name, "test accuracy": other["accuracy"], "test loss": other["loss"],
                         "params": f"{other['params']:,}" if other.get("params") is not None else None,
                         "epochs": other.get("epochs"), "folder": other["folder"]})
        echo_table(rows, detail=("folder",))  # a path is not cut mid-word: it moves under its row
    click.echo(f"Next: tune predict --model {quote(out)} IMAGE...")


@tune.command()
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="An export folder (tune export).")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def predict(model_dir, images, fmt):
    """Print the predicted class and its probability for each image.

    Images are decoded as in training (RGB, resized bilinearly to the model's input
    size). An image that cannot be read does not stop the others: they are
    predicted and printed, then one error line names the unreadable ones and the
    exit status is 1.

    \b
    tune predict --model runs/demo/export photo1.jpg photo2.png
    """
    from xtune.results import predict_images

    quiet_tensorflow()
    records = predict_images(model_dir, list(images))
    good = [r for r in records if "error" not in r]
    bad = [r for r in records if "error" in r]
    if fmt == "json":
        echo_json(records)
    elif good:
        echo_table([{"image": r["path"], "class": r["class"], "probability": f"{r['probability']:.4f}"}
                     for r in good])
    if bad:
        detail = "; ".join(f"{r['path']}: {r['error']}" for r in bad)
        raise click.ClickException(f"cannot read {len(bad)} of {len(records)} image(s): {detail}")




@tune.command()
@PROJECT
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file.  [default: runs/NAME/report.html]")
def report(project, out):
    """Write one HTML page that draws the search (it opens without network access).

    The optimization history, accuracy against parameters with the Pareto front, the
    Hyperband brackets and who was promoted, learning curves of the best trials,
    each hyperparameter's effect on the score, and the exports' test results side by
    side. Works while a search runs.

    \b
    tune report --project runs/demo
    """
    from xtune.results import write_report

    path = write_report(project_required(project), out)
    say(f"Wrote {path}", f"({path.stat().st_size / 1e6:.1f} MB).", f"Open it in a browser: {path.resolve().as_uri()}")
