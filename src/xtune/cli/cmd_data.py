"""`tune data prepare` and `tune data info`."""

from __future__ import annotations

from pathlib import Path

import click

from xtune.cli._app import DATA_SOURCE_HELP, FORMATS, data_options, data_settings, tune
from xtune.cli._render import echo_json, echo_table

_MAX_CONVERTED_LISTED = 30


@tune.group("data")
def data_group():
    """Prepare a dataset and see what training will get from it."""


@data_group.command("prepare", epilog=DATA_SOURCE_HELP)
@click.argument("source")
@data_options
@click.option("--archive", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="kaggle:dogs-vs-cats only: an already downloaded dogs-vs-cats.zip or train.zip (offline).")
@click.option("--overwrite", is_flag=True, help="Prepare again even if a complete copy exists.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def data_prepare(source, data_dir, validation_fraction, test_fraction, split_seed, kaggle_split, max_image_mb,
                 archive, overwrite, fmt):
    """Download, unpack and check SOURCE into a prepared copy that training reads.

    Every file is checked once: non-images, empty, truncated and corrupt files are
    skipped and listed; grayscale, RGBA, palette, CMYK and 16-bit images are converted
    to RGB. Only regular files are read, each up to --max-image-mb. Running it again
    reuses the prepared copy (a folder is prepared again when it changed). An
    interrupted run leaves nothing that is taken for complete.
    """
    from xtune.data import prepare_data

    settings = data_settings(validation_fraction, test_fraction, split_seed, kaggle_split, max_image_mb)
    prepared = prepare_data(source, data_dir=data_dir, archive=archive, overwrite=overwrite,
                            progress=lambda line: click.echo(line, err=True), **settings)
    echo_data_info({"status": "prepared", **prepared.to_dict()}, fmt)


@data_group.command("info", epilog=DATA_SOURCE_HELP)
@click.argument("source")
@data_options
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def data_info(source, data_dir, validation_fraction, test_fraction, split_seed, kaggle_split, max_image_mb, fmt):
    """Classes, images per split, skipped files (with the reason) and conversions.

    Shows the prepared copy. A FOLDER that is not prepared yet (or changed since) is
    scanned read-only, so its bad files show before preparing; demo and
    kaggle:dogs-vs-cats must be prepared first. Use the split options it was
    prepared with.
    """
    from xtune.data import describe_data

    settings = data_settings(validation_fraction, test_fraction, split_seed, kaggle_split, max_image_mb)
    echo_data_info(describe_data(source, data_dir=data_dir, **settings), fmt)


def echo_data_info(info: dict, fmt: str) -> None:
    if fmt == "json":
        echo_json(info)
        return
    status = {"prepared": f"prepared in {info['root']}",
              "not prepared": "not prepared yet: a read-only scan (tune data prepare writes it)",
              "changed": "changed since it was prepared: a read-only scan (tune data prepare redoes it)"}
    click.echo(f"Data: {info['source']} ({status.get(info['status'], info['status'])})")
    sizes = info["sizes"]
    click.echo(f"{info['num_classes']} classes, {sum(sizes.values()):,} images: "
               + ", ".join(f"{split} {n:,}" for split, n in sizes.items()))
    counts = info["counts"]
    rows = [{"class": cls, **{split: counts[split][cls] for split in counts},
             "total": sum(counts[split][cls] for split in counts)} for cls in info["class_names"]]
    echo_table(rows, wrap="class")
    if info.get("fingerprint"):
        click.echo(f"fingerprint: {info['fingerprint']}")
    if info.get("origin"):
        click.echo(f"origin: {info['origin']}; license: {info['license']}")
    click.echo()
    skipped = info["skipped"]
    click.echo(f"Skipped {len(skipped)} file{'' if len(skipped) == 1 else 's'}" + (":" if skipped else "."))
    echo_table([{"file": s["path"], "reason": s["reason"]} for s in skipped], wrap="reason")
    converted = info["converted"]
    if converted:
        click.echo(f"Converted to RGB: {len(converted)} file{'' if len(converted) == 1 else 's'}:")
        if len(converted) <= _MAX_CONVERTED_LISTED:
            echo_table([{"file": c["path"], "original": c["original"], "how": c["action"]} for c in converted],
                       wrap="file")
        else:  # a whole grayscale dataset would drown the rest
            kinds: dict[tuple[str, str], int] = {}
            for c in converted:
                kinds[(c["original"], c["action"])] = kinds.get((c["original"], c["action"]), 0) + 1
            echo_table([{"original": o, "how": a, "files": n} for (o, a), n in sorted(kinds.items())])
            click.echo("(--format json lists every file)")
    for warning in info["warnings"]:
        click.echo(f"warning: {warning}")
