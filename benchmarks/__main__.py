"""Run the benchmarks and refresh the README's table.

    python -m benchmarks                 # all of them (what `make bench` runs)
    python -m benchmarks startup quality # some of them
    python -m benchmarks --report        # only rebuild the README table from results/

Each benchmark writes ``benchmarks/results/<name>.json``; the table is rebuilt from
those files, so it always shows the latest figures and the machine they came from.

Each runs in its own process. TensorFlow 2.21's oneDNN kernels have corrupted the heap
here (the known case, a strided 1x1 conv's filter gradient on odd batches, is avoided by
the builder; ``tune search`` survives any other through its supervisor, an in-process
benchmark cannot), so a benchmark killed by a signal is run again, at most twice, and
the retry is printed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

# In the order `make bench` runs them (quick first).
BENCHMARKS = ["startup", "prepare_memory", "pipeline", "search_costs", "eta", "budget", "quality", "distributed"]


def _run(name: str, attempts: int = 3) -> None:
    for attempt in range(1, attempts + 1):
        print(f"== {name}" + (f" (attempt {attempt}, the last one died on a signal)" if attempt > 1 else ""),
              flush=True)
        rc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"]).returncode
        if rc == 0:
            return
        if rc > 0 and rc != 134:  # an ordinary failure: a bug to see, not to retry
            sys.exit(f"benchmark {name} failed (exit {rc})")
    sys.exit(f"benchmark {name} died on a signal {attempts} times")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run xtune's benchmarks.")
    parser.add_argument("names", nargs="*", help=f"which to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--report", action="store_true", help="only rebuild the README table")
    args = parser.parse_args(argv)
    if not args.report:
        for name in args.names or BENCHMARKS:
            if name not in BENCHMARKS:
                parser.error(f"unknown benchmark {name!r} (choose from {', '.join(BENCHMARKS)})")
            _run(name)
    from benchmarks.report import update_readme

    update_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
