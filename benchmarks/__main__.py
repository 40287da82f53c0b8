"""Run the benchmarks and refresh the README's table.

    python -m benchmarks                 # all of them (what `make bench` runs)
    python -m benchmarks startup quality # some of them
    python -m benchmarks --report        # only rebuild the README table from results/

Each benchmark writes ``benchmarks/results/<name>.json``; the table is rebuilt from
those files, so it always shows the latest figures and the machine they came from.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# In the order `make bench` runs them (quick first).
BENCHMARKS = ["startup", "pipeline", "search_costs", "quality", "distributed"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run xtune's benchmarks.")
    parser.add_argument("names", nargs="*", help=f"which to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--report", action="store_true", help="only rebuild the README table")
    args = parser.parse_args(argv)
    if not args.report:
        for name in args.names or BENCHMARKS:
            if name not in BENCHMARKS:
                parser.error(f"unknown benchmark {name!r} (choose from {', '.join(BENCHMARKS)})")
            print(f"== {name}", flush=True)
            importlib.import_module(f"benchmarks.{name}").main([])
    from benchmarks.report import update_readme

    update_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
