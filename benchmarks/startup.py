"""Start-up: `tune --help` against `python -c "import tensorflow"`, alternated, 5 runs each.

    python -m benchmarks.startup [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from benchmarks._common import dump, median, write_result


def _time(cmd) -> float:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    tune = [sys.executable, "-m", "xtune", "--help"]
    tf = [sys.executable, "-c", "import tensorflow"]
    _time(tune), _time(tf)  # warm the file cache for both
    times = {"tune --help": [], "import tensorflow": []}
    for _ in range(args.runs):
        times["tune --help"].append(_time(tune))
        times["import tensorflow"].append(_time(tf))
    result = {
        "runs": args.runs,
        "seconds": times,
        "median_s": {k: round(median(v), 3) for k, v in times.items()},
        "ratio": round(median(times["tune --help"]) / median(times["import tensorflow"]), 3),
    }
    write_result("startup", result)
    dump(result)
    return result


if __name__ == "__main__":
    main()
