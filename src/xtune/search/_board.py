"""TensorBoard: what each trial logs, the HParams experiment, and `tune board`.

Layout of ``runs/NAME/logs/``::

    <experiment summary>            hparams_config: every hyperparameter's domain, the metrics
    trial_0003-b1r0/                one run per trial: its hparams and its result metrics
    trial_0003-b1r0/train/          Keras' per-epoch training scalars
    trial_0003-b1r0/validation/     Keras' per-epoch validation scalars

Every trial has a value in every column (a hyperparameter that is inactive for it,
``bn_momentum`` without batch norm, logs ``INACTIVE``), so the parallel-coordinates view
keeps every trial. Columns are ordered by a prefix of their name (see ``columns``):
TensorBoard sorts them by name and shows the first five. The result metrics are logged once per trial at its run's root:
the objective at the trial's best epoch under its own name (``val_accuracy`` or
``val_loss``, the score `tune results` ranks by), then ``params``, ``seconds``,
``best_epoch`` and ``parent`` (the trial a promotion continues; -1 for none).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from xtune.errors import XtuneError

#: The value a hyperparameter logs for a trial where it is inactive.
INACTIVE = "off"
_GROUP_ORDER = ("architecture", "augmentation", "training")
RESULT_METRICS = ("params", "seconds", "best_epoch", "parent")


def run_name(trial_id: str, bracket, round_num) -> str:
    """The TensorBoard run of a trial: ``trial_0003-b1r0``."""
    return f"trial_{trial_id}-b{bracket if bracket is not None else '-'}r{round_num if round_num is not None else '-'}"


def label(value) -> str | bool:
    """How a value shows in the dashboard: 16, not 16.000; booleans stay booleans."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def columns(space, plan) -> list[tuple[str, str, list, str]]:
    """``(name, display name, domain, description)`` of every column, in the order the dashboard shows.

    TensorBoard sorts hyperparameters by name and shows the first five by default,
    so each name starts with its place (``00_num_stages``); the display name is the
    hyperparameter's own. Architecture first, then augmentation, training, and the
    trial's bracket and round. Values are labels (``label``), so integers read as
    integers; a conditional hyperparameter's domain includes ``INACTIVE``.
    """
    specs = sorted(space.specs, key=lambda s: _GROUP_ORDER.index(s.group))
    out = []
    for k, spec in enumerate(specs):
        domain = [label(v) for v in spec.all_values()]
        if spec.condition:
            domain.append(INACTIVE)
        description = spec.group + (f"; {INACTIVE} where {spec.condition[0]} is off" if spec.condition else "")
        out.append((f"{k:02d}_{spec.name}", spec.name, domain, description))
    count = max(plan.num_brackets, 1)
    out.append((f"{len(specs):02d}_bracket", "bracket", [str(b) for b in range(count)], "Hyperband bracket"))
    out.append((f"{len(specs) + 1:02d}_round", "round", [str(r) for r in range(count)], "Hyperband round"))
    return out


def hparams(space, plan, hparams_api) -> list:
    """The HParams of a search (see ``columns``)."""
    return [hparams_api.HParam(name, hparams_api.Discrete(domain), display_name=display, description=description)
            for name, display, domain, description in columns(space, plan)]


def trial_hparam_values(space, plan, values: dict, bracket, round_num) -> dict:
    """column name -> value of every column for one trial (inactive ones: ``INACTIVE``)."""
    row: dict[str, str | bool] = {}
    for name, display, _, _ in columns(space, plan):
        if display == "bracket":
            row[name] = str(int(bracket or 0))
        elif display == "round":
            row[name] = str(int(round_num or 0))
        else:
            row[name] = label(values[display]) if display in values else INACTIVE
    return row


def write_experiment(logs_dir: Path, space, plan, objective: str) -> None:
    """The HParams experiment (domains, metrics: the objective first) at the logs' root."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hparams_api

    metrics = [hparams_api.Metric(objective, display_name=f"{objective} (best epoch)",
                                  description="the score `tune results` ranks by")]
    metrics += [hparams_api.Metric(name) for name in RESULT_METRICS]
    metrics += [hparams_api.Metric(f"epoch_{m}", group=g, display_name=f"{g}/{m} (last epoch)")
                for g in ("validation", "train") for m in ("accuracy", "loss")]
    Path(logs_dir).mkdir(parents=True, exist_ok=True)
    with tf.summary.create_file_writer(str(logs_dir)).as_default():
        hparams_api.hparams_config(hparams=hparams(space, plan, hparams_api), metrics=metrics)


def trial_callbacks(logs_dir: Path, trial, space, plan) -> list:
    """Keras' TensorBoard callback and the trial's HParams, for ``model.fit``."""
    import keras
    from tensorboard.plugins.hparams import api as hparams_api

    values = trial.hyperparameters.values
    logdir = str(Path(logs_dir) / run_name(trial.trial_id, values.get("tuner/bracket"), values.get("tuner/round")))
    row = trial_hparam_values(space, plan, values, values.get("tuner/bracket"), values.get("tuner/round"))
    return [
        keras.callbacks.TensorBoard(log_dir=logdir, write_graph=False, profile_batch=0),
        hparams_api.KerasCallback(writer=logdir, hparams=row, trial_id=run_name(
            trial.trial_id, values.get("tuner/bracket"), values.get("tuner/round"))),
    ]


def write_trial_result(logs_dir: Path, trial_id: str, bracket, round_num, objective: str, score: float,
                       params: int | None, seconds: float | None, best_epoch: int | None, parent: str | None) -> None:
    """The trial's result metrics, once, at its run's root (see the module docstring)."""
    import tensorflow as tf

    logdir = Path(logs_dir) / run_name(trial_id, bracket, round_num)
    step = int(best_epoch or 0)
    with tf.summary.create_file_writer(str(logdir)).as_default():
        tf.summary.scalar(objective, float(score), step=step)
        for name, value in (("params", params), ("seconds", seconds), ("best_epoch", best_epoch),
                            ("parent", -1 if parent is None else int(parent))):
            if value is not None:
                tf.summary.scalar(name, float(value), step=step)


def start_tensorboard(logdir: Path, port: int = 6006, host: str = "localhost") -> tuple[str, Callable[[], None]]:
    """Serve TensorBoard on ``logdir`` in this process.

    Args:
        logdir: The search's ``logs`` folder (one sub-folder per trial).
        port: TCP port (0 picks a free one).
        host: Interface to bind.

    Returns:
        ``(url, wait)``: the address, and a function that blocks until interrupted.
    """
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(logdir), "--port", str(port), "--host", host, "--reload_interval", "5"])
    try:
        url = board.launch()
    except Exception as error:  # TensorBoardPortInUseError and friends
        raise XtuneError(f"cannot start TensorBoard on {host}:{port}: {error}") from None
    stop = threading.Event()

    def wait():
        while not stop.wait(3600):
            pass

    return url, wait
