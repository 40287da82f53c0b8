"""The `tune` group, its error handling, and the options several commands share."""

from __future__ import annotations

import os
from pathlib import Path

import click

from xtune import __version__
from xtune.errors import XtuneError


class OneLineError(click.ClickException):
    """``Error: <message>`` on stderr, one line, with the error's exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click types it a ClassVar; it reads self.exit_code


class Group(click.Group):
    """A click group that turns `XtuneError`s into one-line errors with exit codes."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except XtuneError as error:
            raise OneLineError(str(error), error.exit_code) from None


def quiet_tensorflow() -> None:
    """TensorFlow's C++ start-up chatter is not for users; real errors still surface."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from xtune._runtime import filter_native_stderr, quiet_python_warnings

    filter_native_stderr()
    quiet_python_warnings()


ENVIRONMENT_HELP = """\b
Environment variables (no option is read from the environment otherwise):
  XTUNE_DATA_DIR     where prepared data is cached (--data-dir)
  XTUNE_RECYCLE_MB   memory growth (MB) after which a search process restarts
                     itself between trials [default: 256]
  XTUNE_DEBUG        show tracebacks and TensorFlow's native log lines
  KERAS_BACKEND      tensorflow (default) or jax"""


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=ENVIRONMENT_HELP)
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
    quiet_tensorflow()


FORMATS = click.Choice(["table", "json"])

PROJECT = click.option("--project", type=click.Path(file_okay=False, path_type=Path),
                       help="The search directory (runs/NAME).")


def project_required(project):
    if project is None:
        raise click.UsageError("--project is required (the search directory, e.g. runs/demo)")
    return project


DATA_SOURCE_HELP = """\b
SOURCE is one of:
  demo                  1,797 handwritten digits shipped in scikit-learn (offline)
  kaggle:dogs-vs-cats   the book's data: downloaded with your Kaggle API token
                        (~/.kaggle/kaggle.json) or read from --archive
  FOLDER                train/ validation/ test/ with one sub-folder per class each,
                        or class sub-folders only (split here, stratified)"""


class SplitSizes(click.ParamType):
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


def data_options(fn):
    """The options that name a prepared copy (data prepare, data info, search)."""
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
        click.option("--split-sizes", "kaggle_split", type=SplitSizes(), default="1000,500,1000",
                     show_default=True, help="kaggle:dogs-vs-cats only: images per class for train, validation "
                                             "and test, in file-number order (the book's split)."),
        click.option("--max-image-mb", "max_image_mb", type=click.IntRange(1), default=64, show_default=True,
                     help="Skip image files larger than this many MiB, without reading them (zip members by "
                          "their declared size). Part of the prepared copy's settings."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def given(ctx, names) -> dict:
    """The options the user passed on the command line, by name (no option comes from the environment)."""
    from click.core import ParameterSource

    return {n: ctx.params[n] for n in names if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE}


def data_settings(validation_fraction, test_fraction, split_seed, kaggle_split, max_image_mb) -> dict:
    """``prepare_data``'s keyword arguments from the data options."""
    return {"validation_fraction": validation_fraction, "test_fraction": test_fraction, "split_seed": split_seed,
            "kaggle_split": kaggle_split, "max_image_bytes": int(max_image_mb) << 20}

