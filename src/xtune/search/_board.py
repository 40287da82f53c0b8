"""`tune board`: TensorBoard on a search's logs."""

from __future__ import annotations

import threading
from pathlib import Path

from xtune.errors import XtuneError


def start_tensorboard(logdir: Path, port: int = 6006, host: str = "localhost"):
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
