"""Devices and precision for training, whatever the Keras backend.

The only module outside ``xtune.data`` that may import TensorFlow, and only when
Keras runs on it: ``spaces/`` and ``search/`` stay backend-agnostic.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time

from xtune.errors import UsageError

# TensorFlow's C++ log lines ("I0000 00:00:... port.cc:153] oneDNN custom operations
# are on", "WARNING: All log messages before absl::InitializeLog()...", the cuInit
# failure on machines without a GPU): written before any log level applies.
NATIVE_LOG = re.compile(r"^([IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]|WARNING: All log messages before absl::"
                        r"|INFO: Created TensorFlow Lite XNNPACK delegate)")
_filtering = False


def quiet_python_warnings() -> None:
    """TensorFlow's Python-level chatter (retracing warnings and the like) is not for users.

    Errors still surface; ``XTUNE_DEBUG`` keeps everything.
    """
    if os.environ.get("XTUNE_DEBUG"):
        return
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def filter_native_stderr() -> None:
    """Drop TensorFlow's native start-up chatter from this process's stderr (fd 2).

    Python-level output, warnings and errors pass through untouched. Skipped when
    stderr is not the process's fd 2 (a test runner captured it) or with XTUNE_DEBUG.
    """
    global _filtering
    if _filtering or os.environ.get("XTUNE_DEBUG"):
        return
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):
        return
    import atexit

    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump():
        with os.fdopen(read, "rb") as src, os.fdopen(os.dup(real), "wb", buffering=0) as dst:
            for line in src:
                if not NATIVE_LOG.match(line.decode("utf-8", "replace")):
                    dst.write(line)

    thread = threading.Thread(target=pump, name="xtune-stderr", daemon=True)
    thread.start()

    def drain():
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(real, 2)  # closes the pipe's last writer: the pump sees the end
        thread.join(timeout=2)

    atexit.register(drain)
    _filtering = True

MIXED_PRECISION = ("auto", "on", "off")


def configure_devices(mixed_precision: str = "auto") -> dict:
    """Turn on GPU memory growth and pick the dtype policy.

    Args:
        mixed_precision: "auto" (mixed precision on GPUs that support it: compute
            capability 7.0+ with TensorFlow, any GPU with JAX), "on" or "off". On a
            machine without a GPU, "auto" keeps float32.

    Returns:
        ``{"backend", "gpus": [names], "policy"}``.

    Raises:
        UsageError: "on" without a GPU.
    """
    import keras

    if mixed_precision not in MIXED_PRECISION:
        raise UsageError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}; got {mixed_precision!r}")
    backend = keras.backend.backend()
    gpus, capable, half = [], False, "mixed_float16"
    if backend == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialized: growth is set at first use only
                pass
            details = tf.config.experimental.get_device_details(gpu)
            gpus.append(details.get("device_name", gpu.name))
            capable = capable or tuple(details.get("compute_capability", (0, 0))) >= (7, 0)
    elif backend == "jax":
        import jax

        gpus = [str(d) for d in jax.devices() if d.platform == "gpu"]
        capable, half = bool(gpus), "mixed_bfloat16"
    elif backend == "torch":  # pragma: no cover - not a supported training backend here
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(0)]
            capable = torch.cuda.get_device_capability(0) >= (7, 0)
    if mixed_precision == "on" and not gpus:
        raise UsageError("--mixed-precision on needs a GPU, and none was found (use auto or off)")
    use_half = mixed_precision == "on" or (mixed_precision == "auto" and capable)
    policy = half if use_half else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return {"backend": backend, "gpus": gpus, "policy": policy}


STRATEGIES = ("none", "mirrored")


def distribution_strategy(name: str | None):
    """The data parallelism inside one trial, for KerasTuner's ``distribution_strategy``.

    Args:
        name: "none" (or None): one device, as Keras picks it. "mirrored":
            ``tf.distribute.MirroredStrategy`` over the visible GPUs (each batch is split
            across them; the CPU when there is none).

    Returns:
        None, or the strategy.

    Raises:
        UsageError: An unknown name, or "mirrored" on a Keras backend other than TensorFlow.
    """
    if name in (None, "none"):
        return None
    if name not in STRATEGIES:
        raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise UsageError(f"--strategy mirrored needs the TensorFlow backend (KERAS_BACKEND is "
                         f"{keras.backend.backend()!r})")
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


def rss_mb() -> float | None:
    """This process's resident memory in MB (Linux), or None where it cannot be read."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def training_forward(model):
    """``images -> None``: one forward pass of ``model`` in training mode, compiled where the backend can.

    Batch-norm re-estimation runs the model in training mode over many batches; eager
    calls cost more than the training steps themselves (measured: 10 small batches
    1.7 s eager, 1.0 s of training). On TensorFlow this traces once per model and
    reuses the graph; other backends call the model eagerly. The graph takes any batch
    size (the model's input signature): traced for the first batch's size, a smaller
    last batch would trace it a second time, on every trial of a dataset with fewer
    batches per epoch than the re-estimation uses.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        inputs = getattr(model, "inputs", None) or []
        signature = ([tf.TensorSpec(tuple(inputs[0].shape), inputs[0].dtype)]
                     if len(inputs) == 1 and inputs[0].shape[0] is None else None)

        @tf.function(reduce_retracing=True, input_signature=signature)
        def forward(images):
            model(images, training=True)

        return forward
    return lambda images: model(images, training=True)


class SignalRelay:
    """Sets a ``threading.Event`` for a signal handler, without taking a lock in the handler.

    A handler runs between two bytecodes of the main thread, possibly inside
    ``Event.set`` itself (the supervisor's SIGTERM and the parent-death SIGTERM can
    arrive together): calling ``Event.set`` there again waits forever on the lock the
    interrupted call holds (a killed search's child was seen hung so, holding its
    project's lock). The handler only sets a flag; this daemon thread sets the event.
    """

    def __init__(self, event: threading.Event, interval: float = 0.05):
        self.event = event
        self.pending = False
        self.interval = interval
        self._closed = False
        threading.Thread(target=self._relay, name="xtune-signals", daemon=True).start()

    def _relay(self) -> None:
        while not self.event.is_set() and not self._closed:
            if self.pending:
                self.event.set()
                return
            time.sleep(self.interval)

    def close(self) -> None:
        """Stop relaying (the handler is uninstalled): the thread ends within ``interval``."""
        if self.pending:
            self.event.set()
        self._closed = True

    def __call__(self, signum=None, frame=None) -> None:  # the handler: a plain assignment, no lock
        self.pending = True
