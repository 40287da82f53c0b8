"""`tune space show` and `tune space check`."""

from __future__ import annotations

from pathlib import Path

import click

from xtune.cli._app import FORMATS, tune
from xtune.cli._render import echo_json, echo_table

SPACE_HELP = "A space file (TOML) that narrows the family, or a built-in space name (default, small)."


@tune.group()
def space():
    """Inspect and validate the search space (the mini-Xception family)."""


@space.command("show")
@click.option("--space", "space_ref", default="default", show_default=True, help=SPACE_HELP)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--image-size", type=click.IntRange(16, 2048), default=180, show_default=True,
              help="Square input size used for the parameter counts.")
@click.option("--num-classes", type=click.IntRange(2), default=2, show_default=True,
              help="Number of classes used for the parameter counts.")
@click.option("--max-params", type=click.IntRange(1), help="Show how much of the space fits this many parameters.")
@click.option("--max-flops", type=click.IntRange(1), help="Show how much of the space fits this many FLOPs per image.")
def space_show(space_ref, fmt, image_size, num_classes, max_params, max_flops):
    """Each hyperparameter with its values and seed default, and the space's size.

    The seed default of every hyperparameter is the book's model (Chollet, Deep
    Learning with Python, 2nd ed., 9.3.5). Parameter counts are for the seed and for
    the largest and smallest configurations at --image-size.
    """
    from xtune.spaces import describe_space, load_space

    loaded = load_space(space_ref)
    summary = describe_space(loaded, image_size=image_size, num_classes=num_classes)
    budget = None
    if max_params or max_flops:
        from xtune.spaces._budget import Budget, budget_share

        budget = Budget(max_params, max_flops)
        share = budget_share(loaded, budget, (image_size, image_size, 3), num_classes)
        summary["budget"] = {"max_params": max_params, "max_flops": max_flops,
                             "architectures": share.architectures_fitting, "configurations": share.configurations_fitting,
                             "share": round(share.share, 4)}
    if fmt == "json":
        echo_json(summary)
        return
    click.echo(f"Search space: {summary['name']}")
    echo_table(summary["hyperparameters"], ["name", "group", "values", "default", "condition"], wrap="values",
               detail=("condition",))
    click.echo()
    click.echo(f"distinct configurations: {summary['configurations']:,}")
    click.echo(f"distinct architectures:  {summary['architectures']:,}")
    p = summary["parameters"]
    click.echo(f"parameters at {image_size}x{image_size}, {num_classes} classes: "
               f"seed {p['seed']:,}, smallest {p['smallest']:,}, largest {p['largest']:,}")
    f = summary["flops"]
    click.echo(f"FLOPs per image: seed {f['seed']:,}, smallest {f['smallest']:,}, largest {f['largest']:,}")
    if budget is not None:
        b = summary["budget"]
        click.echo(f"within {budget.describe()}: {b['architectures']:,} architectures, {b['configurations']:,} "
                   f"configurations ({b['share']:.1%} of the space)")


@space.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def space_check(file):
    """Validate a space file; print what it leaves to search."""
    from xtune.spaces import load_space

    loaded = load_space(file)
    click.echo(f"{file}: ok, {loaded.num_configurations():,} configurations, "
               f"{len(loaded.searched())} hyperparameters searched, {len(loaded.fixed())} fixed")
