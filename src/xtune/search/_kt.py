"""The KerasTuner seam: every use of KerasTuner's internals, and only here.

xtune builds on KerasTuner's public classes (``keras_tuner.Oracle``, ``Tuner``,
``HyperParameters``, ``errors``, ``engine.trial``). Where it needs more, this module
names it, with the versions it was tested against (``TESTED``); a test fails loudly,
naming this module, when another version is installed. Patches apply in a scope
(``patched()``), not at import. See docs/ARCHITECTURE.md ("The KerasTuner seam").

What xtune takes from KerasTuner's internals, and why:

* ``utils.save_json`` (every oracle, trial and tuner file goes through it) truncates
  and writes in place; inside ``patched()`` it writes atomically instead.
* ``config.DEBUG``: True prints every failed trial's traceback to stdout; off
  inside ``patched()`` unless ``XTUNE_DEBUG`` is set.
* ``engine.conditions.print``: 1.4.8 prints a condition's first value whenever it
  goes over gRPC (``Parent.to_proto``); silenced inside ``patched()``.
* The base oracle's retry bookkeeping (``_retry_queue``, ``_run_times``): read and
  repaired on reload (``retry_queue``, ``run_times``).
* The oracle's lock (``engine.oracle.LOCKS``), so a watcher reads a consistent
  state while a gRPC thread changes it (``oracle_lock``).
* The gRPC service (``protos``, ``distribute.oracle_chief.OracleServicer``): the
  chief serves it (``add_oracle_service``); workers call it through ``OracleCalls``.
* ``Oracle._set_project_dir`` (``attach``), to repair an oracle outside a tuner.
* ``OVERRIDDEN``: private hooks of KerasTuner's classes that xtune's subclasses
  override.
"""

from __future__ import annotations

import contextlib
import os
from importlib import metadata

import keras_tuner
from keras_tuner.engine.trial import Trial, TrialStatus
from keras_tuner.errors import FailedTrialError, FatalError

__all__ = [
    "TESTED",
    "FailedTrialError",
    "FatalError",
    "OracleCalls",
    "Trial",
    "TrialStatus",
    "add_oracle_service",
    "attach",
    "check_version",
    "oracle_lock",
    "patched",
    "retry_queue",
    "run_times",
    "untested_version",
]

#: keras-tuner versions this seam was tested with (setup.cfg pins the same).
TESTED = ("1.4.8",)

#: Private hooks overridden by xtune's subclasses (checked by a test to still exist).
OVERRIDDEN = {"BaseTuner._populate_initial_space": "SearchTuner: registers the space without building models"}


def installed_version() -> str:
    try:
        return metadata.version("keras-tuner")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return getattr(keras_tuner, "__version__", "unknown")


def untested_version() -> str | None:
    """A one-line warning when the installed keras-tuner is not one ``TESTED``, else None."""
    version = installed_version()
    if version in TESTED:
        return None
    return (f"keras-tuner {version} is installed, but xtune's KerasTuner seam (xtune/search/_kt.py) was tested "
            f"with {', '.join(TESTED)} only; a search may misbehave")


def check_version() -> None:
    """Raise ``RuntimeError`` naming the seam when the installed keras-tuner is untested."""
    problem = untested_version()
    if problem:
        raise RuntimeError(problem)


# -- patches, in a scope ---------------------------------------------------------------------


def _atomic_save_json(path, obj) -> str:
    from xtune import _atomic

    return _atomic.write_json(path, obj, indent=None)


@contextlib.contextmanager
def patched():
    """KerasTuner as a search needs it, for the block: atomic state files, no debug prints."""
    from keras_tuner.src import config as kt_config
    from keras_tuner.src import utils
    from keras_tuner.src.engine import conditions

    saved = utils.save_json, kt_config.DEBUG, conditions.__dict__.get("print")
    utils.save_json = _atomic_save_json
    kt_config.DEBUG = bool(os.environ.get("XTUNE_DEBUG"))
    conditions.print = lambda *args, **kwargs: None
    try:
        yield
    finally:
        utils.save_json, kt_config.DEBUG = saved[0], saved[1]
        if saved[2] is None:
            conditions.__dict__.pop("print", None)
        else:  # pragma: no cover - nobody else patches it
            conditions.print = saved[2]


# -- the base oracle's bookkeeping --------------------------------------------------------------


def retry_queue(oracle) -> list:
    """Trial ids waiting to run again (a reload puts every running trial here)."""
    return oracle._retry_queue


def run_times(oracle) -> dict:
    """trial id -> how many times the trial ended (a retried one more than once)."""
    return oracle._run_times


def attach(oracle, project) -> None:
    """Point ``oracle`` at a search directory (what a tuner does when it is made)."""
    from pathlib import Path

    project = Path(project)
    oracle._set_project_dir(str(project.parent), project.name)


def oracle_lock(oracle):
    """The lock that ``keras_tuner.synchronized`` methods of ``oracle`` hold."""
    from keras_tuner.src.engine import oracle as oracle_module

    return oracle_module.LOCKS[oracle]


# -- the gRPC service -----------------------------------------------------------------------------


def add_oracle_service(server, oracle):
    """Add KerasTuner's oracle service to a ``grpc.server``; return the servicer.

    The servicer's ``stop_triggered`` turns True once it answered STOPPED (the plan is
    done); ``all_workers_told(oracle)`` says when the chief may stop serving.
    """
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    return servicer


class OracleCalls:
    """A worker's calls to the chief's oracle service, on a channel the caller made.

    The same requests as KerasTuner's ``OracleClient`` (which reads environment
    variables and makes its own insecure channel); here the channel carries xtune's
    identity and token (see ``xtune.search._chief``).

    Args:
        channel: A ``grpc`` channel to the chief.
        timeout: Seconds a call may wait for an unreachable chief.
    """

    def __init__(self, channel, timeout: float):
        from keras_tuner.src import protos

        self._service = protos.get_service()
        self._stub = protos.get_service_grpc().OracleStub(channel)
        self.timeout = timeout  # the caller may shorten it (a stopping worker)

    def _call(self, method: str, request):
        return getattr(self._stub, method)(request, wait_for_ready=True, timeout=self.timeout)

    def get_space(self):
        response = self._call("GetSpace", self._service.GetSpaceRequest())
        return keras_tuner.HyperParameters.from_proto(response.hyperparameters)

    def update_space(self, hyperparameters) -> None:
        self._call("UpdateSpace", self._service.UpdateSpaceRequest(hyperparameters=hyperparameters.to_proto()))

    def create_trial(self, tuner_id: str):
        response = self._call("CreateTrial", self._service.CreateTrialRequest(tuner_id=tuner_id))
        return Trial.from_proto(response.trial)

    def update_trial(self, trial_id: str, metrics: dict, step: int = 0):
        response = self._call("UpdateTrial", self._service.UpdateTrialRequest(trial_id=trial_id, metrics=metrics,
                                                                              step=step))
        return Trial.from_proto(response.trial)

    def end_trial(self, trial) -> None:
        self._call("EndTrial", self._service.EndTrialRequest(trial=trial.to_proto()))

    def get_trial(self, trial_id: str):
        response = self._call("GetTrial", self._service.GetTrialRequest(trial_id=trial_id))
        return Trial.from_proto(response.trial)
