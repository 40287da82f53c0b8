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


class _OneLineError(click.ClickException):
    """``Error: <message>`` on stderr, one line, with the error's exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class _Group(click.Group):
    """A click group that turns `XtuneError`s into one-line errors with exit codes."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except XtuneError as error:
            raise _OneLineError(str(error), error.exit_code) from None


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up chatter is not for users; real errors still surface.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from xtune._runtime import filter_native_stderr

    filter_native_stderr()


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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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


# ---------------------------------------------------------------------------- search

_PROJECT = click.option("--project", type=click.Path(file_okay=False, path_type=Path),
                        help="The search directory (runs/NAME).")


def _project_required(project):
    if project is None:
        raise click.UsageError("--project is required (the search directory, e.g. runs/demo)")
    return project


def _default_project(data: str | None) -> Path | None:
    if data is None:
        return None
    name = data.split(":", 1)[-1].rstrip("/\\") or "search"
    return Path("runs") / (Path(name).name or "search")


def _given(ctx, names):
    """The options the user passed on the command line, by name (no option is read from the environment)."""
    from click.core import ParameterSource

    return {n: ctx.params[n] for n in names if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE}


_SETTINGS = ("data", "image_size", "batch_size", "max_trials", "max_epochs", "factor", "objective", "seed",
             "max_consecutive_failures", "validation_fraction", "test_fraction", "split_seed", "kaggle_split")


@tune.command()
@click.option("--data", metavar="SOURCE", help="demo, kaggle:dogs-vs-cats, or a folder of class sub-folders. Required for a new search.")
@_PROJECT
@click.option("--max-trials", type=click.IntRange(1), default=50, show_default=True,
              help="Trial budget, promotions included. It becomes the largest plan of complete Hyperband "
                   "brackets (each ending at --max-epochs) with at most this many trials.")
@click.option("--max-epochs", type=click.IntRange(1), default=100, show_default=True,
              help="Epochs of one full training (the last round of every bracket).")
@click.option("--factor", type=click.IntRange(2), default=3, show_default=True, help="Hyperband's reduction factor.")
@click.option("--space", "space_ref", default=None, help=_SPACE_HELP + "  [default: default]")
@click.option("--image-size", type=click.IntRange(16, 2048), default=180, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--objective", type=click.Choice(["val_accuracy", "val_loss"]), default="val_accuracy", show_default=True)
@click.option("--seed", type=int, default=1337, show_default=True,
              help="Seeds the architectures drawn, the weights and the data order.")
@click.option("--max-failures", "max_consecutive_failures", type=click.IntRange(1), default=10, show_default=True,
              help="Stop after this many failed trials in a row.")
@click.option("--mixed-precision", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="auto: on for GPUs that support it; CPU training stays float32.")
@_data_options
@click.option("--archive", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="kaggle:dogs-vs-cats only: an already downloaded dogs-vs-cats.zip or train.zip (offline).")
@click.option("--overwrite", is_flag=True, help="Delete the search in --project and start over.")
@click.option("--plan", "plan_only", is_flag=True, help="Print the Hyperband plan and train nothing.")
@click.option("--workers", type=click.IntRange(1), help="Run trials in this many worker processes on this machine "
                                                        "(with a chief process that hands them out).")
@click.option("--gpus", metavar="0,1,...", help="GPUs to divide among the workers (one each for as many workers "
                                                "as GPUs; --workers defaults to their number).")
@click.option("--strategy", type=click.Choice(["none", "mirrored"]), default="none", show_default=True,
              help="mirrored: train each trial on all the GPUs its process sees (tf.distribute.MirroredStrategy).")
@click.option("--chief", "serve_chief", is_flag=True,
              help="Serve this search to workers on other machines (tune worker) instead of running trials.")
@click.option("--host", default="0.0.0.0", show_default=True, help="With --chief: the interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), help="With --chief: the port to listen on (0: any free one) "
                                                            "[default: 8000].")
@click.option("--quiet", "verbosity", flag_value=0, help="Only the final summary.")
@click.option("--verbose", "verbosity", flag_value=2, help="Also one line per epoch.")
@click.pass_context
def search(ctx, data, project, space_ref, mixed_precision, data_dir, archive, overwrite, plan_only, workers, gpus,
           strategy, serve_chief, host, port, verbosity, **_):
    """Run a Hyperband search over the mini-Xception family; resume it if it exists.

    A new search needs --data. Running the same command (or just --project) again
    resumes an interrupted search where it stopped, with the settings stored in the
    project's run.json: completed trials are kept, the interrupted trial continues
    from its last completed epoch. A flag that contradicts run.json is refused;
    --overwrite is the only way to start over. Ctrl-C stops within the current epoch
    and leaves the search resumable.

    Several GPUs or machines: --workers N runs trials in N processes here (--gpus
    divides the GPUs among them); --chief serves the search to `tune worker`
    processes on other machines that share the project directory. Either way the
    search stays resumable, by the same command or by a single process.

    For a new search, --project defaults to runs/<data name>.

    \b
    tune search --data demo --image-size 32 --max-trials 20 --max-epochs 9
    tune search --data kaggle:dogs-vs-cats --max-trials 50 --project runs/cats
    tune search --project runs/cats          # resume
    tune search --project runs/cats --gpus 0,1,2,3           # 4 workers, a GPU each
    tune search --project /shared/runs/cats --chief --port 8000
    """
    project = project or _default_project(data)
    given = _given(ctx, _SETTINGS)
    verbosity = 1 if verbosity is None else verbosity
    from xtune.search._distributed import parse_gpus

    gpus = parse_gpus(gpus)
    if serve_chief and (workers or gpus or strategy != "none"):
        raise click.UsageError("the chief trains nothing: give --gpus and --strategy to each `tune worker` "
                               "(and --workers is for workers on this machine, without --chief)")
    if not serve_chief and (port is not None or _given(ctx, ["host"])):
        raise click.UsageError("--host and --port are for --chief (--workers picks a free local port)")
    if gpus and workers is None:
        workers = len(gpus)
    if plan_only:
        from xtune.search import SearchSettings, resolve_settings
        from xtune.search._run import check_plan_fits_space
        from xtune.spaces import load_space

        if project is not None and (project / "run.json").exists() and not overwrite:
            settings, space_obj, _ = resolve_settings(project, given, space_ref=space_ref)
        else:
            settings = SearchSettings(**{"data": data or "-", **given})
            space_obj = load_space(space_ref)
        plan = settings.plan()
        _echo_plan(plan)
        check_plan_fits_space(plan, space_obj)
        return
    if project is None:
        raise click.UsageError("give --data to start a search, or --project to resume one")
    from xtune import _supervisor

    if not (serve_chief or workers or _supervisor.in_child()):
        # The search runs in a child process that is resumed if it dies (a native crash).
        first = _command_line(ctx, project)
        code = _supervisor.supervise(first, [a for a in first if a != "--overwrite"], project,
                                     click.echo, lambda line: click.echo(line, err=True))
        ctx.exit(code)
    if _supervisor.in_child():
        _supervisor.die_with_parent()
    _quiet_tensorflow()
    printer = _SearchPrinter(verbosity)
    if serve_chief:
        from xtune.search._distributed import DEFAULT_PORT, run_chief

        outcome = run_chief(project, given, host=host, port=DEFAULT_PORT if port is None else port,
                            on_ready=lambda info: printer({"event": "serving", **info}), space_ref=space_ref,
                            data_dir=data_dir, archive=archive, overwrite=overwrite, progress=printer)
    elif workers:
        from xtune.search._distributed import launch_search

        if archive is not None:  # the chief process then finds the data prepared
            from xtune.data import prepare_data
            from xtune.search import SearchSettings

            settings = SearchSettings(**{"data": data or "-", **given})
            prepare_data(settings.data, data_dir=data_dir, archive=archive, **settings.data_options())

        outcome = launch_search(project, given, workers=workers, gpus=gpus, space_ref=space_ref, data_dir=data_dir,
                                overwrite=overwrite, mixed_precision=mixed_precision, strategy=strategy,
                                progress=printer)
    else:
        from xtune.search import run_search

        outcome = run_search(project, given, space_ref=space_ref, data_dir=data_dir, archive=archive, overwrite=overwrite,
                             progress=printer, mixed_precision=mixed_precision, strategy=strategy,
                             recycle_mb=_supervisor.recycle_mb() if _supervisor.in_child() else None)
    if outcome.status == "recycle":
        click.echo(f"Continuing in a fresh process to release memory ({outcome.message}).")
        ctx.exit(_supervisor.RECYCLE_EXIT)
    _echo_outcome(outcome)
    if outcome.status == "interrupted":
        ctx.exit(130)
    if outcome.status == "stopped":
        ctx.exit(1)


def _command_line(ctx, project: Path) -> list[str]:
    """The options the user gave this command, as arguments again (plus --project)."""
    from click.core import ParameterSource

    args = ["--project", str(project)]
    for param in ctx.command.params:
        if param.name == "project" or not isinstance(param, click.Option):
            continue
        if ctx.get_parameter_source(param.name) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        value = ctx.params[param.name]
        if param.name == "verbosity":
            args.append({0: "--quiet", 2: "--verbose"}.get(value, ""))
        elif param.is_flag:
            if value:
                args.append(param.opts[0])
        elif value is not None:
            args += [param.opts[0], ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return [a for a in args if a]


def _echo_plan(plan) -> None:
    click.echo(f"Hyperband plan for --max-trials {plan.max_trials} --max-epochs {plan.max_epochs} --factor {plan.factor}:")
    click.echo(f"{plan.num_brackets} bracket(s) per iteration, {plan.iterations} iteration(s) "
               f"({len(plan.brackets)} bracket(s) in all)")
    rows = []
    for b in plan.brackets:
        rounds = "  ".join(f"{r.trials}x{r.epochs}ep" for r in b.rounds)
        rows.append({"iteration": b.iteration + 1, "bracket": b.number, "rounds (trials x epochs)": rounds,
                     "trials": b.trials, "epochs trained": b.epochs})
    _echo_table(rows)
    click.echo()
    click.echo(f"total trials:           {plan.total_trials} (of at most {plan.max_trials})")
    click.echo(f"distinct architectures: {plan.architectures}")
    click.echo(f"total epochs:           {plan.total_epochs:,} = {plan.full_trainings:.1f}x one "
               f"{plan.max_epochs}-epoch training")


def _short_values(values: dict) -> str:
    v = values
    parts = [f"{v.get('num_stages')}x{v.get('base_width')}" + (f"*{v.get('width_growth'):g}" if v.get("num_stages", 1) > 1 else ""),
             "sep" if v.get("conv_type") == "separable" else "std",
             "res" if v.get("residual") else "nores",
             f"bn{v.get('bn_momentum'):g}" if v.get("batch_norm") else "nobn",
             f"c{v.get('convs_per_stage')}k{v.get('kernel_size')}",
             f"stem{v.get('stem_filters')}/{v.get('stem_kernel')}",
             f"drop{v.get('dropout'):g}"]
    aug = [name for name, on in (("flip", v.get("flip") not in (None, "none")), ("rot", v.get("rotation")),
                                 ("zoom", v.get("zoom"))) if on]
    parts.append("+".join(aug) if aug else "noaug")
    parts.append(f"{v.get('optimizer')}@{v.get('learning_rate'):g}")
    return " ".join(parts)


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _SearchPrinter:
    """Renders search events: one line per trial (and per epoch with --verbose).

    With several workers the trial and epoch lines name the worker (``[worker-1]``).
    """

    def __init__(self, verbosity: int):
        self.verbosity = verbosity
        self.starts = {}
        self.objective = "val_accuracy"

    def __call__(self, e):
        kind = e["event"]
        if kind == "search_start":
            self.objective = e["settings"]["objective"]
            for note in e["notes"]:
                click.echo(f"Warning: {note}", err=True)
            if self.verbosity:
                plan = e["plan"]
                what = "Resuming" if e["resumed"] else "Starting"
                done = f", {e['completed'] + e['failed']} done" if e["resumed"] else ""
                click.echo(f"{what} {e['project']}: {plan['total_trials']} trials in {len(plan['brackets'])} "
                           f"Hyperband bracket(s){done} ({self._where(e)})")
        elif kind == "serving":
            click.echo(f"Serving the search on {e['host']}:{e['port']}. On each worker machine, with "
                       f"{e['project']} mounted (any path), run:")
            click.echo(f"  tune worker --chief {e['address']} --project {e['project']}")
        elif kind == "workers_started" and self.verbosity:
            click.echo("Workers: " + ", ".join(f"{w['worker']} (pid {w['pid']})" for w in e["workers"])
                       + f"; chief pid {e['chief']['pid']} on {e['chief']['address']}")
        elif kind == "worker_restart":
            during = f" during trial {e['trial_id']}" if e.get("trial_id") else ""
            click.echo(f"{e['worker']} (pid {e['old_pid']}) died ({e['reason']}){during}; restarted as pid "
                       f"{e['pid']}" + ("; the trial resumes at its last saved epoch" if during else ""), err=True)
        elif kind == "worker_start" and self.verbosity:
            click.echo(f"{e['worker']}: running trials of {e['project']} for the chief at {e['chief']}")
        elif kind == "waiting_for_chief" and self.verbosity:
            click.echo(f"Waiting for the chief at {e['chief']} (start it with: tune search --project ... --chief)")
        elif kind == "worker_ready" and self.verbosity:
            devices = e["devices"]
            replicas = f", {e['replicas']} replicas" if e.get("replicas", 1) > 1 else ""
            click.echo(f"{e['worker']}: connected ({', '.join(devices['gpus']) or 'CPU'}, {devices['policy']}{replicas})")
        elif kind == "waiting" and self.verbosity >= 2:
            click.echo(f"    {e['worker']} waits: the open brackets wait for other workers' trials")
        elif kind == "trial_start":
            self.starts[e["trial_id"]] = e
        elif kind == "epoch_end" and self.verbosity >= 2:
            logs = e["logs"]
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
            seconds = f"  ({e['seconds']:.1f}s)" if e.get("seconds") is not None else ""
            click.echo(f"    trial {e['trial_id']} epoch {e['epoch']}/{e['epochs']}{self._tag(e)}  {metrics}{seconds}")
        elif kind == "trial_retry" and self.verbosity:
            click.echo(f"trial {e['trial_id']} failed ({e.get('reason')}); it will run once more")
        elif kind == "trial_end" and self.verbosity:
            start = self.starts.get(e["trial_id"], {})
            width = len(str(e["total"]))
            where = f"b{start.get('bracket')} r{start.get('round')}"
            epochs = f"{start.get('initial_epoch', 0)}->{start.get('epochs')}ep"
            if e["status"] == "COMPLETED":
                result = f"{self.objective} {e['score']:.4f}"
            else:
                result = f"FAILED: {e.get('reason')}"
            best = f"best {e['best']:.4f}" if e.get("best") is not None else "best -"
            eta = f"  ~{_duration(e['eta'])} left" if e.get("eta") is not None or "worker" not in e else ""
            click.echo(f"trial {e['index']:>{width}}/{e['total']}{self._tag(e)}  {where}  {epochs:>9}  "
                       f"{_short_values(start.get('values', {}))}  {result}  {best}  "
                       f"{_duration(e['elapsed'])}{eta}")

    @staticmethod
    def _tag(e) -> str:
        return f" [{e['worker']}]" if e.get("worker") else ""

    @staticmethod
    def _where(e) -> str:
        if e.get("workers"):
            workers = e["workers"]
            gpus = [w["gpus"] for w in workers if w.get("gpus")]
            threads = workers[0].get("threads")
            what = f"GPUs {' | '.join(gpus)}" if gpus else "CPU" + (f", {threads} thread(s) each" if threads else "")
            return f"{len(workers)} worker(s): {what}"
        if e.get("devices") is None:
            return "served to workers"
        return f"{', '.join(e['devices']['gpus']) or 'CPU'}, {e['devices']['policy']}"


def _echo_outcome(outcome) -> None:
    project = outcome.project
    if outcome.status == "already finished":
        click.echo(f"The search in {project} is finished ({outcome.completed} trials completed, "
                   f"{outcome.failed} failed). See: tune results --project {project}")
        return
    if outcome.status == "interrupted":
        where = ""
        if outcome.interrupted_trial:
            t = outcome.interrupted_trial
            where = f" during trial {t['trial_id']} ({t['epochs_saved']} of {t['epochs']} epochs saved)"
        resume = outcome.resume or f"tune search --project {project}"
        click.echo(f"Interrupted{where}. Resume with: {resume}", err=True)
        return
    if outcome.status == "stopped":
        resume = outcome.resume or f"tune search --project {project}"
        click.echo(f"Stopped: {outcome.message}. Fix the cause, then resume with: {resume}", err=True)
        return
    click.echo(f"Search finished: {outcome.completed + outcome.failed} trials "
               f"({outcome.completed} completed, {outcome.failed} failed).")
    if outcome.best:
        b = outcome.best
        click.echo(f"Best: trial {b['trial_id']} with {b['score']:.4f}: {_short_values(b['values'])}")
    click.echo(f"Next: tune results --project {project}   |   tune export --project {project}")


@tune.command()
@_PROJECT
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
def status(project, fmt):
    """Is a search running, finished or interrupted, and how far along is it?"""
    from xtune.search import search_status

    info = search_status(_project_required(project))
    if fmt == "json":
        _echo_json(info)
        return
    click.echo(f"{info['project']}: {info['state']}"
               + (f" (pid {info['owner'].get('pid')} on {info['owner'].get('host')})" if info["owner"] else ""))
    click.echo(f"trials: {info['trials_ended']} of {info['plan_trials']} planned "
               f"({info['completed']} completed, {info['failed']} failed)")
    if info["best"]:
        click.echo(f"best: trial {info['best']['trial_id']}, {info['objective']} {info['best']['score']:.4f}")
    for t in info["interrupted"]:
        click.echo(f"interrupted: trial {t['trial_id']} at epoch {t['epochs_saved']} of {t['epochs']} "
                   f"(resumes there; started at {t['initial_epoch']})")
    if info["interrupted"]:
        click.echo(f"epochs saved for the resume: {info['epochs_saved']}")
    for problem in info["problems"]:
        click.echo(f"damaged: {problem} (the next `tune search` repairs what it can)")
    if info["state"] == "interrupted":
        click.echo(f"resume: tune search --project {info['project']}")


@tune.command()
@click.option("--chief", metavar="HOST:PORT",
              help="The chief's address, as `tune search --chief` printed it [default: the address the chief "
                   "wrote in PROJECT/cluster/chief.json].")
@_PROJECT
@click.option("--worker-id", help="This worker's name, unique in the search. A worker restarted with the same id "
                                  "resumes its unfinished trial [default: HOST-N, the first free N].")
@click.option("--gpus", metavar="0,1,...", help="The GPUs this worker uses [default: all it sees].")
@click.option("--strategy", type=click.Choice(["none", "mirrored"]), default="none", show_default=True,
              help="mirrored: train each trial on all of this worker's GPUs (tf.distribute.MirroredStrategy).")
@click.option("--mixed-precision", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="auto: on for GPUs that support it; CPU training stays float32.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where prepared data is cached here [default: the chief's prepared copy if this machine sees "
                   "it at the same path, else the user's cache directory].")
@click.option("--quiet", "verbosity", flag_value=0, help="Only the final summary.")
@click.option("--verbose", "verbosity", flag_value=2, help="Also one line per epoch.")
@click.pass_context
def worker(ctx, chief, project, worker_id, gpus, strategy, mixed_precision, data_dir, verbosity):
    """Run trials for a search that `tune search --chief` serves, until none is left.

    The project directory must be the chief's, shared (a network file system), at
    any path. The worker reads the search's settings from its run.json and never
    creates, locks or deletes a search. Ctrl-C stops it within the current epoch;
    start it again with the same --worker-id and it resumes that trial where it
    stopped (or let the search resume it: tune search --project DIR).

    \b
    tune worker --chief gpu-box-1:8000 --project /shared/runs/cats --gpus 0
    """
    project = _project_required(project)
    from xtune.search._distributed import parse_gpus, run_worker

    gpus = parse_gpus(gpus)
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)  # before TensorFlow loads
    _quiet_tensorflow()
    outcome = run_worker(project, chief, worker_id=worker_id, data_dir=data_dir, mixed_precision=mixed_precision,
                         strategy=strategy, progress=_SearchPrinter(1 if verbosity is None else verbosity))
    name = f"worker {outcome.worker_id}"
    if outcome.status == "finished":
        click.echo(f"{name}: done, {outcome.trials} trial(s) run; no trial is left for it.")
        return
    again = f"tune worker --project {project} --worker-id {outcome.worker_id}" + (f" --chief {chief}" if chief else "")
    if outcome.status == "interrupted":
        during = f" during trial {outcome.trial_id}" if outcome.trial_id else ""
        click.echo(f"{name}: interrupted{during}. Continue with: {again}", err=True)
        ctx.exit(130)
    click.echo(f"{name}: {outcome.message}. Its trial resumes when it or the search starts again: {again}", err=True)
    ctx.exit(1)


@tune.command()
@_PROJECT
@click.option("--port", type=click.IntRange(0, 65535), default=6006, show_default=True)
@click.option("--host", default="localhost", show_default=True, help="Interface to serve on (0.0.0.0 for all).")
def board(project, port, host):
    """Start TensorBoard on a search's trials (with the HParams dashboard).

    Each trial logs its epochs to runs/NAME/logs/<trial>, with its hyperparameters,
    bracket and round; open the HParams tab to compare them. Ctrl-C stops it.
    """
    project = _project_required(project)
    logs = project / "logs"
    if not logs.is_dir():
        raise click.ClickException(f"no TensorBoard logs in {project} yet (is it a tune search that has started?)")
    from xtune.search import start_tensorboard

    url, wait = start_tensorboard(logs, port=port, host=host)
    click.echo(f"TensorBoard for {project}: {url}  (Ctrl-C to stop)")
    try:
        wait()
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------------------- results

_RESULTS_FORMATS = click.Choice(["table", "csv", "json"])
_ROW_FIELDS = ("rank", "trial_id", "status", "bracket", "round", "initial_epoch", "epochs", "best_epoch",
               "objective", "score", "params", "seconds", "reason")


@tune.command()
@_PROJECT
@click.option("--top", type=click.IntRange(1), help="Only the K best completed trials.")
@click.option("--format", "fmt", type=_RESULTS_FORMATS, default="table", show_default=True)
def results(project, top, fmt):
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

    found = search_results(_project_required(project), top=top)
    if fmt == "json":
        _echo_json(found.to_dict())
        return
    if fmt == "csv":
        _echo_csv(found.rows)
        return
    click.echo(f"{found.project}: {found.state}, {len(found.rows)} trial(s) shown, ranked by {found.objective}")
    for problem in found.problems:
        click.echo(f"damaged: {problem}", err=True)
    if not found.rows:
        click.echo("no trials yet")
    table = []
    for r in found.rows:
        table.append({
            "rank": r["rank"], "trial": r["trial_id"], "status": r["status"],
            "b/r": f"b{r['bracket']} r{r['round']}" if r["bracket"] is not None else None,
            "epochs": f"{r['initial_epoch']}->{r['epochs']}" if r["epochs"] is not None else None,
            found.objective: f"{r['score']:.4f}" if r["score"] is not None else None, "best ep": r["best_epoch"],
            "params": f"{r['params']:,}" if r["params"] is not None else None,
            "architecture": _short_values(r["values"]) if r["values"] else None,
            "time": _duration(r["seconds"]) if r["seconds"] is not None else None,
            "note": r["reason"],
        })
    if not any(r["note"] for r in table):
        for r in table:
            del r["note"]
    _echo_table(table)
    if found.best:
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
    where = f"at epoch {best['best_epoch']} of {best['epochs']}" if best.get("best_epoch") else ""
    click.echo(f"Best architecture: trial {best['trial_id']}, {best['objective']} {best['score']:.4f} {where}, "
               f"{best['params']:,} parameters, stage widths {', '.join(map(str, best['widths']))}")
    click.echo("# Its configuration (xtune.spaces.MiniXceptionConfig fields, in TOML):")
    for key, value in best["config"].items():
        click.echo(f"{key} = {_toml_value(value)}")
    click.echo(f"Next: tune export --project {project}")


@tune.command()
@_PROJECT
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="The export folder.  [default: runs/NAME/export, or runs/NAME/export-PRESET]")
@click.option("--epochs", type=click.IntRange(1),
              help="Training epochs.  [default: the best trial's peak epoch, scaled by the training images "
                   "with --train-on train+val]")
@click.option("--train-on", type=click.Choice(["train", "train+val"]), default="train", show_default=True,
              help="Retrain on the training split, or on training + validation (the test split is never trained on).")
@click.option("--no-retrain", "retrain", is_flag=True, flag_value=False, default=True,
              help="Export the best trial's own checkpoint (its best epoch) instead of retraining.")
@click.option("--preset", metavar="NAME",
              help="Train this preset of the family instead of the searched best, with the same data and "
                   "settings: seed (the book's model), small or plain.")
@click.option("--trial", "trial_id", metavar="ID", help="Export this completed trial instead of the best one.")
@click.option("--overwrite", is_flag=True, help="Replace the export folder if it exists.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where prepared data is cached (as for tune search).")
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True,
              help="json prints the model card (progress goes to stderr).")
@click.option("--quiet", is_flag=True, help="No progress, only the result.")
def export(project, out, epochs, train_on, retrain, preset, trial_id, overwrite, data_dir, fmt, quiet):
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

    _quiet_tensorflow()
    printer = _ExportPrinter(verbose=not quiet, err=fmt == "json")
    report = export_model(_project_required(project), out=out, epochs=epochs, train_on=train_on, retrain=retrain,
                          preset=preset, trial_id=trial_id, overwrite=overwrite, data_dir=data_dir,
                          progress=printer)
    if fmt == "json":
        _echo_json(report.card)
        return
    _echo_export(report.card, report.out)


class _ExportPrinter:
    """Renders export events: what is trained, one line per epoch, each phase."""

    def __init__(self, verbose: bool, err: bool):
        self.verbose = verbose
        self.err = err

    def __call__(self, e):
        if not self.verbose:
            return
        kind = e["event"]
        if kind == "export_start":
            what = f"trial {e['trial_id']}" if e["name"] == "searched" else f"preset {e['name']}"
            how = (f"retraining {e['epochs']} epoch(s) on {e['train_on']}" if e["retrain"]
                   else "its best-epoch checkpoint")
            click.echo(f"Exporting {what} ({_short_values(e['config'])}): {how} -> {e['out']}", err=self.err)
        elif kind == "epoch_end":
            logs = "  ".join(f"{k} {v:.4f}" for k, v in e["logs"].items() if k != "epoch")
            click.echo(f"  epoch {e['epoch']}/{e['epochs']}  {logs}  ({e['seconds']:.1f}s)", err=self.err)
        elif kind == "phase" and e["phase"] != "data":
            click.echo(f"  {e['message']}", err=self.err)


def _echo_export(card: dict, out) -> None:
    test = card["test"]
    click.echo(f"Test: accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f} on {test['images']} images")
    per_class = ", ".join(f"{name} {'-' if r['accuracy'] is None else format(r['accuracy'], '.4f')} ({r['images']})"
                          for name, r in test["per_class"].items())
    click.echo(f"  per class: {per_class}")
    names = card["class_names"]
    click.echo("  confusion matrix (rows: true, columns: predicted):")
    width = max(len(n) for n in names)
    for name, row in zip(names, test["confusion_matrix"]):
        click.echo(f"    {name.ljust(width)}  " + "  ".join(f"{v:>5}" for v in row))
    bn = card["training"].get("batch_norm_reestimation")
    if bn:
        click.echo(f"  batch norm re-estimated over the training data: test accuracy "
                   f"{bn['test_before']['accuracy']:.4f} before, {bn['test_after']['accuracy']:.4f} after")
    formats = card["formats"]
    diffs = ", ".join(f"{k} {v['max_abs_diff']:.1g}" for k, v in formats.items() if isinstance(v, dict))
    click.echo(f"Reloaded and checked on {formats['images']} test images (max abs diff; tolerance "
               f"{formats['tolerance']:g}): {diffs}")
    click.echo(f"Wrote {out}: model.keras, saved_model/, model.tflite, model_card.json, README.md")
    if card["comparison"]:
        click.echo("Side by side on the same test split:")
        rows = [{"model": f"{card['name']} (this)", "test accuracy": test["accuracy"], "test loss": test["loss"],
                 "params": f"{card['model']['params']:,}", "epochs": card["training"]["epochs"], "folder": str(out)}]
        for name, other in card["comparison"].items():
            rows.append({"model": name, "test accuracy": other["accuracy"], "test loss": other["loss"],
                         "params": f"{other['params']:,}" if other.get("params") is not None else None,
                         "epochs": other.get("epochs"), "folder": other["folder"]})
        _echo_table(rows)
    click.echo(f"Next: tune predict --model {out} IMAGE...")


@tune.command()
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="An export folder (tune export).")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
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

    _quiet_tensorflow()
    records = predict_images(model_dir, list(images))
    good = [r for r in records if "error" not in r]
    bad = [r for r in records if "error" in r]
    if fmt == "json":
        _echo_json(records)
    elif good:
        _echo_table([{"image": r["path"], "class": r["class"], "probability": f"{r['probability']:.4f}"}
                     for r in good])
    if bad:
        detail = "; ".join(f"{r['path']}: {r['error']}" for r in bad)
        raise click.ClickException(f"cannot read {len(bad)} of {len(records)} image(s): {detail}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`tune`)."""
    tune.main(args=argv, prog_name="tune")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
