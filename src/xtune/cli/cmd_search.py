"""`tune search`, `tune status`, `tune worker`, `tune board`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from xtune.cli._app import FORMATS, PROJECT, data_options, given, project_required, quiet_tensorflow, tune
from xtune.cli._render import SearchView, echo_json, echo_outcome, echo_plan, fit_fields, quote
from xtune.cli.cmd_space import SPACE_HELP

SETTINGS = ("data", "image_size", "batch_size", "max_trials", "max_epochs", "factor", "objective", "seed",
            "max_consecutive_failures", "validation_fraction", "test_fraction", "split_seed", "kaggle_split",
            "max_image_mb", "max_params", "max_flops")
MIXED_PRECISION = click.option("--mixed-precision", type=click.Choice(["auto", "on", "off"]), default="auto",
                               show_default=True, help="auto: on for GPUs that support it; CPU training stays float32.")
STRATEGY = click.option("--strategy", type=click.Choice(["none", "mirrored"]), default="none", show_default=True,
                        help="mirrored: train each trial on all the GPUs its process sees "
                             "(tf.distribute.MirroredStrategy).")


def default_project(data: str | None) -> Path | None:
    if data is None:
        return None
    name = data.split(":", 1)[-1].rstrip("/\\") or "search"
    return Path("runs") / (Path(name).name or "search")


def _settings(ctx) -> dict:
    values = given(ctx, SETTINGS)
    if "max_image_mb" in values:
        values["max_image_bytes"] = int(values.pop("max_image_mb")) << 20
    return values


def _child_output(view: SearchView):
    """A child's own output (warnings, a crash's last words), minus TensorFlow's start-up chatter."""
    import os

    from xtune._runtime import NATIVE_LOG

    debug = bool(os.environ.get("XTUNE_DEBUG"))

    def show(child, line: str, is_err: bool) -> None:
        if is_err and not debug and NATIVE_LOG.match(line):
            return
        view.echo(line, err=is_err)

    return show


@tune.command()
@click.option("--data", metavar="SOURCE", help="demo, kaggle:dogs-vs-cats, or a folder of class sub-folders. "
                                               "Required for a new search.")
@PROJECT
@click.option("--max-trials", type=click.IntRange(1), default=50, show_default=True,
              help="Trial budget, promotions included. It becomes the largest plan of complete Hyperband "
                   "brackets (each ending at --max-epochs) with at most this many trials.")
@click.option("--max-epochs", type=click.IntRange(1), default=100, show_default=True,
              help="Epochs of one full training (the last round of every bracket).")
@click.option("--max-params", type=click.IntRange(1), help="Size budget: every configuration tried has at most this "
                                                           "many parameters (one over it is drawn again, never trained).")
@click.option("--max-flops", type=click.IntRange(1), help="Size budget: at most this many FLOPs per image at "
                                                          "--image-size (2 per multiply-add of convolutions and classifier).")
@click.option("--warm-start", type=click.Path(file_okay=False, path_type=Path),
              help="A new search's first trials are the best configurations of this other search (its data and "
                   "image size may differ).")
@click.option("--warm-start-top", type=click.IntRange(1), default=5, show_default=True,
              help="With --warm-start: how many of its best configurations.")
@click.option("--factor", type=click.IntRange(2), default=3, show_default=True, help="Hyperband's reduction factor.")
@click.option("--space", "space_ref", default=None, help=SPACE_HELP + "  [default: default]")
@click.option("--image-size", type=click.IntRange(16, 2048), default=180, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--objective", type=click.Choice(["val_accuracy", "val_loss"]), default="val_accuracy", show_default=True)
@click.option("--seed", type=int, default=1337, show_default=True,
              help="Seeds the architectures drawn, the weights and the data order.")
@click.option("--max-failures", "max_consecutive_failures", type=click.IntRange(1), default=10, show_default=True,
              help="Stop after this many failed trials in a row.")
@MIXED_PRECISION
@data_options
@click.option("--archive", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="kaggle:dogs-vs-cats only: an already downloaded dogs-vs-cats.zip or train.zip (offline).")
@click.option("--overwrite", is_flag=True, help="Start over: delete what xtune wrote in --project (never other files, "
                                                "never exports).")
@click.option("--plan", "plan_only", is_flag=True, help="Print the Hyperband plan and train nothing.")
@click.option("--workers", type=click.IntRange(1), help="Run trials in this many worker processes on this machine "
                                                        "(with a chief process that hands them out).")
@click.option("--gpus", metavar="0,1,...", help="GPUs to divide among the workers (one each for as many workers "
                                                "as GPUs; --workers defaults to their number).")
@STRATEGY
@click.option("--chief", "serve_chief", is_flag=True,
              help="Serve this search to workers on other machines (tune worker) instead of running trials.")
@click.option("--host", default="0.0.0.0", show_default=True, help="With --chief: the interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), help="With --chief: the port to listen on (0: any free one) "
                                                            "[default: 8000].")
@click.option("--quiet", "verbosity", flag_value=0, help="Only the final summary.")
@click.option("--verbose", "verbosity", flag_value=2, help="Also one line per epoch.")
@click.pass_context
def search(ctx, data, project, space_ref, mixed_precision, data_dir, archive, overwrite, plan_only, workers, gpus,
           strategy, serve_chief, host, port, verbosity, warm_start, warm_start_top, **_):
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
    from xtune.search._launch import SearchRequest, parse_gpus

    project = project or default_project(data)
    settings = _settings(ctx)
    gpus = parse_gpus(gpus)
    if gpus and workers is None:
        workers = len(gpus)
    if not serve_chief and given(ctx, ["host"]):
        raise click.UsageError("--host and --port are for --chief (--workers picks a free local port)")
    if plan_only:
        _print_plan(project, data, settings, space_ref, overwrite)
        return
    if project is None:
        raise click.UsageError("give --data to start a search, or --project to resume one")
    request = SearchRequest(str(project), settings, space_ref, data_dir and str(data_dir), archive and str(archive),
                            overwrite, mixed_precision, strategy, workers, gpus, serve_chief, host, port,
                            warm_start and str(warm_start), warm_start_top)
    request.check()
    from xtune.search import start_search

    view = SearchView(1 if verbosity is None else verbosity)
    outcome = start_search(request, view, on_output=_child_output(view))
    echo_outcome(outcome, view)
    if outcome.status == "interrupted":
        ctx.exit(130)
    if outcome.status == "stopped":
        ctx.exit(1)


def _print_plan(project, data, settings: dict, space_ref, overwrite: bool) -> None:
    from xtune.search import SearchSettings, resolve_settings
    from xtune.search._run import check_plan_fits_space
    from xtune.spaces import load_space

    stored = None
    if project is not None and (project / "run.json").exists() and not overwrite:
        plan_settings, space_obj, run = resolve_settings(project, settings, space_ref=space_ref)
        assert run is not None  # run.json exists: it was read
        stored = SearchSettings.from_dict(run["settings"]).plan()
    else:
        plan_settings = SearchSettings(**{"data": data or "-", **settings})
        space_obj = load_space(space_ref)
    plan = plan_settings.plan()
    echo_plan(plan, stored)
    check_plan_fits_space(plan, space_obj)


@tune.command()
@PROJECT
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def status(project, fmt):
    """Is a search running, finished or interrupted, and how far along is it?"""
    from xtune.search import search_status

    info = search_status(project_required(project))
    if fmt == "json":
        echo_json(info)
        return
    owner = info["owner"]
    click.echo(f"{info['project']}: {info['state']}"
               + (f" (pid {owner.get('pid')} on {owner.get('host')})" if owner else ""))
    click.echo(f"trials: {info['trials_ended']} of {info['plan_trials']} planned "
               f"({info['completed']} completed, {info['failed']} failed)")
    click.echo(f"epochs: {info['epochs_done']:,} of {info['plan_epochs']:,} planned")
    if info["best"]:
        click.echo(f"best: trial {info['best']['trial_id']}, {info['objective']} {info['best']['score']:.4f}")
    for t in info["running"]:
        click.echo(f"running: trial {t['trial_id']}, epoch {t['epochs_saved']} of {t['epochs']} saved")
    if info.get("eta") is not None:
        from xtune.cli._render import duration

        click.echo(f"time left: ~{duration(info['eta'])} (from the pace of its trials so far)")
    for t in info["interrupted"]:
        for line in fit_fields([f"interrupted: trial {t['trial_id']} at epoch {t['epochs_saved']} of {t['epochs']}",
                                f"(resumes there; started at {t['initial_epoch']})"]):
            click.echo(line)
    if info["interrupted"]:
        click.echo(f"epochs saved for the resume: {info['epochs_saved']}")
    for problem in info["problems"]:  # the promise of a repair only where the next search makes it
        hint = ["(the next `tune search` repairs it)"] if problem in info["repairable"] else []
        for line in fit_fields([f"damaged: {problem}", *hint]):
            click.echo(line)
    if info["state"] == "interrupted":
        click.echo(f"resume: tune search --project {quote(info['project'])}")


@tune.command()
@click.option("--chief", metavar="HOST:PORT",
              help="The chief's address, as `tune search --chief` printed it [default: the address the chief "
                   "wrote in PROJECT/cluster/chief.json].")
@PROJECT
@click.option("--worker-id", help="This worker's name, unique in the search. A worker restarted with the same id "
                                  "resumes its unfinished trial [default: HOST-N, the first free N].")
@click.option("--gpus", metavar="0,1,...", help="The GPUs this worker uses [default: all it sees].")
@STRATEGY
@MIXED_PRECISION
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
    stopped (or let the search resume it: tune search --project DIR). It restarts
    itself after a native crash, and between trials when its memory grew.

    \b
    tune worker --chief gpu-box-1:8000 --project /shared/runs/cats --gpus 0
    """
    import os

    from xtune.search._launch import parse_gpus, start_worker
    from xtune.search._worker_request import WorkerRequest, check_worker_id, parse_address

    project = project_required(project)
    if chief is not None:
        parse_address(chief)
    if worker_id is not None:
        check_worker_id(worker_id)
    gpus = parse_gpus(gpus)
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)  # inherited by the worker process
    request = WorkerRequest(str(project), chief, worker_id, data_dir and str(data_dir), mixed_precision, strategy)
    view = SearchView(1 if verbosity is None else verbosity)
    outcome = start_worker(request, view, on_output=_child_output(view))
    name = f"worker {outcome.worker_id}"
    if outcome.status == "finished":
        click.echo(f"{name}: done, {outcome.trials} trial(s) run; no trial is left for it.")
        return
    again = f"tune worker --project {quote(project)} --worker-id {outcome.worker_id}" + (f" --chief {chief}" if chief else "")
    if outcome.status == "interrupted":
        during = f" during trial {outcome.trial_id}" if outcome.trial_id else ""
        view.echo(f"{name}: interrupted{during}. Continue with: {again}", err=True)
        ctx.exit(130)
    view.echo(f"{name}: {outcome.message}. Its trial resumes when it or the search starts again: {again}", err=True)
    ctx.exit(1)


@tune.command()
@PROJECT
@click.option("--port", type=click.IntRange(0, 65535), default=6006, show_default=True)
@click.option("--host", default="localhost", show_default=True, help="Interface to serve on (0.0.0.0 for all).")
def board(project, port, host):
    """Start TensorBoard on a search's trials (with the HParams dashboard).

    Each trial is a run (trial_NNNN-bBrR) with its hyperparameters, bracket and round
    and its result: the objective at its best epoch (the score `tune results` ranks
    by), parameters, seconds, best epoch and parent. Open the HParams tab to compare
    them. Ctrl-C stops it.
    """
    project = project_required(project)
    logs = project / "logs"
    if not logs.is_dir():
        raise click.ClickException(f"no TensorBoard logs in {project} yet (is it a tune search that has started?)")
    quiet_tensorflow()
    from xtune.search import start_tensorboard

    url, wait = start_tensorboard(logs, port=port, host=host)
    click.echo(f"TensorBoard for {project}: {url}  (Ctrl-C to stop)")
    sys.stdout.flush()
    try:
        wait()
    except KeyboardInterrupt:
        pass
