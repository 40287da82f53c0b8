"""The README's benchmark table, rebuilt from benchmarks/results/*.json."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _row(what, figure, baseline, ratio, goal, source):
    return f"| {what} | {figure} | {baseline} | {ratio} | {goal} | `{source}` |"


def rows() -> list[str]:
    out = []
    if (r := _load("startup")):
        m = r["median_s"]
        out.append(_row("start-up: `tune --help` vs `import tensorflow` (median of 5)", f"{m['tune --help']:.2f} s",
                        f"{m['import tensorflow']:.2f} s", f"{r['ratio']:.3f}", "far below 1",
                        "python -m benchmarks startup"))
    if (r := _load("pipeline")):
        for s in r.get("results", []):
            out.append(_row(f"data pipeline at {s['image_size']} px: images/s delivered, first (decoding) epoch / "
                            "cached epochs, vs consumed by the seed model's training step",
                            f"{s['delivered_first_epoch_memory']:,.0f}/s / {s['delivered_cached_memory']:,.0f}/s",
                            f"{s['consumed_train_step']:,.1f}/s",
                            f"{s['ratio_first_epoch']:,.1f}x / {s['ratio_cached']:,.0f}x", "> 1",
                            "python -m benchmarks pipeline"))
    if (r := _load("search_costs")):
        if (t := r.get("training_loop")):
            out.append(_row("training inside `tune search` vs bare `model.fit` (images/s, 32 px)",
                            f"{t['search_images_per_s']:,.0f}/s", f"{t['bare_fit_images_per_s']:,.0f}/s",
                            f"{t['ratio']:.3f}", t["goal"], "python -m benchmarks search_costs"))
        if (o := r.get("search_overhead")):
            top = max(o["overhead_s"], key=o["overhead_s"].get)
            out.append(_row(f"search time outside training epochs ({o['trials']} trials, 32 px)",
                            f"{o['overhead_share']:.1%} of {o['wall_s']:.0f} s", "-", f"largest part: {top}",
                            o["goal"], "python -m benchmarks search_costs"))
            out.append(_row(f"RSS after each of {o['trials']} trials: last vs fifth", f"{o['rss_mb_after_each_trial'][-1]:.0f} MB",
                            f"{o['rss_mb_after_each_trial'][min(4, len(o['rss_mb_after_each_trial']) - 1)]:.0f} MB",
                            f"{o['rss_last_over_fifth']:.3f}", "<= 1.2", "python -m benchmarks search_costs"))
        if (b := r.get("epoch_backups")):
            out.append(_row("per-epoch backups (mid-trial resume): search wall time with vs without",
                            f"{sum(b['with_backups_s']) / len(b['with_backups_s']):.0f} s",
                            f"{sum(b['without_backups_s']) / len(b['without_backups_s']):.0f} s",
                            f"{b['ratio']:.3f}", "close to 1", "python -m benchmarks search_costs"))
    if (r := _load("quality")):
        for row in r.get("table", []):
            out.append(_row(row["what"], row["figure"], row["baseline"], row["ratio"], row.get("goal", "-"),
                            "python -m benchmarks quality"))
    if (r := _load("distributed")):
        for row in r.get("table", []):
            out.append(_row(row["what"], row["figure"], row["baseline"], row["ratio"], row.get("goal", "-"),
                            "python -m benchmarks distributed"))
    return out


def table() -> str:
    machines = set()
    for path in sorted(RESULTS.glob("*.json")):
        m = json.loads(path.read_text()).get("machine") or {}
        if m:
            machines.add(f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB, no GPU"
                         f" (TensorFlow {m.get('versions', {}).get('tensorflow')}), {m.get('date', '')[:10]}")
    lines = ["| what | figure | baseline (same run) | ratio | goal | command |", "|---|---|---|---|---|---|", *rows()]
    lines.append("")
    lines.append("Machine: " + "; ".join(sorted(machines)))
    return "\n".join(lines)


def update_readme(readme: Path = README) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        return
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table()}\n{END}{tail}")
