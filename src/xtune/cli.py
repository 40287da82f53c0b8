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
