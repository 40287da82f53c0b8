"""The `tune` command line.

Thin by design: parse and validate arguments, call one library function, render what
it returns. Nothing heavy is imported at module level, so `tune --help` never loads
TensorFlow, Keras, KerasTuner or kaggle; each command imports what it needs in its body.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from xtune import __version__
from xtune.errors import XtuneError

_FORMATS = click.Choice(["table", "json"])


class _Group(click.Group):
    """A click group that turns `XtuneError`s into one-line errors with exit codes."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except XtuneError as error:
            if error.exit_code == 2:
                raise click.UsageError(str(error), ctx) from None
            raise click.ClickException(str(error)) from None


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up chatter is not for users; real errors still surface.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _echo_table(rows: list[dict], columns: list[str] | None = None) -> None:
    """Print records as an aligned text table (the only table renderer)."""
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


@click.group(cls=_Group, context_settings={"auto_envvar_prefix": "TUNE", "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tune")
def tune():
    """Find the best convnet in the mini-Xception family for your image dataset.

    \b
    tune data prepare demo                      # or kaggle:dogs-vs-cats, or a folder
    tune search --data demo --max-trials 50     # Hyperband; resumable
    tune board --project runs/NAME              # watch the trials in TensorBoard
    tune results --project runs/NAME            # ranked trials
    tune export --project runs/NAME             # retrain the best, test it, save it
    """
    _quiet_tensorflow()


# ---------------------------------------------------------------------------- data

_DATA_SOURCE_HELP = """\b
SOURCE is one of:
  demo                  1,797 handwritten digits shipped in scikit-learn (offline)
  kaggle:dogs-vs-cats   the book's data: downloaded with your Kaggle API token
                        (~/.kaggle/kaggle.json) or read from --archive
  FOLDER                train/ validation/ test/ with one sub-folder per class each,
                        or class sub-folders only (split here, stratified)"""


class _SplitSizes(click.ParamType):
    name = "TRAIN,VAL,TEST"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            sizes = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            sizes = ()
        if len(sizes) != 3 or min(sizes) < 1:
            self.fail(f"expected three positive numbers like 1000,500,1000; got {value!r}", param, ctx)
        return sizes


def _data_options(fn):
    """The options that name a prepared copy (shared by prepare and info)."""
    options = [
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Where prepared data is cached [default: $XTUNE_DATA_DIR, else "
                          "$XDG_CACHE_HOME/xtune, else ~/.cache/xtune]."),
        click.option("--validation-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     default=0.15, show_default=True, help="FOLDER of class sub-folders only: share of each "
                                                           "class for validation."),
        click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.15,
                     show_default=True, help="FOLDER of class sub-folders only: share of each class for test."),
        click.option("--split-seed", type=int, default=1337, show_default=True,
                     help="FOLDER of class sub-folders only: seeds the stratified split."),
        click.option("--split-sizes", "kaggle_split", type=_SplitSizes(), default="1000,500,1000",
                     show_default=True, help="kaggle:dogs-vs-cats only: images per class for train, validation "
                                             "and test, in file-number order (the book's split)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@tune.group("data")
def data_group():
    """Prepare a dataset and see what training will get from it."""


@data_group.command("prepare", epilog=_DATA_SOURCE_HELP)
@click.argument("source")
@_data_options
@click.option("--archive", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="kaggle:dogs-vs-cats only: an already downloaded dogs-vs-cats.zip or train.zip (offline).")
@click.option("--overwrite", is_flag=True, help="Prepare again even if a complete copy exists.")
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
def data_prepare(source, data_dir, validation_fraction, test_fraction, split_seed, kaggle_split, archive,
                 overwrite, fmt):
    """Download, unpack and check SOURCE into a prepared copy that training reads.

    Every file is checked once: non-images, empty, truncated and corrupt files are
    skipped and listed; grayscale, RGBA, palette, CMYK and 16-bit images are converted
    to RGB. Running it again reuses the prepared copy (a folder is prepared again when
    it changed). An interrupted run leaves nothing that is taken for complete.
    """
    from xtune.data import prepare_data

    prepared = prepare_data(source, data_dir=data_dir, archive=archive, validation_fraction=validation_fraction,
                            test_fraction=test_fraction, split_seed=split_seed, kaggle_split=kaggle_split,
                            overwrite=overwrite, progress=lambda line: click.echo(line, err=True))
    _echo_data_info({"status": "prepared", **prepared.to_dict()}, fmt)


@data_group.command("info", epilog=_DATA_SOURCE_HELP)
@click.argument("source")
@_data_options
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
def data_info(source, data_dir, validation_fraction, test_fraction, split_seed, kaggle_split, fmt):
    """Classes, images per split, skipped files (with the reason) and conversions.

    Shows the prepared copy. A FOLDER that is not prepared yet (or changed since) is
    scanned read-only, so its bad files show before preparing; demo and
    kaggle:dogs-vs-cats must be prepared first. Use the split options it was
    prepared with.
    """
    from xtune.data import describe_data

    info = describe_data(source, data_dir=data_dir, validation_fraction=validation_fraction,
                         test_fraction=test_fraction, split_seed=split_seed, kaggle_split=kaggle_split)
    _echo_data_info(info, fmt)


_MAX_CONVERTED_LISTED = 30


def _echo_data_info(info: dict, fmt: str) -> None:
    if fmt == "json":
        _echo_json(info)
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
    _echo_table(rows)
    if info.get("fingerprint"):
        click.echo(f"fingerprint: {info['fingerprint']}")
    if info.get("origin"):
        click.echo(f"origin: {info['origin']}; license: {info['license']}")
    click.echo()
    skipped = info["skipped"]
    click.echo(f"Skipped {len(skipped)} file{'' if len(skipped) == 1 else 's'}" + (":" if skipped else "."))
    _echo_table([{"file": s["path"], "reason": s["reason"]} for s in skipped])
    converted = info["converted"]
    if converted:
        click.echo(f"Converted to RGB: {len(converted)} file{'' if len(converted) == 1 else 's'}:")
        if len(converted) <= _MAX_CONVERTED_LISTED:
            _echo_table([{"file": c["path"], "original": c["original"], "how": c["action"]} for c in converted])
        else:  # a whole grayscale dataset would drown the rest
            kinds: dict[tuple[str, str], int] = {}
            for c in converted:
                kinds[(c["original"], c["action"])] = kinds.get((c["original"], c["action"]), 0) + 1
            _echo_table([{"original": o, "how": a, "files": n} for (o, a), n in sorted(kinds.items())])
            click.echo("(--format json lists every file)")
    for warning in info["warnings"]:
        click.echo(f"warning: {warning}")


# ---------------------------------------------------------------------------- space


@tune.group()
def space():
    """Inspect and validate the search space (the mini-Xception family)."""


_SPACE_HELP = "A space file (TOML) that narrows the family, or a built-in space name (default, small)."


@space.command("show")
@click.option("--space", "space_ref", default="default", show_default=True, help=_SPACE_HELP)
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
@click.option("--image-size", type=click.IntRange(16, 2048), default=180, show_default=True,
              help="Square input size used for the parameter counts.")
@click.option("--num-classes", type=click.IntRange(2), default=2, show_default=True,
              help="Number of classes used for the parameter counts.")
def space_show(space_ref, fmt, image_size, num_classes):
    """Each hyperparameter with its values and seed default, and the space's size.

    The seed default of every hyperparameter is the book's model (Chollet, Deep
    Learning with Python, 2nd ed., 9.3.5). Parameter counts are for the seed and for
    the largest and smallest configurations at --image-size.
    """
    from xtune.spaces import describe_space, load_space

    summary = describe_space(load_space(space_ref), image_size=image_size, num_classes=num_classes)
    if fmt == "json":
        _echo_json(summary)
        return
    click.echo(f"Search space: {summary['name']}")
    _echo_table(summary["hyperparameters"], ["name", "group", "values", "default", "condition"])
    click.echo()
    click.echo(f"distinct configurations: {summary['configurations']:,}")
    click.echo(f"distinct architectures:  {summary['architectures']:,}")
    p = summary["parameters"]
    click.echo(f"parameters at {image_size}x{image_size}, {num_classes} classes: "
               f"seed {p['seed']:,}, smallest {p['smallest']:,}, largest {p['largest']:,}")


@space.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def space_check(file):
    """Validate a space file; print what it leaves to search."""
    from xtune.spaces import load_space

    loaded = load_space(file)
    click.echo(f"{file}: ok, {loaded.num_configurations():,} configurations, "
               f"{len(loaded.searched())} hyperparameters searched, {len(loaded.fixed())} fixed")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`tune`)."""
    tune.main(args=argv, prog_name="tune")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
