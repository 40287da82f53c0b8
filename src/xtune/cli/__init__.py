"""The `tune` command line.

Thin by design: each command parses and validates its arguments, calls one library
function and renders what it returns (``_render``). One module per command group
(``cmd_data``, ``cmd_space``, ``cmd_search``, ``cmd_results``); the group and the
shared options are in ``_app``. Nothing heavy is imported at module level, so
`tune --help` never loads TensorFlow, Keras, KerasTuner or kaggle; each command
imports what it needs in its body.
"""

from __future__ import annotations

from xtune.cli import cmd_data, cmd_results, cmd_search, cmd_space  # noqa: F401  (they register the commands)
from xtune.cli._app import tune

__all__ = ["main", "tune"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`tune`)."""
    tune.main(args=argv, prog_name="tune")


if __name__ == "__main__":  # pragma: no cover
    main()  # click exits with the command's status itself
