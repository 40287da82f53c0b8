"""What every benchmark shares: the machine it ran on, results files, RSS, timing."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def machine() -> dict:
    """The machine and library versions, recorded with every result."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem_gb = round(mem_kb / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    versions = {}
    for dist in ("tensorflow", "keras", "keras-tuner", "jax"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "gpus": [], "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions, "tensorflow": versions.get("tensorflow"),
            "load_before": [round(v, 2) for v in os.getloadavg()],
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}


def write_result(name: str, payload: dict) -> Path:
    """Write ``results/<name>.json`` with the machine attached; return its path."""
    from xtune import _atomic

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = dict(payload)
    info = payload.pop("machine", None) or machine()
    info["load_after"] = [round(v, 2) for v in os.getloadavg()]  # other processes make figures noisy
    _atomic.write_json(path, {"benchmark": name, "machine": info, **payload})
    return path


def rss_mb() -> float:
    """Resident memory of this process (MB), as the search records it; NaN if unknown."""
    from xtune._runtime import rss_mb as measured

    rss = measured()
    return float("nan") if rss is None else rss


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def dump(payload: dict) -> None:
    print(json.dumps(payload, indent=2))
